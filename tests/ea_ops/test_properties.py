"""Hypothesis property tests of the EA contract (SPEC section 1) on the torch backend."""

import math

import torch
from hypothesis import given
from hypothesis import strategies as st

import ea_ops
from tests.helpers import rel_err

orders = st.sampled_from([0, 2, 4, 6, 8])
dims = st.tuples(st.integers(1, 2), st.integers(1, 40), st.integers(1, 2), st.integers(1, 3))
spreads = st.floats(0.05, 2.0)


def make(shape, seed, spread, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(shape, generator=g, dtype=dtype) * s for s in (spread, spread, 1.0))


@given(dims, orders, st.integers(0, 2**16), spreads, st.data())
def test_causality(shape, order, seed, spread, data):
    q, k, v = make(shape, seed, spread)
    T = shape[1]
    i = data.draw(st.integers(0, T - 1))
    o, _ = ea_ops.ea_attention(q, k, v, order=order)
    q2, k2, v2 = (t.clone() for t in (q, k, v))
    for t in (q2, k2, v2):
        t[:, i + 1:] = torch.randn_like(t[:, i + 1:]) * 3
    o2, _ = ea_ops.ea_attention(q2, k2, v2, order=order)
    # A chunk's prefix sums share one stabilising reference (the chunk's smallest y^2), so later keys may
    # move earlier outputs by rounding (1e-16 here), never by more: a causality bug moves them by O(1).
    assert rel_err(o2[:, : i + 1], o[:, : i + 1]) < 1e-12


@given(dims, orders, st.integers(0, 2**16), st.floats(0.05, 3.0), st.booleans())
def test_convexity_even_orders(shape, order, seed, spread, causal):
    q, k, v = make(shape, seed, spread)
    o, _ = ea_ops.ea_attention(q, k, v, order=order, causal=causal)
    if causal:
        lo, hi = v.cummin(1).values, v.cummax(1).values
    else:
        lo, hi = v.amin(1, keepdim=True), v.amax(1, keepdim=True)
    slack = 1e-9 * (1 + v.abs().max())
    assert (o >= lo - slack).all() and (o <= hi + slack).all()


@given(dims, orders, st.integers(0, 2**16), spreads, st.data())
def test_parallel_equals_recurrent_equals_split(shape, order, seed, spread, data):
    q, k, v = make(shape, seed, spread)
    T = shape[1]
    o, final = ea_ops.ea_attention(q, k, v, order=order, output_final_state=True)
    # recurrent, token by token
    state = None
    steps = []
    for i in range(T):
        o_i, state = ea_ops.ea_recurrent_step(q[:, i], k[:, i], v[:, i], state, order=order)
        steps.append(o_i)
    assert rel_err(torch.stack(steps, 1), o) < 1e-12
    for a, b in zip((state.S, state.Z, state.m), (final.S, final.Z, final.m)):
        assert rel_err(a, b) < 1e-12
    # split at a random point, state handed off
    cut = data.draw(st.integers(0, T))
    o1, s1 = ea_ops.ea_attention(q[:, :cut], k[:, :cut], v[:, :cut], order=order, output_final_state=True)
    o2, s2 = ea_ops.ea_attention(q[:, cut:], k[:, cut:], v[:, cut:], order=order, initial_state=s1,
                                 output_final_state=True)
    assert rel_err(torch.cat([o1, o2], 1), o) < 1e-12
    assert rel_err(s2.S, final.S) < 1e-12 and rel_err(s2.Z, final.Z) < 1e-12


@given(st.lists(st.integers(0, 12), min_size=1, max_size=4), orders, st.integers(0, 2**16), st.booleans(),
       st.booleans())
def test_cu_seqlens_equals_separate_calls(lengths, order, seed, causal, with_state):
    T = sum(lengths)
    q, k, v = make((1, T, 2, 3), seed, 0.8)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    init = None
    if causal and with_state:
        init = ea_ops.ea_attention(*make((len(lengths), 5, 2, 3), seed + 1, 0.8), order=order,
                                   output_final_state=True)[1]
    o, fin = ea_ops.ea_attention(q, k, v, order=order, causal=causal, cu_seqlens=cu, initial_state=init,
                                 output_final_state=causal)
    for n, (b, e) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        st_n = None if init is None else ea_ops.EAState(init.S[n:n + 1], init.Z[n:n + 1], init.m[n:n + 1])
        o_n, f_n = ea_ops.ea_attention(q[:, b:e], k[:, b:e], v[:, b:e], order=order, causal=causal,
                                       initial_state=st_n, output_final_state=causal)
        assert torch.allclose(o[:, b:e], o_n, rtol=1e-12, atol=1e-14)
        if causal:
            assert torch.allclose(fin.S[n:n + 1], f_n.S, rtol=1e-12, atol=1e-14)


@given(dims, orders, st.integers(0, 2**16), st.floats(0.01, 10.0), st.booleans())
def test_scale_equals_prescaling(shape, order, seed, scale, causal):
    q, k, v = make(shape, seed, 0.5)
    o, _ = ea_ops.ea_attention(q, k, v, order=order, causal=causal, scale=scale)
    r = math.sqrt(scale)
    o2, _ = ea_ops.ea_attention(q * r, k * r, v, order=order, causal=causal)
    assert rel_err(o, o2) < 1e-12
    e = ea_ops.ea_attention_exact(q, k, v, causal=causal, scale=scale)
    e2 = ea_ops.ea_attention_exact(q * r, k * r, v, causal=causal)
    assert rel_err(e, e2) < 1e-12


@given(dims, st.integers(0, 2**16), st.floats(-30.0, 30.0), st.booleans())
def test_exact_shift_invariance(shape, seed, shift, causal):
    q, k, v = make(shape, seed, 1.0)
    o = ea_ops.ea_attention_exact(q, k, v, causal=causal)
    o2 = ea_ops.ea_attention_exact(q + shift, k + shift, v, causal=causal)
    assert rel_err(o2, o) < 1e-9
