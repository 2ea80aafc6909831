"""The CPU-side parts of scripts/gpu_check.sh and scripts/gpu_bench.py (the GPU run itself needs a GPU)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
BENCH = ROOT / "scripts" / "gpu_bench.py"


def _bench_module():
    spec = importlib.util.spec_from_file_location("gpu_bench", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_shell_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_dry_run_walks_every_step(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--out", str(tmp_path)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [s["step"] for s in summary["steps"]] == ["tests", "tune", "bench"]
    env_json = json.loads((tmp_path / "env.json").read_text())
    assert env_json["torch"] and env_json["triton"]
    tests_cmd = (tmp_path / "tests.log").read_text()
    assert "-m gpu" in tests_cmd and "tests/ea_ops/test_triton_gpu.py" in tests_cmd


def test_plan_and_roofline_arithmetic():
    gb = _bench_module()
    p = gb.plan()
    assert p["forward"]["shape"] == [8, 8192, 16, 128] and p["forward"]["order"] == 6
    assert [c["shape"][1] for c in p["fwd_bwd"]] == [2048, 4096, 8192]
    # q, k, v read and o written, bf16: 4 * 8*8192*16*128 * 2 bytes = 1 GiB; the copy peer moves the same
    assert gb.io_bytes((8, 8192, 16, 128), 2) == 2**30


def test_summary_verdicts():
    gb = _bench_module()
    res = {"forward": {"triton_us": 300.0, "copy_us": 240.0, "sdpa_us": 900.0, "eager_us": 30000.0},
           "fwd_bwd": [{"shape": [8, 2048, 16, 128], "triton_us": 500.0, "sdpa_us": 800.0},
                       {"shape": [8, 4096, 16, 128], "triton_us": 1000.0, "sdpa_us": 900.0, "flash_attn_us": 2000.0}],
           "decode": [{"context": 1024, "triton_us": 10.0}, {"context": 32768, "triton_us": 10.5}]}
    s = gb.summarize(res)
    assert s["forward_fraction_of_copy"] == 0.8 and s["forward_goal_70pct_of_copy"] is True
    assert s["forward_speedup_vs_sdpa"] == 3.0 and s["forward_speedup_vs_eager"] == 100.0
    assert s["fwd_bwd_goal_faster_than_sdpa_from_2048"] is False  # slower than SDPA at T=4096
    assert s["decode_goal_flat"] is True
    res["forward"]["triton_us"] = 400.0
    assert gb.summarize(res)["forward_goal_70pct_of_copy"] is False


def test_bench_end_to_end_on_toy_shapes_under_the_interpreter(tmp_path):
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "EA_OPS_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, str(BENCH), "--tiny", "--only", "forward,decode", "--out", str(tmp_path)],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    res = json.loads((tmp_path / "bench.json").read_text())
    assert res["errors"] == {}
    fwd = res["forward"]
    for peer in ("triton", "triton_default", "eager", "sdpa", "copy"):
        assert fwd[f"{peer}_us"] > 0, peer
    assert fwd["rel_err_vs_torch_batch0"] < 8e-3  # bf16 output: one ulp
    assert all(c["rel_err_vs_torch"] < 8e-3 and c["triton_us"] > 0 for c in res["decode"])
    assert "Causal forward" in (tmp_path / "bench.md").read_text()
