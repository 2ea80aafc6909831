"""The CPU-side parts of scripts/gpu_check.sh (the GPU run itself needs a GPU): the dry run's steps and file
layout, the time limits, summary.json and the exit status."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
SUMMARY = ROOT / "scripts" / "gpu_check_summary.py"
LAYOUT = {"summary.json", "logs/env.log", "logs/tests.log", "logs/timings.log", "logs/tune.log", "logs/bench.log",
          "bench-gpu-goal.json", "artifacts.tar.gz"}


def _summary_module():
    spec = importlib.util.spec_from_file_location("gpu_check_summary", SUMMARY)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(out: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, **env}
    env.pop("TRITON_INTERPRET", None)
    return subprocess.run(["bash", str(SCRIPT), *args, "--out", str(out)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_shell_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_dry_run_runs_what_needs_no_gpu_and_writes_the_layout(tmp_path):
    pytest.importorskip("triton")
    proc = _run(tmp_path, "--dry-run")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    files = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert files == LAYOUT  # at most 8 files, at most 2 folders below the output folder
    assert all(f.count("/") <= 2 for f in files)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["complete"] and summary["dry_run"] and summary["exit_status"] == 0
    steps = {s["step"]: s for s in summary["steps"]}
    assert list(steps) == ["env", "warm", "tests", "tvm", "timings", "tune", "bench"]
    assert steps["warm"]["rc"] == 0 and summary["warm"]["dry_run"] and summary["warm"]["builds"] > 100
    assert steps["tune"]["rc"] is None and steps["tune"]["skipped"] == "needs a GPU"
    assert steps["env"]["rc"] == steps["tests"]["rc"] == steps["timings"]["rc"] == steps["bench"]["rc"] == 0
    assert steps["tvm"]["rc"] == 0 and summary["limits_s"]["tvm"] <= 60
    timings = summary["timings"]
    assert timings["dry_run"] and [(r["what"], r["B"]) for r in timings["rows"]] == [
        ("passes", 1), ("passes", 1), ("passes", 8), ("passes", 8), ("decode", 1), ("decode", 8), ("decode", 64)]
    assert all(r["result"] is None for r in timings["rows"])
    assert summary["env"]["torch"] and summary["env"]["triton"]
    tests_log = (tmp_path / "logs" / "tests.log").read_text()
    assert "tests/ea_ops/test_triton_gpu.py" in tests_log and "test_tvm_cuda_gpu" not in tests_log  # collected
    bench = summary["bench"]
    assert bench["dry_run"] and bench["backend"] == "triton"
    assert [w["mode"] for w in bench["workloads"]][:4] == ["fwd", "fwdbwd", "fwdbwd", "fwdbwd"]
    assert [g["met"] for g in bench["goals"]] == [None, None, None]
    assert json.loads((tmp_path / "bench-gpu-goal.json").read_text())["preset"] == "gpu-goal"
    with tarfile.open(tmp_path / "artifacts.tar.gz") as tar:
        names = tar.getnames()
        tvm_log = tar.extractfile("./tvm.log").read().decode()
    assert {"./records", "./timings.json", "./bench-gpu-goal.txt", "./tvm.log", "./warm.log",
            "./warm.json"} <= set(names)
    if importlib.util.find_spec("tvm") is not None:  # the TVM GPU tests, collected in their own step
        assert "test_tvm_cuda_gpu.py::test_forward_backward_against_torch" in tvm_log


def test_limits_that_do_not_fit_seven_minutes_are_refused(tmp_path):
    proc = _run(tmp_path, "--dry-run", T_BENCH="400")
    assert proc.returncode == 2 and "over 420s" in proc.stderr
    assert not any(tmp_path.iterdir())


def _summary(steps: list[dict], workloads: list[dict] | None = None, failures: int = 0) -> dict:
    return {"steps": [{"step": s, "rc": rc} for s, rc in steps],
            "bench": None if workloads is None else {"workloads": workloads}, "tests": {"failures": failures}}


OK = [("env", 0), ("tests", 0), ("tune", 0), ("bench", 0)]


@pytest.mark.parametrize("summary, status", [
    (_summary(OK), 0),
    (_summary([("env", 0), ("tests", 0), ("tune", None), ("bench", 0)]), 0),  # a dry run's skipped step
    (_summary([("env", 0), ("tests", 0), ("tune", 0), ("bench", 1)]), 1),  # the gate
    (_summary([("env", 0), ("tests", 0), ("tune", 0), ("bench", 124)], [{"gate_ok": False}]), 1),  # partial doc
    (_summary([("env", 0), ("tests", 1), ("tune", 0), ("bench", 0)]), 1),  # a GPU test failed
    (_summary(OK, failures=2), 1),
    (_summary([("env", 1)]), 2),
    (_summary([("env", 0), ("tests", 0), ("tune", 124), ("bench", 0)]), 3),  # a time-out
    (_summary([("env", 0), ("tests", 0), ("tune", 0), ("bench", 2)]), 3),
    (_summary([("env", 0), ("tests", 0), ("tvm", 1), ("tune", 0), ("bench", 0)]), 1),  # a TVM GPU test failed
    ({**_summary(OK), "tvm_tests": {"failures": 1}}, 1),
    (_summary([("env", 0), ("tests", 0), ("tvm", 124), ("tune", 0), ("bench", 0)]), 3),
])
def test_exit_status(summary, status):
    assert _summary_module().exit_status(summary) == status


def test_summary_is_rewritten_after_each_step(tmp_path):
    mod = _summary_module()
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    out.mkdir()
    (work / "steps.jsonl").write_text('{"step": "env", "rc": 0, "seconds": 1}\n')
    partial = mod.summarize(work, out, final=False)
    assert partial["complete"] is False and partial["exit_status"] is None and len(partial["steps"]) == 1
    assert json.loads((out / "summary.json").read_text()) == partial
    with (work / "steps.jsonl").open("a") as f:
        f.write('{"step": "bench", "rc": 1, "seconds": 9}\n')
    assert mod.main([str(work), str(out), "--final"]) == 1
    assert json.loads((out / "summary.json").read_text())["exit_status"] == 1
    assert sorted(p.name for p in out.iterdir()) == ["summary.json"]  # no temporary left
