"""The Triton kernels (through ``ea_ops.backends.triton.launch``) against the torch reference, under the interpreter.

Every call runs with NaN-poisoned outputs and scratch buffers, so an element a kernel forgets to write fails
the finiteness check in ``rel``.
"""

from __future__ import annotations

import pytest
import torch

from ea_ops.backends import common
from ea_ops.backends.torch import backend as torch_backend
from ea_ops.backends.triton import launch
from ea_ops.state import EAState
from tests.ea_ops.triton_interp import common as C


@pytest.fixture(autouse=True)
def _poison():
    with common.poison_outputs():
        yield


def _st(state: EAState):
    return (state.S.contiguous(), state.Z.contiguous(), state.m.contiguous())


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("cfg", ["scan", "chunk8", "chunk1", "chunk5w2"])
def test_causal_forward_with_states(cfg, dtype):
    B, T, H, D, order = 2, 19, 2, 5, 6
    dt = C.DTYPES[dtype]
    q, k, v = C.inputs((B, T, H, D), dt, seed=3)
    init = C.random_state(B, H, D, order)
    o, fin = launch.forward(q, k, v, _st(init), order=order, causal=True, scale=0.8, segments=None,
                            want_state=True, config=C.CONFIGS[cfg])
    ref, ref_st, _ = C.ref_forward(q, k, v, order=order, causal=True, scale=0.8, state=init)
    assert o.dtype == dt
    assert C.rel(o, ref) < C.TOL[dt]
    assert C.state_rel(fin, ref_st) < C.TOL[torch.float32]


@pytest.mark.parametrize("cfg", ["scan", "chunk8"])
def test_causal_forward_without_final_state(cfg):
    q, k, v = C.inputs((1, 12, 1, 3), torch.float32, seed=4)
    init = EAState.empty(1, 1, 3, 4)
    o, fin = launch.forward(q, k, v, _st(init), order=4, causal=True, scale=1.0, segments=None,
                            want_state=False, config=C.CONFIGS[cfg])
    assert fin is None
    assert C.rel(o, C.ref_forward(q, k, v, order=4, causal=True, scale=1.0)[0]) < C.TOL[torch.float32]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("cfg", ["chunk8", "chunk5w2"])
def test_noncausal_forward(cfg, dtype):
    dt = C.DTYPES[dtype]
    q, k, v = C.inputs((2, 21, 2, 4), dt, seed=5)
    o, fin = launch.forward(q, k, v, None, order=6, causal=False, scale=1.3, segments=None, want_state=False,
                            config=C.CONFIGS[cfg])
    assert fin is None
    assert C.rel(o, C.ref_forward(q, k, v, order=6, causal=False, scale=1.3)[0]) < C.TOL[dt]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("cfg", ["scan", "chunk8", "chunk1"])
def test_causal_backward_with_initial_state(cfg, dtype):
    B, T, H, D, order = 2, 17, 1, 6, 6
    dt = C.DTYPES[dtype]
    q, k, v = C.inputs((B, T, H, D), dt, seed=6)
    g = torch.randn(B, T, H, D, generator=torch.Generator().manual_seed(7)).to(dt)
    init = C.random_state(B, H, D, order, seed=8)
    got = launch.backward(q, k, v, g, _st(init), order=order, causal=True, scale=0.7, segments=None,
                          config=C.CONFIGS[cfg])
    _, _, want = C.ref_forward(q, k, v, order=order, causal=True, scale=0.7, state=init, want_grad_of=g)
    for name, a, b in zip(("dq", "dk", "dv"), got, want):
        assert a.dtype == dt
        assert C.rel(a, b) < C.TOL[dt], name


@pytest.mark.parametrize("cfg", ["chunk8", "chunk5w2"])
def test_noncausal_backward(cfg):
    q, k, v = C.inputs((2, 15, 2, 3), torch.float32, seed=9)
    g = torch.randn(q.shape, generator=torch.Generator().manual_seed(10))
    got = launch.backward(q, k, v, g, None, order=4, causal=False, scale=1.1, segments=None, config=C.CONFIGS[cfg])
    _, _, want = C.ref_forward(q, k, v, order=4, causal=False, scale=1.1, want_grad_of=g)
    for name, a, b in zip(("dq", "dk", "dv"), got, want):
        assert C.rel(a, b) < C.TOL[torch.float32], name


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("cfg", ["scan", "chunk8"])
def test_varlen_with_empty_and_short_sequences(cfg, causal):
    # sequences of 5, 0, 3 (shorter than a chunk) and 14 rows; each with its own state
    segments = [(0, 5), (5, 5), (5, 8), (8, 22)]
    H, D, order = 2, 3, 4
    q, k, v = C.inputs((1, 22, H, D), torch.float32, seed=11)
    g = torch.randn(q.shape, generator=torch.Generator().manual_seed(12))
    init = C.random_state(len(segments), H, D, order, seed=13) if causal else None
    st = _st(init) if causal else None
    o, fin = launch.forward(q, k, v, st, order=order, causal=causal, scale=0.9, segments=segments,
                            want_state=causal, config=C.CONFIGS[cfg])
    grads = launch.backward(q, k, v, g, st, order=order, causal=causal, scale=0.9, segments=segments,
                            config=C.CONFIGS[cfg])
    ref, ref_st, ref_g = C.ref_forward(q, k, v, order=order, causal=causal, scale=0.9, state=init,
                                     segments=segments, want_grad_of=g)
    assert C.rel(o, ref) < C.TOL[torch.float32]
    if causal:
        assert C.state_rel(fin, ref_st) < C.TOL[torch.float32]
        # the empty sequence hands its initial state through unchanged
        assert torch.equal(fin[0][1], init.S[1]) and torch.equal(fin[2][1], init.m[1])
    for name, a, b in zip(("dq", "dk", "dv"), grads, ref_g):
        assert C.rel(a, b) < C.TOL[torch.float32], name


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_step_matches_reference_step(dtype):
    B, H, D, order = 3, 2, 5, 6
    dt = C.DTYPES[dtype]
    state = C.random_state(B, H, D, order, seed=14)
    q, k, v = (t[:, 0] for t in C.inputs((B, 1, H, D), dt, seed=15))
    o, new = launch.step(q, k, v, _st(state), order=order, scale=0.6, config={"num_warps": 1})
    ref_o, ref_st = torch_backend.recurrent_step(q.float(), k.float(), v.float(), state, order=order, scale=0.6)
    assert o.dtype == dt and o.shape == (B, H, D)
    assert C.rel(o, ref_o) < C.TOL[dt]
    assert C.state_rel(new, ref_st) < C.TOL[torch.float32]


def test_step_from_empty_state():
    q, k, v = (t[:, 0] for t in C.inputs((2, 1, 1, 4), torch.float32, seed=16))
    empty = EAState.empty(2, 1, 4, 2)
    o, new = launch.step(q, k, v, _st(empty), order=2, scale=1.0, config={"num_warps": 1})
    assert C.rel(o, v) < 8 * C.EPS32  # one key: the output is its value (measured 0.65 eps, margin 12x)
    assert torch.equal(new[2], (k * k).float())


@pytest.mark.parametrize("cfg", ["scan", "chunk8"])
def test_stabilised_with_large_keys(cfg):
    # y^2 ~ 150: exp(-y^2) is 0 in float32, so only the running-min rescaling keeps the sums alive
    q, k, v = C.inputs((1, 20, 1, 4), torch.float32, seed=17, shift_k=12.0)
    q = q + 12.0
    g = torch.randn(q.shape, generator=torch.Generator().manual_seed(18))
    init = EAState.empty(1, 1, 4, 6)
    o, fin = launch.forward(q, k, v, _st(init), order=6, causal=True, scale=1.0, segments=None,
                            want_state=True, config=C.CONFIGS[cfg])
    ref, ref_st, ref_g = C.ref_forward(q, k, v, order=6, causal=True, scale=1.0, state=init, want_grad_of=g)
    assert C.rel(o, ref) < C.TOL[torch.float32]  # |x y| ~ 144: measured 1.1e-7, no worse than small keys
    assert (fin[2] > 100).all()
    grads = launch.backward(q, k, v, g, _st(init), order=6, causal=True, scale=1.0, segments=None,
                            config=C.CONFIGS[cfg])
    for a in grads:
        assert torch.isfinite(a).all()
    assert C.rel(grads[2], ref_g[2]) < C.TOL[torch.float32]


@pytest.mark.parametrize("order", [0, 2, 8, 14])
def test_orders(order):
    q, k, v = C.inputs((1, 11, 1, 3), torch.float32, seed=19, scale_qk=0.5)
    g = torch.randn(q.shape, generator=torch.Generator().manual_seed(20))
    init = EAState.empty(1, 1, 3, order)
    cfg = C.CONFIGS["chunk5w2"]
    o, _ = launch.forward(q, k, v, _st(init), order=order, causal=True, scale=1.0, segments=None,
                          want_state=False, config=cfg)
    got = launch.backward(q, k, v, g, _st(init), order=order, causal=True, scale=1.0, segments=None, config=cfg)
    ref, _, want = C.ref_forward(q, k, v, order=order, causal=True, scale=1.0, state=init, want_grad_of=g)
    assert C.rel(o, ref) < C.TOL[torch.float32]
    for name, a, b in zip(("dq", "dk", "dv"), got, want):
        assert C.rel(a, b) < C.TOL[torch.float32], name


def test_channels_over_several_programs():
    # H*D = 45 channels with 32 per program: two programs along channels, the second partly masked
    q, k, v = C.inputs((1, 9, 3, 15), torch.bfloat16, seed=21)
    init = C.random_state(1, 3, 15, 4, seed=22)
    o, fin = launch.forward(q, k, v, _st(init), order=4, causal=True, scale=1.0, segments=None,
                            want_state=True, config=C.CONFIGS["chunk8"])
    ref, ref_st, _ = C.ref_forward(q, k, v, order=4, causal=True, scale=1.0, state=init)
    assert C.rel(o, ref) < C.TOL[torch.bfloat16]
    assert C.state_rel(fin, ref_st) < C.TOL[torch.float32]


# Sequences of 17, 0, 1 and 18 single-row chunks: more than plan.GROUPS_FROM chunks, so the chunk prefix and
# suffix run in two levels (groups of 5: a group's total, the prefix over groups, then inside the groups), with
# an empty sequence, one of a single one-chunk group and groups cut short at a sequence's end. (The chunk1
# configurations above, 19 rows, take the two levels too.)
TWO_LEVEL = {"variant": "chunked", "num_warps": 1, "chunk": 1}
TWO_LEVEL_SEGMENTS = [(0, 17), (17, 17), (17, 18), (18, 36)]


@pytest.mark.parametrize("causal, shift", [(True, 0.0), (True, 11.0), (False, 11.0)])
def test_two_level_chunk_prefix_and_suffix(causal, shift):
    from ea_ops.backends.triton.plan import make_plan, sequences

    segs = TWO_LEVEL_SEGMENTS
    plan = make_plan(sequences(1, 36, segs), TWO_LEVEL["chunk"], torch.device("cpu"))
    assert (plan.group, plan.n_groups) == (5, 9)  # the path under test: 4 + 0 + 1 + 4 groups
    H, D, order = 1, 2, 4
    q, k, v = C.inputs((1, 36, H, D), torch.float32, seed=41, shift_k=shift)
    q = q + shift  # shift 11: y^2 ~ 121 > 88.7, only the stabilisation keeps the sums finite
    g = torch.randn(q.shape, generator=torch.Generator().manual_seed(42))
    init = C.random_state(len(segs), H, D, order, seed=43, shift_k=shift) if causal else None
    st = _st(init) if causal else None
    o, fin = launch.forward(q, k, v, st, order=order, causal=causal, scale=1.0, segments=segs, want_state=causal,
                            config=TWO_LEVEL)
    grads = launch.backward(q, k, v, g, st, order=order, causal=causal, scale=1.0, segments=segs, config=TWO_LEVEL)
    ref, ref_st, ref_g = C.ref_forward(q, k, v, order=order, causal=causal, scale=1.0, state=init, segments=segs,
                                     want_grad_of=g)
    assert C.rel(o, ref) < C.TOL[torch.float32]
    if causal:
        assert C.state_rel(fin, ref_st) < C.TOL[torch.float32]
        assert torch.equal(fin[0][1], init.S[1]) and torch.equal(fin[2][1], init.m[1])
    # Gradients against float64. At shift 11, dq is ill-conditioned (sum c (N' - o D') cancels): the float32
    # reference itself is 3.9e-2 from float64 there (1.2e-7 at shift 0), so the bound is 4x its error or TOL.
    qd, kd, vd = (t.double().requires_grad_() for t in (q, k, v))
    o64, _ = torch_backend.attention(qd, kd, vd, order=order, causal=causal, scale=1.0,
                                     initial_state=init.to(dtype=torch.float64) if causal else None,
                                     output_final_state=causal, cu_seqlens=segs)
    g64 = torch.autograd.grad(o64, (qd, kd, vd), g.double())
    for name, a, b, c in zip(("dq", "dk", "dv"), grads, ref_g, g64):
        assert C.rel(a, c) < max(C.TOL[torch.float32], 4 * C.rel(b, c)), name
