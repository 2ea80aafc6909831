"""Hypothesis property tests of the EA contract (docs/math.md) on every backend that runs in this process.

The torch backend runs in float64 with its chunk length forced small (1 to 8), so sequences of up to 60
positions cross many chunk boundaries, where the state and the stabilising offset are carried. The TVM
backend runs in float32 at fixed H, D (each new shape is a kernel build) with orders 2 and 6. Every check
compares against the float64 formulas of ``ea_ops.naive`` or the same backend on clean inputs
(tests/ea_ops/properties.py); Triton runs the same checks under its interpreter
(tests/ea_ops/triton_interp/interp_properties.py).
"""

import importlib.util

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.ea_ops import properties as P

BACKENDS = ["torch", "tvm"]
HAS_TVM = importlib.util.find_spec("tvm") is not None


@st.composite
def problems(draw, backend: str, min_T: int = 1):
    """``(q, k, v, order, chunk)`` for ``backend``: shapes, orders, spreads and a torch chunk length."""
    T = draw(st.integers(min_T, 60))
    spread = draw(st.floats(0.05, 0.75))
    seed = draw(st.integers(0, 2**16))
    if backend == "torch":
        shape = (draw(st.integers(1, 2)), T, draw(st.integers(1, 2)), draw(st.integers(1, 3)))
        order = draw(st.sampled_from([0, 2, 4, 6, 8]))
        chunk = draw(st.sampled_from([1, 2, 3, 5, 8]))
        dtype = torch.float64
    else:
        shape = (draw(st.integers(1, 2)), T, 2, 8)
        order = draw(st.sampled_from([2, 6]))
        chunk = None
        dtype = torch.float32
    q, k, v = P.make(shape, seed, spread, dtype)
    return q, k, v, order, chunk


@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_the_float64_formula(backend):
    _skip(backend)

    @given(problems(backend), st.booleans(), st.sampled_from([0.5, 1.0, 2.0]))
    def run(prob, causal, scale):
        q, k, v, order, chunk = prob
        with P.torch_chunks(chunk):
            P.check_matches_naive(backend, q, k, v, order=order, causal=causal)
            P.check_scale_equals_prescaling(backend, q, k, v, order=order, causal=causal, scale=scale)

    run()


@pytest.mark.parametrize("backend", BACKENDS)
def test_causality(backend):
    _skip(backend)

    @given(problems(backend), st.data())
    def run(prob, data):
        q, k, v, order, chunk = prob
        i = data.draw(st.integers(0, q.shape[1] - 1))
        with P.torch_chunks(chunk):
            P.check_later_inputs_do_not_move_earlier_outputs(backend, q, k, v, order=order, i=i)

    run()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("which", ["q", "k", "v"])
@pytest.mark.parametrize("backend", [*BACKENDS, "naive", "exact"])
def test_a_non_finite_input_stays_in_its_channel_and_after_its_position(backend, which, value):
    _skip(backend)

    @given(problems("torch" if backend in ("naive", "exact") else backend), st.booleans(), st.data())
    def run(prob, causal, data):
        q, k, v, order, chunk = prob
        B, T, H, D = q.shape
        pos = data.draw(st.integers(0, T - 1))
        chan = (data.draw(st.integers(0, B - 1)), data.draw(st.integers(0, H - 1)), data.draw(st.integers(0, D - 1)))
        with P.torch_chunks(chunk):
            P.check_non_finite_input_stays_causal(backend, q, k, v, order=order, causal=causal,
                                                  which="qkv".index(which), pos=pos, chan=chan, value=value)

    run()


@pytest.mark.parametrize("backend", BACKENDS)
def test_parallel_equals_recurrent_equals_split(backend):
    _skip(backend)

    @given(problems(backend), st.data())
    def run(prob, data):
        q, k, v, order, chunk = prob
        cut = data.draw(st.integers(0, q.shape[1]))
        with P.torch_chunks(chunk):
            P.check_parallel_equals_recurrent_equals_split(backend, q, k, v, order=order, cut=cut)

    run()


@pytest.mark.parametrize("backend", BACKENDS)
def test_cu_seqlens_equals_separate_calls(backend):
    _skip(backend)

    @given(st.lists(st.integers(0, 20), min_size=1, max_size=4), st.integers(0, 2**16), st.booleans(),
           st.booleans(), st.sampled_from([1, 3, 8]))
    def run(lengths, seed, causal, with_state, chunk):
        dtype = torch.float64 if backend == "torch" else torch.float32
        order = 4 if backend == "torch" else 2
        T = sum(lengths)
        q, k, v = P.make((1, T, 2, 8), seed, 0.6, dtype)
        init = None
        if causal and with_state:
            init = P.attention(backend, *P.make((len(lengths), 5, 2, 8), seed + 1, 0.6, dtype), order=order,
                               output_final_state=True)[1]
        with P.torch_chunks(chunk if backend == "torch" else None):
            P.check_cu_seqlens_equals_separate_calls(backend, q, k, v, lengths, order=order, causal=causal,
                                                     init=init)

    run()


@pytest.mark.parametrize("backend", BACKENDS)
def test_convexity_even_orders(backend):
    _skip(backend)

    @given(problems(backend), st.booleans())
    def run(prob, causal):
        q, k, v, order, chunk = prob
        with P.torch_chunks(chunk):
            P.check_convex(backend, q, k, v, order=order, causal=causal)

    run()


def _skip(backend: str) -> None:
    if backend == "tvm" and not HAS_TVM:
        pytest.skip("needs the tvm extra")


@given(st.tuples(st.integers(1, 2), st.integers(1, 40), st.integers(1, 2), st.integers(1, 3)),
       st.integers(0, 2**16), st.floats(-30.0, 30.0), st.booleans())
def test_exact_shift_invariance(shape, seed, shift, causal):
    import ea_ops
    from tests.helpers import rel_err

    q, k, v = P.make(shape, seed, 1.0)
    o = ea_ops.ea_attention_exact(q, k, v, causal=causal)
    o2 = ea_ops.ea_attention_exact(q + shift, k + shift, v, causal=causal)
    assert rel_err(o2, o) < 1e-9
