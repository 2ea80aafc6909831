"""The TVM backend under hostile input (issue 10): strided tensors, second derivatives, the step's autograd,
zero-size shapes, the int32 limit, non-finite inputs and large keys. Outputs are NaN-poisoned throughout."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given

pytest.importorskip("tvm")

import ea_ops  # noqa: E402
from ea_ops import dispatch  # noqa: E402
from ea_ops.backends import common  # noqa: E402
from ea_ops.backends.tvm import backend, ops  # noqa: E402
from ea_ops.errors import BackendUnavailableError  # noqa: E402
from tests.ea_ops import hostile as HX  # noqa: E402

pytestmark = pytest.mark.tvm


@pytest.fixture(autouse=True, scope="module")
def _poison():
    with common.poison_outputs():
        yield


@given(HX.stride_cases())
def test_strided_inputs_states_and_gradients_give_the_contiguous_answer(case):
    """Transposed, permuted, step-sliced, offset and stride-0 q, k, v, upstream gradient and state (S, Z, m),
    through the forward, the backward and the recurrent step: bit for bit the answer on contiguous copies."""
    HX.check_strided_equals_contiguous("tvm", case)


@pytest.mark.parametrize("causal", [True, False])
def test_second_derivatives_are_the_torch_backends(causal):
    HX.check_double_backward_matches_torch("tvm", causal)


def test_the_recurrent_step_is_differentiable_and_matches_torch():
    HX.check_step_gradients_match_torch("tvm", range(6))


def test_step_custom_op_passes_opcheck():
    st = HX.true_state(2, 1, 3, 2, seed=50)
    q, k, v = (torch.randn(2, 1, 3, generator=torch.Generator().manual_seed(i)) for i in range(3))
    torch.library.opcheck(ops.step_op, (q.requires_grad_(), k.requires_grad_(), v, st.S, st.Z, st.m, 2, 0.8))


@pytest.mark.parametrize("want", [True, False])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("shape", HX.ZERO_SHAPES)
def test_zero_size_batch_heads_channels_or_length(shape, causal, want):
    HX.check_zero_size_ops(ops, shape, causal, want_state=want)


def test_a_step_state_over_int32_indexing_is_refused(monkeypatch):
    """The kernels index with int32: a step's state ``[B, H, t+1, D]`` over 2^31 - 1 elements is refused by
    name, although ``q_t`` itself is 7 times smaller."""
    q_t = torch.zeros(()).expand(2**20, 8, 64)  # 2^29 elements in no memory; the order-6 state has 7 * 2^29
    for q in (q_t, q_t[:, None]):
        why = backend.supports(q, causal=True, order=6, needs_grad=False)
        assert why is not None and "state [B, H, order+1, D] = [1048576, 8, 7, 64]" in why
        assert backend.supports(q, causal=True, order=0, needs_grad=False) is None  # the state is q's size
    with pytest.raises(BackendUnavailableError, match="state"):
        dispatch.resolve("tvm", q_t, causal=True, order=6, needs_grad=False)
    # the public step with real tensors, at a lowered limit: 24 elements, an order-6 state of 168
    monkeypatch.setattr(backend, "_MAX_ELEMS", 100)
    gen = torch.Generator().manual_seed(51)
    q, k, v = (torch.randn(2, 3, 4, generator=gen) for _ in range(3))
    with pytest.raises(BackendUnavailableError, match="state"):
        ea_ops.ea_recurrent_step(q, k, v, None, order=6, backend="tvm")
    o, _ = ea_ops.ea_recurrent_step(q, k, v, None, order=2, backend="tvm")  # a state of 72 runs
    assert torch.isfinite(o).all()


@given(HX.poison_cases())
def test_a_non_finite_input_stays_in_its_channel_and_after_its_position(case):
    HX.check_non_finite_stays_put("tvm", case)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("T, cu", HX.LARGE_CASES)
def test_large_keys_finite_and_as_float64(T, cu, causal):
    HX.check_large_keys("tvm", T, cu, causal)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("T, cu", HX.LONG_LARGE_CASES)
def test_large_keys_through_the_block_stabilised_forward(T, cu, causal):
    """H = 4 heads: the default schedule is ``blocked`` (up to 4 threads), whose causal forward is stabilised
    per block of 64 steps; keys near 12 make every block fall back to the per-step form where it must."""
    HX.check_large_keys("tvm", T, cu, causal, H=4, order=6)


@pytest.mark.parametrize("fall", HX.FALLS)
@pytest.mark.parametrize("lengths, at", [((16, 19), 13), ((100, 131), 70)])
def test_the_minimum_falling_inside_a_block(lengths, at, fall):
    """H = 4 (the blocked schedule): row 70 is inside the second block of 64 steps; falls below and above what
    a block's single reference can carry."""
    HX.check_minimum_falls("tvm", lengths, at, fall, H=4)
