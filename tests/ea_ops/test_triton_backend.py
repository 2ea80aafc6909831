"""The Triton backend's host side without running a kernel: dispatch answers, work plans, configuration
choice (defaults, forced, tuned records), fingerprints. Kernels are checked by test_triton_interp.py."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from ea_ops import records
from ea_ops.backends.triton import backend, configs
from ea_ops.backends.triton.plan import items_of, sequences
from ea_ops.backends.triton.target import fingerprint_of, source_hash

ROOT = Path(__file__).resolve().parents[2]
FP = "cuda-NVIDIA_H200-sm90-triton3.6.0-kabc"


def test_importing_the_backend_does_not_import_triton():
    code = ("import sys, ea_ops.backends.triton.backend, ea_ops.backends.triton.configs; "
            "assert 'triton' not in sys.modules")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, timeout=120)


def test_cpu_without_interpreter_says_why(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q = torch.zeros(1, 3, 1, 2)
    why = backend.supports(q, causal=True, order=6, needs_grad=False)
    assert "TRITON_INTERPRET=1" in why
    assert backend.prefers(q, 6) is False
    assert "dtype" in backend.supports(q.to(torch.int32), causal=True, order=6, needs_grad=False)
    assert "order 16" in backend.supports(q, causal=True, order=16, needs_grad=False)


def test_rows_and_channels_over_the_launch_limits_are_refused():
    """Work tables hold int32 rows (B*T, or B for a step's q_t [B, H, D]); the channel blocks are the grid's
    second dimension (65535 programs of at least 32 channels). Expanded tensors: no memory."""
    step_rows = torch.zeros(()).expand(2**31, 1, 1)
    assert "2147483648 positions" in backend.supports(step_rows, causal=True, order=6, needs_grad=False)
    rows = torch.zeros(()).expand(2**16, 2**15, 1, 1)
    assert "2147483648 positions" in backend.supports(rows, causal=True, order=6, needs_grad=False)
    for q in (torch.zeros(()).expand(1, 2**11, 2**10), torch.zeros(()).expand(1, 1, 2**11, 2**10)):
        assert "H*D = 2097152 channels" in backend.supports(q, causal=True, order=6, needs_grad=False)


def test_interpreter_variable_set_too_late_is_refused(monkeypatch):
    pytest.importorskip("triton")
    from ea_ops.backends.triton import cuda_kernels  # noqa: F401  (defined as compiled kernels in this process)

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    why = backend.supports(torch.zeros(1, 3, 1, 2), causal=True, order=6, needs_grad=False)
    assert why is not None and "set it before importing triton" in why


def test_unavailable_reason_when_installed():
    pytest.importorskip("triton")
    assert backend.unavailable_reason() is None


# ---------------------------------------------------------------------------------------------- plans
def test_sequences_and_chunks():
    assert sequences(2, 5, None) == ((0, 5), (5, 10))
    segs = sequences(1, 9, [(0, 3), (3, 3), (3, 9)])
    items, item_seq, seq_chunks = items_of(segs, 4)
    assert items == [(0, 3), (3, 7), (7, 9)]
    assert item_seq == [0, 2, 2]
    assert seq_chunks == [0, 1, 1, 3]  # the empty sequence owns no chunk
    assert items_of(segs, None) == ([(0, 3), (3, 3), (3, 9)], [0, 1, 2], [0, 1, 2, 3])
    with pytest.raises(ValueError, match="chunk"):
        items_of(segs, 0)


def test_varlen_plan_lists_each_sequences_items_padded():
    from ea_ops.backends.triton.plan import make_plan

    plan = make_plan(sequences(1, 9, [(0, 3), (3, 3), (3, 9)]), 4, torch.device("cpu"))
    assert plan.seq_items.tolist() == [[0, 3], [3, 3], [1, 2]]  # 3 = n_items, the zero row's index


def test_long_sequences_take_the_chunk_prefix_in_two_levels_of_about_sqrt_chunks():
    from ea_ops.backends.triton.plan import GROUPS_FROM, group_size, groups_of, make_plan

    assert group_size(GROUPS_FROM) == 0 and group_size(GROUPS_FROM + 1) == 5
    assert group_size(8192) == 91  # T = 1M in chunks of 128: walks of at most 91 steps instead of 8192
    for n in range(GROUPS_FROM + 1, 3000):
        g = group_size(n)
        assert (g - 1) ** 2 < n <= g * g
    # chunks [0, 17) | none | [17, 18) | [18, 36): groups of 5, never across sequences
    assert groups_of([0, 17, 17, 18, 36], 5) == ([0, 5, 10, 15, 17, 18, 23, 28, 33, 36], [0, 4, 4, 5, 9])
    plan = make_plan(sequences(1, 36, [(0, 17), (17, 17), (17, 18), (18, 36)]), 1, torch.device("cpu"))
    assert (plan.group, plan.n_groups) == (5, 9)
    assert plan.group_chunks.tolist() == [0, 5, 10, 15, 17, 18, 23, 28, 33, 36]
    assert plan.seq_groups.tolist() == [0, 4, 4, 5, 9]
    assert make_plan(sequences(2, 64, None), 4, torch.device("cpu")).n_groups == 0  # 16 chunks: one level
    assert make_plan(sequences(1, 10**4, None), None, torch.device("cpu")).n_groups == 0  # the plain scan


PLAN_FIELDS = ("n_seqs", "n_items", "chunk", "max_rows", "group", "n_groups")


@pytest.mark.parametrize("B, T, chunk", [(1, 1, None), (3, 7, None), (2, 0, None), (2, 0, 4), (0, 5, 2),
                                         (1, 37, 8), (4, 16, 4), (3, 5, 1), (2, 9, 64), (2, 37, 2), (3, 100, 1),
                                         (1, 17, 1)])
def test_plans_built_while_capturing_equal_the_host_ones_and_are_not_cached(B, T, chunk, monkeypatch):
    from ea_ops.backends.triton import plan

    seqs = sequences(B, T, None)
    cpu = torch.device("cpu")
    want = plan._host_plan(seqs, chunk, cpu)
    monkeypatch.setattr(plan, "_CACHE", type(plan._CACHE)())
    monkeypatch.setattr(plan, "_capturing", lambda device: True)
    monkeypatch.setattr(plan, "_host_plan", lambda *a: pytest.fail("host plan while capturing"))
    got = plan.make_plan(seqs, chunk, cpu)
    assert [getattr(got, f) for f in PLAN_FIELDS] == [getattr(want, f) for f in PLAN_FIELDS]
    for f in ("bounds", "item_seq", "seq_chunks", "seq_items", "group_chunks", "seq_groups"):
        a, b = getattr(got, f), getattr(want, f)
        assert a.dtype == b.dtype and torch.equal(a, b), f
    assert not plan._CACHE  # graph-pool tensors stay out of the cache


def test_a_cached_plan_is_used_while_capturing_and_a_varlen_miss_says_what_to_do(monkeypatch):
    from ea_ops.backends.triton import plan

    monkeypatch.setattr(plan, "_CACHE", type(plan._CACHE)())
    cpu = torch.device("cpu")
    segs = sequences(1, 9, [(0, 3), (3, 9)])
    warm = plan.make_plan(segs, 4, cpu)  # the warm-up call before capturing
    monkeypatch.setattr(plan, "_capturing", lambda device: True)
    monkeypatch.setattr(plan, "_host_plan", lambda *a: pytest.fail("host plan while capturing"))
    assert plan.make_plan(segs, 4, cpu) is warm
    with pytest.raises(RuntimeError, match="before capturing"):
        plan.make_plan(sequences(1, 9, [(0, 4), (4, 9)]), 4, cpu)


def test_the_plan_cache_is_bounded(monkeypatch):
    from ea_ops.backends.triton import plan

    monkeypatch.setattr(plan, "_CACHE", type(plan._CACHE)())
    for T in range(plan._CACHE_SIZE + 5):
        plan.make_plan(sequences(1, T, None), None, torch.device("cpu"))
    assert len(plan._CACHE) == plan._CACHE_SIZE


# -------------------------------------------------------------------------------------- configurations
@pytest.mark.parametrize("cfg, words", [
    ({"variant": "scan"}, "num_warps"),
    ({"variant": "scan", "num_warps": 3}, "num_warps"),
    ({"variant": "scan", "num_warps": True}, "num_warps"),
    ({"variant": "fast", "num_warps": 4}, "variant"),
    ({"variant": "chunked", "num_warps": 4}, "chunk"),
    ({"variant": "chunked", "num_warps": 4, "chunk": 48}, "chunk must be one of"),
    ({"variant": "scan", "num_warps": 4, "chunk": 64}, "keys"),
    ([1], "dict"),
])
def test_validate_rejects(cfg, words):
    with pytest.raises(ValueError, match=words):
        configs.validate("forward", cfg)


def test_validate_step_and_loose_chunks():
    assert configs.validate("step", {"num_warps": 2}) == {"num_warps": 2}
    with pytest.raises(ValueError):
        configs.validate("step", {"num_warps": 2, "variant": "scan"})
    assert configs.validate("forward", {"variant": "chunked", "num_warps": 1, "chunk": 5}, strict=False)["chunk"] == 5


def test_default_splits_T_below_2_to_17_lanes():
    # the H200 shape: 8 * 16 * 128 = 2^14 lanes -> chunked, long chunks (T/256 * 2^14 >= 2^17)
    big = configs.default("forward", causal=True, HD=2048, n_seqs=8, rows=8 * 8192)
    assert big == {"variant": "chunked", "num_warps": 4, "chunk": 256}
    # fewer sequences -> shorter chunks, for enough (channel, chunk) scans in flight
    assert configs.default("forward", causal=True, HD=2048, n_seqs=1, rows=2048)["chunk"] == 32
    # 2^17 lanes or more -> the plain scan
    assert configs.default("forward", causal=True, HD=4096, n_seqs=32, rows=32 * 4096)["variant"] == "scan"
    # non-causal is always chunked; short sequences scan
    assert configs.default("forward", causal=False, HD=4096, n_seqs=32, rows=32 * 4096)["variant"] == "chunked"
    assert configs.default("backward", causal=True, HD=64, n_seqs=1, rows=20)["variant"] == "scan"
    assert configs.default("step", causal=True, HD=64, n_seqs=1, rows=1) == {"num_warps": 2}


def test_tuning_keys_hold_buckets_not_T():
    a = configs.workload("forward", HD=2048, n_seqs=8, rows=8 * 5000)
    b = configs.workload("forward", HD=2048, n_seqs=8, rows=8 * 6000)
    assert a == b == {"HD": 2048, "lanes": 16384, "T_bucket": 8192}
    assert records.t_bucket(64, 1) == 64 and records.t_bucket(65, 1) == 128 and records.t_bucket(0, 1) == 1
    assert records.t_bucket(4096, 3) == 2048  # the mean length of the packed sequences
    assert "T_bucket" not in configs.workload("step", HD=64, n_seqs=3, rows=3)


def _rec(config, *, HD=2048, lanes=16384, T_bucket=16384, name="forward", causal=True, fp=FP):
    return {
        "schema_version": 1, "backend": "triton", "fingerprint": fp,
        "target": {"kind": "cuda", "name": "NVIDIA H200", "capability": [9, 0]},
        "kernel": {"name": name, "causal": causal, "order": 6, "dtype": "bfloat16"},
        "workload": {"HD": HD, "lanes": lanes, "T_bucket": T_bucket}, "config": config,
        "latency_us": {"chosen": 100.0, "default": 150.0}, "versions": {"triton": "3.6.0"},
    }


@pytest.fixture
def cache(record_roots):
    records._loaded.clear()
    records._warned.clear()
    return record_roots


def _choose(**over):
    kw = dict(causal=True, order=6, dtype="bfloat16", HD=2048, n_seqs=8, rows=8 * 8192, fp=FP)
    kw.update(over)
    return configs.choose("forward", **kw)


def test_records_choose_nearest_and_fall_back(cache):
    tuned = {"variant": "chunked", "num_warps": 2, "chunk": 128}
    far = {"variant": "scan", "num_warps": 1}
    records.add_records(records.record_dirs("triton", FP)[0], [
        _rec(tuned), _rec(far, lanes=1 << 20, T_bucket=64)])
    assert _choose() == tuned
    assert _choose(rows=8 * 6000) == tuned  # another T in the same bucket
    default = configs.default("forward", causal=True, HD=2048, n_seqs=8, rows=8 * 8192)
    assert _choose(HD=1024) == configs.default("forward", causal=True, HD=1024, n_seqs=8, rows=8 * 8192)
    assert _choose(dtype="float16") == default  # no record for this dtype
    assert _choose(fp="cuda-NVIDIA_H100-sm90-triton3.6.0-kabc") == default  # another GPU's records never apply
    assert _choose(n_seqs=1024, rows=1024 * 64) == far  # near the second record's buckets
    assert _choose(n_seqs=1, rows=64) == configs.default("forward", causal=True, HD=2048, n_seqs=1, rows=64)


def test_user_records_win_and_bad_configs_are_skipped_with_a_warning(cache):
    shipped = records.record_dirs("triton", FP)[1]
    records.add_records(shipped, [_rec({"variant": "chunked", "num_warps": 4, "chunk": 64})])
    assert _choose()["chunk"] == 64
    records.add_records(records.record_dirs("triton", FP)[0], [_rec({"variant": "chunked", "num_warps": 4,
                                                                     "chunk": 4096})])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = _choose()
    assert got == configs.default("forward", causal=True, HD=2048, n_seqs=8, rows=8 * 8192)
    assert any("bad config" in str(w.message) for w in caught)


def test_forced_configuration_wins(cache):
    cfg = {"variant": "chunked", "num_warps": 1, "chunk": 7}
    with configs.forced(cfg, "forward"):
        assert _choose() == cfg
        assert configs.choose("step", causal=True, order=6, dtype="bfloat16", HD=64, n_seqs=1, rows=1,
                              fp=None) == {"num_warps": 2}
    assert _choose() != cfg
    with configs.forced({"variant": "scan", "num_warps": 2}):
        assert _choose(causal=False)["variant"] == "chunked"  # non-causal has no plain scan
        assert _choose(causal=False)["num_warps"] == 2


def test_fingerprint_names_gpu_capability_triton_and_source():
    desc = {"kind": "cuda", "name": "NVIDIA H200 (141GB)", "capability": [9, 0], "triton": "3.6.0",
            "source_hash": "0123456789ab"}
    fp = fingerprint_of(desc)
    assert fp == "cuda-NVIDIA_H200_141GB-sm90-triton3.6.0-k0123456789ab"
    assert records.check_name(fp, "fingerprint") == fp
    assert fingerprint_of({**desc, "name": "NVIDIA H100"}) != fp
    assert len(source_hash()) == 12


def test_the_rescan_emulation_applies_the_kernels_rule():
    """scripts/triton_block_rescans.py (the shares in docs/triton_builds.md) flags a lane whose minimum falls by
    more than DROP_MAX inside a full block after the first, and no other."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "scripts" / "triton_block_rescans.py"
    spec = importlib.util.spec_from_file_location("triton_block_rescans", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows, drop = mod.ROWS, mod.DROP_MAX
    T = 5 * rows
    y2 = torch.full((T, 4), drop + 10.0)
    y2[rows + 1, 0] = 1.0  # lane 0: falls by drop + 9 at a block's second row -> rescans
    y2[rows + 1, 1] = 11.0  # lane 1: falls by drop - 1 -> no
    y2[1, 2] = 1.0  # lane 2: the same fall as lane 0 inside the first block (exact) -> no
    y2[rows, 3] = 1.0  # lane 3: at a block's first row, the reference of the rows after it -> no
    assert mod.rescans(y2.sqrt()).tolist() == [True, False, False, False]
    assert mod.main(["--T", "64", "--lanes", "8"]) == 0
