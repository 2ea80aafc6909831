"""The Triton tuner's and compiler's host side: curated lists, candidates, presets, target checks, and
``ea-ops compile --backend triton`` end to end (PTX, cubins, manifest). The tuner runs end to end under the
interpreter in tests/ea_ops/triton_interp/interp_api.py."""

from __future__ import annotations

import argparse
import hashlib
import json

import pytest
import torch

from ea_ops.backends.triton import configs as runtime
from schedules.triton import configs
from schedules.triton.workloads import PRESETS, preset

SHAPES = [(n, hd, t) for n in (1, 2, 8, 32, 128) for hd in (32, 64, 256, 2048, 4096) for t in (16, 100, 2048, 8192)]


def test_curated_lists_are_valid_and_small():
    for kernel, cfgs in configs.CURATED.items():
        assert len(cfgs) <= 12, kernel  # a curated list, not a grid
        assert len({json.dumps(c, sort_keys=True) for c in cfgs}) == len(cfgs)
        for cfg in cfgs:
            assert runtime.validate(kernel, cfg) == cfg


@pytest.mark.parametrize("kernel, causal", [("forward", True), ("forward", False), ("backward", True),
                                           ("backward", False), ("step", True)])
def test_defaults_are_curated_and_first_among_candidates(kernel, causal):
    for n, hd, t in SHAPES:
        rows = n if kernel == "step" else n * t
        default = runtime.default(kernel, causal=causal, HD=hd, n_seqs=n, rows=rows)
        assert default in configs.CURATED[kernel], (n, hd, t, default)
        assert default["num_warps"] in configs.all_warps()
        cands = configs.candidates(kernel, causal=causal, HD=hd, n_seqs=n, rows=rows)
        assert cands[0] == default
        assert len({json.dumps(c, sort_keys=True) for c in cands}) == len(cands)
        if not causal:
            assert all(c.get("variant") != "scan" for c in cands)


def test_presets_and_slots():
    from schedules.triton.cli_tune import slots

    assert set(PRESETS) >= {"default", "small", "interp"}
    with pytest.raises(SystemExit, match="--workloads"):
        preset("nope")
    small = slots(preset("small"), [6])
    assert len(small) == 2 * 3  # forward, backward, step (causal only) per workload
    assert all(w.dtype in ("float32", "bfloat16", "float16") for ws in PRESETS.values() for w in ws)


def test_tuning_needs_a_gpu_or_the_interpreter(monkeypatch):
    from schedules.triton.cli_tune import local_device

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SystemExit, match="CUDA device"):
        local_device(None)
    with pytest.raises(SystemExit, match="no CUDA device"):
        local_device("cuda:sm_90")


def test_compile_cli_exports_ptx_cubin_and_manifest(tmp_path):
    pytest.importorskip("triton")
    from ea_ops.backends.triton import launch
    from schedules import cli_compile

    out = tmp_path / "sm90"
    rc = cli_compile.main(["--backend", "triton", "--target", "cuda:sm_90", "--out", str(out),
                           "--orders", "6", "--dtypes", "bfloat16"])
    assert rc == 0
    man = json.loads((out / "manifest.json").read_text())
    assert man["target"] == "cuda:sm_90" and man["arch"] == 90 and man["triton"]
    assert len(man["kernels"]) == len(launch.LAUNCHES) * len(configs.all_warps())  # every launch, every warps
    for k in man["kernels"]:
        cubin = (out / k["cubin"]).read_bytes()
        assert hashlib.sha256(cubin).hexdigest() == k["cubin_sha256"]
        assert ".target sm_90" in (out / k["ptx"]).read_text()
        assert k["entry"].startswith("ea_")
        assert k["resource_usage"]["local"] == 0 and k["resource_usage"]["registers"] > 0
        assert k["constexprs"]["ORDER"] == 6 and k["constexprs"]["BLOCK_C"] == 32 * k["num_warps"]


def test_compile_cli_refuses_non_cuda_targets_and_the_interpreter(tmp_path, monkeypatch):
    from schedules.triton import cli_compile

    args = argparse.Namespace(target="cpu", out=str(tmp_path), orders=[6], dtypes=["float32"])
    with pytest.raises(SystemExit, match="CUDA"):
        cli_compile.run(args)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(SystemExit, match="TRITON_INTERPRET"):
        cli_compile.run(argparse.Namespace(target="cuda:sm_90", out=str(tmp_path), orders=[6],
                                           dtypes=["float32"]))
