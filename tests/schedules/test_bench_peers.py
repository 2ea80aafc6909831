"""The bench's peers and workloads: the compiled formulation's math, byte counts, presets, the memory probe."""

from __future__ import annotations

import pytest
import torch

import ea_ops
from schedules.bench import memory, peers
from schedules.bench.gate import rel_err
from schedules.bench.workloads import PRESETS, Workload, parse_shape, plan, preset

# The blocked form runs in float32 against the float64 reference, so its error is float32 rounding: tolerances
# in float32 ulps (eps = 2^-23). Measured (max-norm relative, the inputs below): outputs 1.3e-7 to 4.1e-7
# (1.1 to 3.4 ulps; 2.7e-7 = 2.3 ulps with the large keys, at most 1.4e-6 = 11.7 ulps over seeds 0-19 there),
# gradients 1.2e-7 to 1.1e-6 (up to 9.5 ulps). Allowed: 16 ulps for outputs, 64 for gradients, about five
# times the worst measured here (other CPUs sum in another order).
EPS32 = torch.finfo(torch.float32).eps
OUT_TOL = 16 * EPS32  # 1.9e-6
GRAD_TOL = 64 * EPS32  # 7.6e-6


@pytest.mark.parametrize("T, block", [(100, 32), (64, 64), (7, 2048)])
def test_blocked_cumsum_form_matches_reference(T, block):
    """The formulation timed under torch.compile, run eagerly: same outputs and gradients as the reference."""
    g = torch.Generator().manual_seed(1)
    q, k, v, go = (torch.randn(2, T, 3, 4, generator=g, dtype=torch.float64) * s for s in (0.5, 0.5, 1, 1))
    q, k, v = (t.requires_grad_(True) for t in (q, k, v))
    ref, _ = ea_ops.ea_attention(q, k, v, order=6, backend="torch")
    o = peers.blocked_attention(q.float(), k.float(), v.float(), order=6, block=block)
    assert rel_err(o, ref) < OUT_TOL
    gr = torch.autograd.grad(ref, (q, k, v), go)
    qf, kf, vf = (t.detach().float().requires_grad_(True) for t in (q, k, v))
    o = peers.blocked_attention(qf, kf, vf, order=6, block=block)
    gb = torch.autograd.grad(o, (qf, kf, vf), go.float())
    for a, b in zip(gb, gr, strict=True):
        assert rel_err(a, b) < GRAD_TOL


def test_blocked_form_survives_large_keys_within_a_block():
    """Keys with y^2 ~ 60 alone would underflow exp(-y^2) in float32; the block offset keeps them."""
    g = torch.Generator().manual_seed(2)
    q = torch.randn(1, 50, 1, 2, generator=g, dtype=torch.float64) * 0.5 + 7.5
    k = torch.randn(1, 50, 1, 2, generator=g, dtype=torch.float64) * 0.5 + 7.5
    v = torch.randn(1, 50, 1, 2, generator=g, dtype=torch.float64)
    ref, _ = ea_ops.ea_attention(q, k, v, order=6, backend="torch")
    o = peers.blocked_attention(q.float(), k.float(), v.float(), order=6, block=25)
    assert torch.isfinite(o).all()
    assert rel_err(o, ref) < OUT_TOL


def test_byte_counts():
    w = Workload(2, 100, 3, 8, order=4, dtype="bfloat16", mode="fwd")
    n = 2 * 100 * 3 * 8
    assert w.ea_bytes() == 4 * n * 2 == w.sdpa_bytes()
    assert Workload(2, 100, 3, 8, dtype="float16", mode="fwdbwd").ea_bytes() == 12 * n * 2
    s = Workload(2, 100, 3, 8, order=4, dtype="bfloat16", mode="step")
    bhd = 2 * 3 * 8
    assert s.ea_bytes() == 4 * bhd * 2 + 2 * (2 * 5 * bhd + bhd) * 4  # q,k,v,o + S, Z, m read and written
    assert s.sdpa_bytes() == (2 * bhd + 2 * bhd * 100) * 2


def test_presets_match_the_issues_sizes():
    cpu = preset("cpu", "cpu")
    assert [w.T for w in cpu] == [1024, 2048, 4096, 8192, 16384, 32768, 65536]
    assert {(w.B, w.H, w.D, w.order, w.dtype, w.mode) for w in cpu} == {(1, 8, 64, 6, "float32", "fwd")}
    gpu = preset("gpu", "cuda")
    assert gpu[0].T == 2048 and 8192 in [w.T for w in gpu]
    assert {(w.B, w.H, w.D, w.dtype) for w in gpu} == {(8, 16, 128, "bfloat16")}
    decode = plan("decode", "cpu")
    assert [(w.B, w.T, w.H, w.D, w.order, w.dtype, w.mode) for w, _ in decode] == [
        (b, 1024, 8, 64, 6, "float32", "step") for b in (1, 8, 64)]
    assert all(p == ("inplace", "kernel_only", "eager", "sdpa", "copy") for _, p in decode)
    assert {(w.B, w.H, w.D, w.dtype, w.mode) for w in preset("decode", "cuda")} == {
        (b, 16, 128, "bfloat16", "step") for b in (1, 8, 64)}
    assert set(PRESETS) == {"cpu", "gpu", "decode", "demo", "smoke", "gpu-goal", "tvm-speed", "coldstart",
                            "fast-default", "long"}
    long = plan("long", "cpu")  # issue 13: T 1k..256k, forward and forward+backward, B1 H8 D64 order 6 float32
    assert [(w.T, w.mode) for w, _ in long] == [(1024 << i, m) for m in ("fwd", "fwdbwd") for i in range(9)]
    assert {(w.B, w.H, w.D, w.order, w.dtype) for w, _ in long} == {(1, 8, 64, 6, "float32")}
    assert all("copy" in p and ("out" in p) == (w.mode == "fwd") for w, p in long)
    fast = plan("fast-default", "cpu")
    assert (1, 4096, 8, 64, 6, "fwd") in {(w.B, w.T, w.H, w.D, w.order, w.mode) for w, _ in fast}
    assert (1, 2048, 12, 48, 4, "fwd") in {(w.B, w.T, w.H, w.D, w.order, w.mode) for w, _ in fast}
    assert min(w.T for w, _ in fast) == 512 and all("sdpa" in p and "eager" in p for _, p in fast)
    assert PRESETS["fast-default"].backend is None  # auto
    with pytest.raises(ValueError, match="--workload must be one of"):
        preset("huge", "cpu")


def test_the_goal_presets_are_what_the_scripts_measured():
    """gpu-goal: gpu_bench.py's forward, fwd+bwd sweep and decode contexts; tvm-speed: tvm_speed.py's shape."""
    goal = plan("gpu-goal", "cuda")
    rows = [(w.mode, w.T, peers_) for w, peers_ in goal]
    assert {(w.B, w.H, w.D, w.order, w.dtype, w.device) for w, _ in goal} == {(8, 16, 128, 6, "bfloat16", "cuda")}
    assert rows[0] == ("fwd", 8192, ("default", "eager", "sdpa", "flash_attn", "copy"))
    assert [(m, t) for m, t, _ in rows[1:7]] == [("fwdbwd", 2048), ("fwdbwd", 4096), ("fwdbwd", 8192),
                                                   ("step", 1024), ("step", 8192), ("step", 32768)]
    assert rows[-1] == ("fwd", 8192, ("compiled", "copy"))  # torch.compile last: the least predictable
    assert all("sdpa" in p for m, _, p in rows if m != "fwd")
    texts = {(g.mode, g.metric, g.op, g.bound, g.T_from) for g in PRESETS["gpu-goal"].goals}
    assert ("fwd", "roofline", ">=", 0.70, 0) in texts and ("fwdbwd", "speedup", ">", 1.0, 2048) in texts
    assert PRESETS["gpu-goal"].backend == "triton" and PRESETS["tvm-speed"].backend == "tvm"
    tvm = plan("tvm-speed", "cpu")
    assert [(w.B, w.T, w.H, w.D, w.order, w.dtype, w.mode) for w, _ in tvm] == [
        (1, 4096, 8, 64, 6, "float32", "fwd"), (1, 4096, 8, 64, 6, "float32", "fwdbwd")]
    assert all({"default", "cumsum"} <= set(p) for _, p in tvm)
    assert all(p is None for _, p in plan("cpu", "cpu"))  # the other presets take the command's peers


def test_cumsum_form_matches_the_reference():
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 64, 2, 8, generator=g, dtype=torch.float64) * s for s in (0.5, 0.5, 1))
    ref, _ = ea_ops.ea_attention(q, k, v, order=6, backend="torch")
    o = peers.cumsum_attention(q, k, v, order=6)
    assert o.dtype == torch.float64 and rel_err(o, ref) < OUT_TOL


def test_parse_shape():
    assert parse_shape(" 1, 2,3 ,4") == (1, 2, 3, 4)
    for bad in ("1,2,3", "a,b,c,d", "1,2,3,4,5", "1,-2,3,4", ""):
        with pytest.raises(ValueError, match="--shape"):
            parse_shape(bad)


def test_memory_probe_counts_the_output():
    """The fresh-process probe sees at least the float32 output and the row copies the backend makes."""
    w = Workload(1, 8192, 2, 16, mode="fwd")
    r = memory.peak_memory("ea", w, threads=1)
    out_bytes = 8192 * 2 * 16 * 4
    assert r["input_bytes"] == 3 * out_bytes
    assert out_bytes <= r["peak_bytes"] < 40 * out_bytes, r
    with pytest.raises(ValueError, match="kind must be one of"):
        memory.measure_here("flash", w)
