"""The peers and presets that replaced scripts/gpu_bench.py and scripts/tvm_speed.py: ``default`` (the backend
untuned), ``cumsum``, ``flash_attn``; the ``gpu-goal`` and ``tvm-speed`` presets, their goals and dry run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from schedules import cli_bench as bench
from schedules.bench.goals import Goal, judge

from .bench_fakes import FAST

TINY = ["--shape", "1,64,2,8"]
ROOT = Path(__file__).resolve().parents[2]


def run_json(capsys, *args) -> tuple[int, dict, str]:
    rc = bench.main([*args, "--json", *FAST])
    out = capsys.readouterr()
    return rc, json.loads(out.out) if out.out else {}, out.err


def rows(doc: dict, i: int = 0) -> dict:
    return {r["peer"]: r for r in doc["workloads"][i]["results"]}


def test_torch_backend_default_is_the_kernel_and_cumsum_is_gated_and_timed(capsys):
    rc, doc, err = run_json(capsys, "--backend", "torch", *TINY, "--mode", "fwdbwd",
                            "--peers", "default,cumsum,flash_attn")
    assert rc == 0, err
    r = rows(doc)
    assert list(r) == ["kernel", "default", "cumsum", "flash_attn"]
    assert r["default"]["median_s"] == r["kernel"]["median_s"]
    assert r["default"]["note"] == "the kernel itself; the torch backend has no tuned configuration"
    assert r["cumsum"]["status"] == "ok" and r["cumsum"]["median_s"] > 0  # passed the gate, then timed
    fa = r["flash_attn"]
    assert fa["status"] == "unavailable" and fa["median_s"] is None
    assert fa["note"] in ("flash_attn is not installed", "flash_attn runs on CUDA only")


def test_peers_that_cannot_take_a_step_say_why(capsys):
    rc, doc, err = run_json(capsys, "--backend", "torch", *TINY, "--mode", "step", "--peers", "cumsum,copy")
    assert rc == 0, err
    cumsum = rows(doc)["cumsum"]
    assert cumsum["status"] == "unavailable" and "no step" in cumsum["note"]
    assert "[unavailable] the cumsum form" in bench.report.table(doc)


def test_tvm_default_peer_hides_the_records_the_kernel_runs_with(record_roots, capsys, monkeypatch):
    pytest.importorskip("tvm")
    from ea_ops import records
    from ea_ops.backends.tvm import build
    from ea_ops.backends.tvm.schedule import default_cpu_config
    from ea_ops.backends.tvm.target import cpu_fingerprint
    from schedules.bench import peers

    monkeypatch.setattr(build, "_modules", {})  # both kernels built here, so the disk cache stores them
    monkeypatch.setattr(build, "_fast", {})

    tuned_cfg = {"loop": "d_t", "d_tile": 8, "h_tile": 1, "t_unroll": 2, "parallel": True}
    assert tuned_cfg != default_cpu_config("forward", 2, 8)
    records.add_records(record_roots / "user" / "tvm" / cpu_fingerprint(), [{
        "schema_version": 1, "backend": "tvm", "fingerprint": cpu_fingerprint(),
        "target": {"kind": "llvm", "mcpu": "test"},
        "kernel": {"name": "forward", "causal": True, "order": 6, "dtype": "float32"},
        "workload": {"B": 1, "T": 64, "H": 2, "D": 8, "T_bucket": 64}, "config": tuned_cfg,
        "latency_us": {"chosen": 1.0, "default": 2.0}, "versions": {"tvm": "test"}}])
    rc, doc, err = run_json(capsys, "--backend", "tvm", *TINY, "--peers", "default")
    assert rc == 0, err
    default = rows(doc)["default"]
    assert default["status"] == "ok" and default["median_s"] > 0
    assert f"records hidden: forward {peers._fmt_config(default_cpu_config('forward', 2, 8))}" in default["note"]
    assert "(kernel: loop=d_t,d_tile=8,h_tile=1,t_unroll=2" in default["note"]
    with peers._records_hidden(peers._empty_folder()):
        assert build.kernel_for("forward", True, 6, "float32", 2, 8, 64).source == "default"
    assert build.kernel_for("forward", True, 6, "float32", 2, 8, 64).config == tuned_cfg  # records back
    assert os.listdir(peers._empty_folder()) == []  # no kernel stored in it: its removal at exit needs it empty


def test_gpu_goal_dry_run_needs_no_gpu(capsys, tmp_path):
    rc, doc, err = run_json(capsys, "--workload", "gpu-goal", "--dry-run", "--out", str(tmp_path))
    assert rc == 0, err
    assert doc["dry_run"] and doc["preset"] == "gpu-goal" and doc["backend"] == "triton" and doc["device"] == "cuda"
    assert doc["timer"] in (bench.timing.CUDA_TIMER, bench.timing.CUDA_EVENTS_TIMER)
    assert [(w["label"], w["workload"]["mode"]) for w in doc["workloads"]][:2] == [
        ("B8 T8192 H16 D128", "fwd"), ("B8 T2048 H16 D128", "fwdbwd")]
    assert doc["workloads"][0]["bytes"] == 2**30  # q, k, v read and o written in bf16: the copy peer's bytes
    assert all(w["results"] == [] and w["peers"][0] == "kernel" for w in doc["workloads"])
    assert [g["met"] for g in doc["goals"]] == [None] * 3
    assert json.loads((tmp_path / "bench-gpu-goal.json").read_text()) == doc
    assert "nothing was run" in (tmp_path / "bench-gpu-goal.txt").read_text()


@pytest.mark.parametrize("args, message", [
    (["--workload", "tvm-speed", "--mode", "fwd"], "--workload tvm-speed sets the mode of each workload"),
    (["--workload", "gpu-goal", "--dry-run", "--peers", "cumsum,nope"], "--peers takes names from"),
])
def test_preset_argument_errors(capsys, args, message):
    rc = bench.main(args)
    assert rc == 2 and message in capsys.readouterr().err


def _doc(values: list[tuple[str, int, float | None]]) -> list[dict]:
    return [{"label": f"T{t}", "workload": {"mode": mode, "T": t},
             "results": [] if v is None else [{"peer": "sdpa", "speedup": v, "median_s": v}]}
            for mode, t, v in values]


def test_goals_are_judged_on_the_worst_workload_and_only_when_measured():
    faster = Goal("faster than SDPA from 2048", "fwdbwd", "sdpa", "speedup", ">", 1.0, T_from=2048)
    got = judge(faster, _doc([("fwdbwd", 1024, 0.5), ("fwdbwd", 2048, 1.4), ("fwdbwd", 4096, 1.1), ("fwd", 8192, 0.1)]))
    assert got["met"] is True and got["measured"] == 1.1 and [v["label"] for v in got["values"]] == ["T2048", "T4096"]
    assert judge(faster, _doc([("fwdbwd", 2048, 1.4), ("fwdbwd", 4096, 0.9)]))["met"] is False
    cut = judge(faster, _doc([("fwdbwd", 2048, 1.4), ("fwdbwd", 4096, None)]))  # a run cut short
    assert cut["met"] is None and cut["note"] == "not measured"
    flat = Goal("flat", "step", "sdpa", "spread", "<", 1.25)
    assert judge(flat, _doc([("step", 1024, 2.0), ("step", 8192, 2.4)]))["measured"] == pytest.approx(1.2)
    assert judge(flat, _doc([("step", 1024, 2.0), ("step", 8192, 2.6)]))["met"] is False
    with pytest.raises(ValueError, match="metric must be one of"):
        Goal("x", "fwd", "kernel", "fast", ">", 1.0)


def test_token_ratio_compares_time_per_token_at_the_two_lengths_only():
    flat = Goal("flat per token", "fwd", "sdpa", "token_ratio", "<=", 1.3, 4096, T_to=65536)
    # 16x the tokens in 20x the time: 1.25x per token; the 16k row (slow) is not part of the ratio
    got = judge(flat, _doc([("fwd", 1024, 0.1), ("fwd", 4096, 1.0), ("fwd", 16384, 9.0), ("fwd", 65536, 20.0)]))
    assert got["measured"] == pytest.approx(1.25) and got["met"] is True
    assert judge(flat, _doc([("fwd", 4096, 1.0), ("fwd", 65536, 24.0)]))["met"] is False
    assert judge(flat, _doc([("fwd", 4096, 1.0)]))["met"] is None  # 64k not measured
    with pytest.raises(ValueError, match="T_to"):
        Goal("x", "fwd", "kernel", "token_ratio", "<=", 1.3, 4096)


def test_out_keeps_the_finished_workloads_of_a_run_cut_short(monkeypatch, capsys, tmp_path):
    """With --out the document is rewritten after each workload: a time limit keeps what finished."""
    from schedules.bench import runner

    seen: list[dict] = []
    real = runner.Runner._measure

    def measure(self, w, rows_):
        path = tmp_path / "bench-smoke.json"
        if path.exists():
            seen.append(json.loads(path.read_text()))
        return real(self, w, rows_)

    monkeypatch.setattr(runner.Runner, "_measure", measure)
    rc = bench.main(["--workload", "smoke", "--peers", "copy", "--out", str(tmp_path), *FAST])
    assert rc == 0, capsys.readouterr().err
    (partial,) = seen  # before the second workload was timed
    assert partial["complete"] is False and len(partial["workloads"]) == 1
    final = json.loads((tmp_path / "bench-smoke.json").read_text())
    assert final["complete"] is True and len(final["workloads"]) == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_gpu_goal_without_a_gpu_points_at_the_dry_run(capsys):
    rc = bench.main(["--workload", "gpu-goal"])
    err = capsys.readouterr().err
    assert rc == 2 and "preset 'gpu-goal' needs a CUDA device" in err and "--dry-run" in err


def test_triton_default_peer_forces_the_default_config():
    pytest.importorskip("triton")
    from ea_ops.backends.triton import configs
    from schedules.bench import peers
    from schedules.bench.workloads import Workload

    w = Workload(8, 8192, 16, 128, 6, "bfloat16", "fwdbwd", "cpu")
    shape = dict(causal=True, HD=16 * 128, n_seqs=8, rows=8 * 8192)
    default = {k: configs.default(k, **shape) for k in ("forward", "backward")}
    tuned = {"variant": "chunked", "num_warps": 8, "chunk": 32}  # as if a record chose it
    assert tuned != default["forward"]
    with configs.forced(tuned, "forward"):
        untuned, note = peers._triton_untuned(w)
        assert note.startswith("forced: forward variant=") and "(kernel: variant=chunked,num_warps=8,chunk=32)" in note
        with untuned():
            for k in ("forward", "backward"):
                assert configs.choose(k, order=6, dtype="bfloat16", fp=None, **shape) == default[k]
        assert configs.choose("forward", order=6, dtype="bfloat16", fp=None, **shape) == tuned


def test_triton_default_peer_under_the_interpreter(tmp_path):
    """End to end on CPU tensors (TRITON_INTERPRET=1 must be set before triton is imported: a child process)."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "EA_OPS_CACHE_DIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "ea_ops.cli", "bench", "--backend", "triton", "--shape", "1,40,2,16",
                           "--peers", "default,flash_attn,copy", "--json", *FAST], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (w,) = json.loads(proc.stdout)["workloads"]
    assert w["gate"]["ok"] and w["gate"]["errors"]["o"] < 1e-4
    r = {r["peer"]: r for r in w["results"]}
    assert r["default"]["status"] == "ok" and r["default"]["median_s"] > 0
    assert r["default"]["note"].startswith("forced: forward variant=")
    assert r["flash_attn"]["status"] == "unavailable"


# the decode preset's rows on a fake clock (microseconds per call): in place 2x its kernel alone, SDPA 5x the
# in-place step and 1.33x the step through ea_recurrent_step
DECODE_US = {"kernel": 30.0, "inplace": 8.0, "kernel_only": 4.0, "eager": 300.0, "sdpa": 40.0, "copy": 1.0,
             "copy_kv": 2.0}


def test_decode_dry_run_plans_batched_steps_and_states_its_goals(capsys):
    rc, doc, err = run_json(capsys, "--workload", "decode", "--device", "cpu", "--dry-run")
    assert rc == 0, err
    assert [(w["label"], w["workload"]["mode"]) for w in doc["workloads"]] == [
        (f"B{b} ctx1024 H8 D64", "step") for b in (1, 8, 64)]
    assert all(w["peers"] == ["kernel", "inplace", "kernel_only", "eager", "sdpa", "copy"] for w in doc["workloads"])
    assert [(g["peer"], g["of"], g["op"], g["bound"], g["met"]) for g in doc["goals"]] == [
        ("inplace", "kernel_only", "<=", 3.0, None), ("sdpa", "inplace", ">=", 4.0, None),
        ("sdpa", "kernel", ">=", 4.0, None)]


@pytest.mark.parametrize("backend", ["tvm", "torch"])
def test_decode_preset_gates_every_step_and_judges_its_goals_on_a_fake_clock(backend, monkeypatch, capsys, tmp_path):
    if backend == "tvm":
        pytest.importorskip("tvm")
    from schedules.bench import runner, timing, workloads

    monkeypatch.setattr(workloads, "DECODE_CONTEXT", 64)  # small shapes: the timings are the fake clock's
    monkeypatch.setattr(workloads, "DECODE_BATCHES", (1, 3))
    real = runner.Runner._measure

    def measure(self, w, rows_):
        names = [r.result.peer for r in rows_ if isinstance(r, runner._Pending)]

        def fake(fns, **kw):
            for fn in fns:
                fn()  # each still runs
            return [timing.Timing(DECODE_US[n] * 1e-6, 3, "fake") for n in names]

        monkeypatch.setattr(runner.timing, "measure", fake)
        return real(self, w, rows_)

    monkeypatch.setattr(runner.Runner, "_measure", measure)
    rc, doc, err = run_json(capsys, "--workload", "decode", "--device", "cpu", "--backend", backend,
                            "--out", str(tmp_path))
    assert rc == 0, err
    assert (tmp_path / "bench-decode.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # plotted against B
    assert [w["label"] for w in doc["workloads"]] == ["B1 ctx64 H8 D64", "B3 ctx64 H8 D64"]
    for w in doc["workloads"]:
        assert w["gate"]["ok"]
        r = rows_of(w)
        assert r["inplace"]["status"] == "ok" and r["inplace"]["speedup"] == pytest.approx(8 / 30)
        if backend == "tvm":
            assert r["kernel_only"]["status"] == "ok"
            assert r["inplace"]["x_kernel_only"] == pytest.approx(2.0)
            assert r["kernel"]["x_kernel_only"] == pytest.approx(7.5)
        else:
            assert r["kernel_only"]["status"] == "unavailable"
            assert r["kernel_only"]["note"] == "the kernel alone is timed for the TVM backend only, not torch"
            assert all(row["x_kernel_only"] is None for row in r.values())
    got = [(g["measured"], g["met"]) for g in doc["goals"]]
    alone = (pytest.approx(2.0), True) if backend == "tvm" else (None, None)
    assert got == [alone, (pytest.approx(5.0), True), (pytest.approx(40 / 30), False)]
    table = bench.report.table(doc)
    assert ("x kernel" in table) == (backend == "tvm")
    assert "speedup of sdpa over inplace >= 4): 5" in table


def rows_of(w: dict) -> dict:
    return {r["peer"]: r for r in w["results"]}
