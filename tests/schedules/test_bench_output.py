"""``ea-ops bench`` output: the JSON document, the table, the files under --out, peers that fail or are skipped."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ea_ops import cli
from schedules import cli_bench as bench

from .bench_fakes import FAST

SMOKE = ["--workload", "smoke", "--peers", "eager,sdpa,copy", *FAST]


def run(capsys, *args):
    rc = bench.main([*args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_json_document_and_its_arithmetic(capsys):
    rc, out, err = run(capsys, *SMOKE, "--json", "--backend", "torch")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["schema"] == "ea-ops-bench/1" and doc["backend"] == "torch"
    assert doc["timer"].startswith("torch.utils.benchmark.Timer")
    assert doc["machine"]["device"] == "cpu" and doc["machine"]["threads"] == 1
    assert isinstance(doc["warnings"], list) and "load_average_before" in doc["machine"]
    assert [w["workload"]["T"] for w in doc["workloads"]] == [64, 128]
    for w in doc["workloads"]:
        assert w["gate"]["ok"]
        rows = {r["peer"]: r for r in w["results"]}
        assert list(rows) == ["kernel", "eager", "sdpa", "copy"]
        n = w["workload"]["B"] * w["workload"]["T"] * w["workload"]["H"] * w["workload"]["D"]
        assert rows["kernel"]["bytes"] == rows["copy"]["bytes"] == 4 * n * 4  # q, k, v, o in float32
        k, c = rows["kernel"], rows["copy"]
        for r in rows.values():
            assert r["status"] == "ok" and r["median_s"] > 0 and r["samples"] >= 1
            assert math.isclose(r["gbps"], r["bytes"] / r["median_s"] / 1e9, rel_tol=1e-9)
            assert math.isclose(r["speedup"], r["median_s"] / k["median_s"], rel_tol=1e-9)
            assert math.isclose(r["roofline"], r["gbps"] / c["gbps"], rel_tol=1e-9)
        assert rows["eager"]["note"] == "the kernel itself"  # torch backend: the kernel is eager PyTorch


def test_table_names_every_peer_and_the_threads(capsys):
    rc, out, err = run(capsys, "--workload", "smoke", "--peers", "eager,sdpa,copy", *FAST)
    assert rc == 0, err
    assert "CPUs), 1 threads (torch.set_num_threads)" in out and "compare the ratios" in out
    for label in ("torch backend", "eager PyTorch (torch backend)", "SDPA exact softmax (causal)",
                  "copy of the same bytes", "B1 T64 H2 D16", "B1 T128 H2 D16"):
        assert label in out, label
    assert "speedup" in out and "roofline" in out


def test_out_writes_json_table_and_png(capsys, tmp_path):
    rc, out, err = run(capsys, *SMOKE, "--out", str(tmp_path / "o"))
    assert rc == 0, err
    png = (tmp_path / "o" / "bench-smoke.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    doc = json.loads((tmp_path / "o" / "bench-smoke.json").read_text())
    assert len(doc["workloads"]) == 2
    assert (tmp_path / "o" / "bench-smoke.txt").read_text().strip() == out.strip()
    assert not [p for p in (tmp_path / "o").iterdir() if p.name.startswith(".")]  # no temporaries left


def test_compile_failure_is_reported_not_fatal(monkeypatch, capsys):
    def broken(*a, **k):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch, "compile", broken)
    rc, out, err = run(capsys, "--workload", "smoke", "--peers", "compiled,copy", "--json", *FAST)
    assert rc == 0, err
    for w in json.loads(out)["workloads"]:
        comp = next(r for r in w["results"] if r["peer"] == "compiled")
        assert comp["status"] == "failed" and comp["median_s"] is None
        assert "torch.compile failed: RuntimeError: no C++ compiler found" in comp["note"]
        assert all(r["status"] == "ok" for r in w["results"] if r["peer"] != "compiled")


def test_a_call_predicted_too_slow_is_skipped(capsys):
    rc, out, err = run(capsys, *SMOKE, "--json", "--max-call-s", "1e-9")
    assert rc == 0, err
    first, second = json.loads(out)["workloads"]
    assert all(r["status"] == "ok" for r in first["results"])  # nothing to predict from yet
    for r in second["results"]:
        assert r["status"] == "skipped" and r["median_s"] is None and "predicted" in r["note"], r


def test_step_mode_times_sdpa_against_a_kv_cache(capsys):
    rc, out, err = run(capsys, "--shape", "1,512,2,16", "--mode", "step", "--peers", "sdpa,copy", "--json",
                       *FAST)
    assert rc == 0, err
    (w,) = json.loads(out)["workloads"]
    rows = {r["peer"]: r for r in w["results"]}
    bhd, t1 = 2 * 16, 7
    assert rows["kernel"]["bytes"] == 4 * bhd * 4 + 2 * (2 * t1 + 1) * bhd * 4
    assert rows["sdpa"]["bytes"] == rows["copy_kv"]["bytes"] == (2 * bhd + 2 * bhd * 512) * 4
    assert math.isclose(rows["sdpa"]["roofline"], rows["sdpa"]["gbps"] / rows["copy_kv"]["gbps"])


@pytest.mark.parametrize("args, message", [
    (["--shape", "1,2,3"], "--shape must be four positive ints"),
    (["--shape", "1,0,2,4"], "--shape must be four positive ints"),
    (["--workload", "smoke", "--order", "3"], "--order must be a non-negative even int"),
    (["--workload", "smoke", "--peers", "eager,flash"], "--peers takes names from"),
    (["--workload", "decode", "--mode", "fwd"], "--workload decode is --mode step"),
    (["--workload", "smoke", "--threads", "0"], "--threads must be >= 1"),
    (["--workload", "smoke", "--budget-s", "0"], "--budget-s must be > 0"),
    (["--workload", "smoke", "--settle-s", "-1"], "--settle-s must be >= 0"),
])
def test_bad_arguments_exit_2_naming_the_option(capsys, args, message):
    rc, out, err = run(capsys, *args)
    assert rc == 2 and message in err and out == ""


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_gpu_preset_needs_cuda(capsys):
    rc, out, err = run(capsys, "--workload", "gpu")
    assert rc == 2 and "preset 'gpu' needs a CUDA device" in err


def test_busy_machine_warning():
    from schedules.bench.report import busy_warning

    assert busy_warning(0.3, 2, 2) is None and busy_warning(None, 2, 2) is None
    assert busy_warning(1.9, 2, 8) is None
    w = busy_warning(1.2, 2, 2)
    assert "load average 1.2 on 2 CPUs" in w and "unreliable" in w


def test_through_the_ea_ops_command(capsys):
    rc = cli.main(["bench", "--shape", "1,32,1,8", "--peers", "copy", *FAST])
    out = capsys.readouterr().out
    assert rc == 0 and "B1 T32 H1 D8" in out and "copy of the same bytes" in out
