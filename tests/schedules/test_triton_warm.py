"""schedules.triton.warm: the builds it lists, that a later launch finds them in Triton's cache, that they are
the builds made ahead of time, and its command line (the real builds for sm_90, without a GPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

from schedules.triton import aot, warm  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def test_the_preset_lists_each_build_once_the_slowest_first():
    tasks = warm.tasks_for("gpu-tests", 90)
    names = [t.name for t in tasks]
    assert len(names) == len(set(names)) > 100
    jit = {t.build for t in tasks if t.how == "jit"}
    # every launch at order 6 in bfloat16 and 4 warps, and its ahead-of-time build (a test compiles it)
    goal = {aot.canonical(b) for b in aot.builds_for([6], ["bfloat16"], [4], [90])}
    assert goal <= jit and goal <= {t.build for t in tasks if t.how == "aot"}
    # the chunk passes take no input-dtype tensor: one build for every dtype
    chunk = [b for b in jit if b.kernel.startswith("chunk_")]
    assert chunk and all(b.dtype == "float32" for b in chunk)
    assert len(chunk) == len({(b.kernel, b.flags, b.order, b.num_warps) for b in chunk})
    costs = [warm._cost(t) for t in tasks]
    assert costs == sorted(costs, reverse=True) and tasks[0].build.kernel == "fwd_scan"
    with pytest.raises(ValueError, match="preset"):
        warm.tasks_for("everything", 90)


# In a child: its own Triton cache, the stand-in driver, no state left in this process's kernels.
_CHILD = """
import json, os, sys, time
from schedules.triton import aot, warm
b = next(x for x in aot.builds_for([2], ["float32"], [1], [90]) if x.kernel == "nc_out")
tasks = [warm.Task("jit", b), warm.Task("aot", b)]
entries = warm.warm(tasks, jobs=2, arch=90, progress=False)
cache = os.environ["TRITON_CACHE_DIR"]
before = sorted(os.listdir(cache))
warm.use_target(90)
jit = warm.make(tasks[0])  # the JIT's own path, as a launch takes it
ahead = warm.make(tasks[1])
print(json.dumps({"entries": entries, "before": before, "after": sorted(os.listdir(cache)),
                  "same_cubin": jit.asm["cubin"] == ahead.asm["cubin"], "hashes": [jit.hash, ahead.hash]}))
"""


def test_a_launch_finds_the_warmed_build_and_it_is_the_ahead_of_time_one(tmp_path):
    env = {**os.environ, "TRITON_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT),
           "TRITON_DEFAULT_FP_FUSION": "1"}
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, "-c", _CHILD], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [e.get("error") for e in got["entries"]] == [None, None]
    # two cache entries: the JIT's key lists empty attributes, the ahead-of-time one does not
    assert len(got["before"]) == 2 and got["hashes"][0] != got["hashes"][1]
    assert got["after"] == got["before"]  # both found on disk: nothing compiled again
    assert got["same_cubin"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TRITON_INTERPRET", None)
    return subprocess.run([sys.executable, "-m", "schedules.triton.warm", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_the_dry_run_lists_the_builds_in_its_json(tmp_path):
    proc = _cli("--dry-run", "--json", str(tmp_path / "w.json"))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "w.json").read_text())
    assert doc["dry_run"] and doc["arch"] == 90 and doc["failed"] == 0
    assert [e["name"] for e in doc["entries"]] == [t.name for t in warm.tasks_for("gpu-tests", 90)]
    assert f"{doc['builds']} builds for sm_90 listed" in proc.stdout


@pytest.mark.parametrize("args, word", [(["--jobs", "0"], "--jobs"), (["--preset", "all"], "--preset"),
                                        (["--arch", "75", "--dry-run"], "--arch")])
def test_bad_arguments_exit_2_and_name_the_argument(args, word):
    proc = _cli(*args)
    assert proc.returncode == 2 and word in proc.stderr


def test_without_a_gpu_the_target_must_be_named():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device names the target")
    proc = _cli()
    assert proc.returncode == 2 and "--arch" in proc.stderr
