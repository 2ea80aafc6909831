"""The TVM tuner (local and through TVM's RPC tracker/server), its records at run time, cross compilation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("tvm")

from ea_ops import records  # noqa: E402
from ea_ops.backends.tvm import build, schedule  # noqa: E402
from ea_ops.backends.tvm.target import cpu_fingerprint  # noqa: E402
from schedules.tvm import rpc, spaces  # noqa: E402

pytestmark = pytest.mark.tvm
ROOT = Path(__file__).resolve().parents[2]


def ea_ops_cli(*argv, env=None, timeout=600):
    env = {**os.environ, "EA_OPS_TVM_SELECT_PASSES": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "ea_ops.cli", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env)


def _tune_args(out, *extra):
    return ["tune", "--backend", "tvm", "--workloads", "tiny", "--orders", "2", "--trials", "3",
            "--out", str(out), "--json", *extra]


def test_tiny_tuning_run_writes_a_record_the_runtime_applies_and_resumes(tmp_path, monkeypatch):
    res = ea_ops_cli(*_tune_args(tmp_path))
    assert res.returncode == 0, res.stderr[-3000:]
    folder = tmp_path / "tvm" / cpu_fingerprint()
    assert (folder / "database_workload.json").exists() and (folder / "database_tuning_record.json").exists()
    recs = records.read_records_file(folder / records.RECORDS_FILE, backend="tvm", fingerprint=cpu_fingerprint())
    assert len(recs) == 1
    rec = recs[0]
    assert rec["kernel"] == {"name": "forward", "causal": True, "order": 2, "dtype": "float32"}
    assert rec["workload"]["H"] == 2 and rec["workload"]["D"] == 16 and rec["trials"] >= 3
    assert rec["latency_us"]["chosen"] > 0 and rec["latency_us"]["default"] > 0
    assert rec["config"]["loop"] in schedule.LOOPS
    assert "progress" in res.stderr or "%" in res.stderr  # the progress bar
    # The runtime reads the record for this target (as the user cache) and builds with its knobs.
    monkeypatch.setenv("EA_OPS_CACHE_DIR", str(tmp_path))
    comp = build.kernel_for("forward", True, 2, "float32", 2, 16, 50)
    assert comp.source == "record" and comp.config == rec["config"]
    # Re-running resumes: the database already holds the trials, nothing is measured again.
    lines = (folder / "database_tuning_record.json").read_text().count("\n")
    res = ea_ops_cli(*_tune_args(tmp_path))
    assert res.returncode == 0, res.stderr[-3000:]
    assert (folder / "database_tuning_record.json").read_text().count("\n") == lines


def test_tuning_through_tvm_rpc_tracker_and_server_then_both_are_stopped(tmp_path):
    with rpc.local_farm(key="ea-ops-test", env={"TVM_NUM_THREADS": "1"}) as farm:
        pids = farm["pids"]
        res = ea_ops_cli(*_tune_args(tmp_path, "--rpc-tracker", f"{farm['host']}:{farm['port']}",
                                     "--rpc-key", farm["key"]))
        assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout[res.stdout.rindex("\n{\n") + 1:])
    assert summary["records"] and summary["records"][0]["measured"] == "rpc"
    for pid in pids:  # tracker, server and the server's forked workers are gone
        assert rpc.group_members(pid) == []


def test_knobs_of_a_foreign_trace_are_refused():
    class Fake:
        def as_json(self):
            return [[["SampleCategorical", [], [[1, 2], [0.5, 0.5]], ["v0"]]], [[0, 1]]]

    with pytest.raises(ValueError, match="not a trace"):
        spaces.knobs_from_trace(Fake())


def test_compile_cuda_sm90_exports_source_ptx_and_manifest_without_a_gpu(tmp_path):
    res = ea_ops_cli("compile", "--backend", "tvm", "--target", "cuda:sm_90", "--out", str(tmp_path),
                     "--orders", "2", env={"EA_OPS_COMPILE_SHAPE": "2x16"})
    assert res.returncode == 0, res.stderr[-3000:]
    man = json.loads((tmp_path / "manifest.json").read_text())
    assert man["target"]["fingerprint"] == "cuda-sm_90" and man["target"]["arch"] == "sm_90"
    assert man["versions"]["tvm"] and {(k["H"], k["D"]) for k in man["kernels"]} == {(2, 16)}
    variants = {(k["kernel"], k["causal"], k["variant"]) for k in man["kernels"]}
    assert ("forward", True, "chunked") in variants and ("backward", True, "scan") in variants
    for k in man["kernels"]:
        src = (tmp_path / k["files"]["source"]["path"]).read_text()
        assert len(k["files"]["source"]["sha256"]) == 64
        assert "__global__" in src and "threadIdx.x" in src
        if k["variant"] == "chunked":
            assert len(k["kernels"]) == 3  # chunk sums, prefix combine, chunk outputs
        if man["versions"]["nvcc"]:
            ptx = (tmp_path / k["files"]["ptx"]["path"]).read_text()
            assert ".target sm_90" in ptx and ".local" not in ptx  # the state stays in registers


def test_compile_cpu_exports_loadable_shared_libraries(tmp_path):
    res = ea_ops_cli("compile", "--backend", "tvm", "--target", "cpu", "--out", str(tmp_path),
                     "--orders", "2", env={"EA_OPS_COMPILE_SHAPE": "2x8"})
    assert res.returncode == 0, res.stderr[-3000:]
    man = json.loads((tmp_path / "manifest.json").read_text())
    assert man["target"]["fingerprint"] == cpu_fingerprint() and len(man["kernels"]) == 5  # with the step
    import math

    import torch
    import tvm

    from tests.helpers import qkv, rel_err

    entry = next(k for k in man["kernels"] if k["kernel"] == "forward" and k["causal"])
    lib = tvm.runtime.load_module(str(tmp_path / entry["files"]["library"]["path"]))
    q, k, v = qkv((1, 9, 2, 8), dtype=torch.float32)
    o = torch.full_like(q, math.nan)
    S = torch.zeros(1, 2, 3, 8)
    lib["main"](q, k, v, o, S, S.clone(), torch.full((1, 2, 8), math.inf), 1.0)
    import ea_ops

    assert rel_err(o, ea_ops.ea_attention(q, k, v, order=2, backend="torch")[0]) < 2e-5


def test_records_shipped_for_this_cpu_class_are_valid():
    folder = ROOT / "autotune_cache" / "tvm"
    shipped = [p for p in folder.glob("*/records.json")]
    assert shipped, "no shipped TVM records"
    for path in shipped:
        fp = path.parent.name
        recs = records.read_records_file(path, backend="tvm", fingerprint=fp)
        assert recs and all(r["kernel"]["order"] >= 6 for r in recs)
        names = {(r["kernel"]["name"], r["kernel"]["causal"], r["kernel"]["dtype"]) for r in recs}
        assert {("forward", True, "float32"), ("backward", True, "float32")} <= names
        # MetaSchedule's database ships where the tuning run can be resumed (not for records kept from a run whose
        # other workloads were dropped: autotune_cache/README.md); when it does, both of its files.
        db = [(path.parent / f"database_{n}.json").exists() for n in ("tuning_record", "workload")]
        assert all(db) or not any(db), fp
    assert records.t_bucket(4096) == 4096 and records.t_bucket(4097) == 8192


def test_select_times_the_runtime_kernels_on_torch_tensors():
    """measure.runtime_times: the runtime's own builds (symbolic shapes) on torch tensors filled by role; a config
    that does not fit gives None, not a time."""
    import torch

    from ea_ops.backends.tvm import schedule
    from schedules.tvm import measure
    from schedules.tvm.workloads import Workload

    w = Workload("forward", True, 2, "float32", 1, 64, 2, 16)
    a = measure.runtime_arguments(w)
    assert [tuple(t.shape) for t in a[:4]] == [(1, 64, 2, 16)] * 4 and a[-1] == 1.0
    assert torch.isinf(a[6]).all() and not a[4].any() and 0.3 < a[0].std().item() < 0.7  # M = +inf, S = 0
    good = schedule.default_cpu_config("forward", 2, 16)
    times = measure.runtime_times(w, [good, {"loop": "d_t", "d_tile": 5}], repeat=2)
    assert times[0] is not None and times[0] > 0 and times[1] is None
    bw = Workload("backward", True, 2, "bfloat16", 1, 40, 2, 16)
    assert measure.runtime_times(bw, [schedule.default_cpu_config("backward", 2, 16)], repeat=1)[0] > 0

def test_every_kernel_declares_exactly_the_arguments_of_the_table():
    # One table of arguments (ea_ops/backends/tvm/args.py): the kernels build their signature from it, the
    # tuner fills by its roles, the exporter writes its names. A kernel that drifts from it fails here.
    from ea_ops.backends.tvm import args, cpu_kernels, cuda_kernels

    for kernel, causal in (("forward", True), ("forward", False), ("backward", True), ("backward", False)):
        want = args.names(kernel, causal)
        cpu = cpu_kernels.build_func(kernel, 2, "float32", causal, 2, 8)
        assert [p.name for p in cpu.params] == want, (kernel, causal)
        cfg = cuda_kernels.default_config(kernel, causal, channels=1 << 20)
        gpu = cuda_kernels.func_for(kernel, causal, 2, "float32", 2, 8, cfg, None)
        assert [p.name for p in gpu.params] == want, (kernel, causal, "cuda")
    chunked = cuda_kernels.func_for("forward", True, 2, "float32", 2, 8, {"variant": "chunked", "threads": 128,
                                                                          "chunk": 64}, None)
    assert [p.name for p in chunked.params][:len(args.names("forward", True, "chunked"))] == \
        args.names("forward", True, "chunked")
    assert len(args.roles("backward", True)) == len(args.names("backward", True)) - 1  # the scale is a constant
