"""The TVM backend under hostile input (issue 10): strided tensors, second derivatives, the step's autograd,
zero-size shapes, the int32 limit, non-finite inputs and large keys. Outputs are NaN-poisoned throughout."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given

pytest.importorskip("tvm")

from ea_ops.tvm import ops  # noqa: E402
from tests.ea_ops import hostile as HX  # noqa: E402

pytestmark = pytest.mark.tvm


@pytest.fixture(autouse=True, scope="module")
def _poison():
    with ops.poison_outputs():
        yield


@given(HX.stride_cases())
def test_strided_inputs_states_and_gradients_give_the_contiguous_answer(case):
    """Transposed, permuted, step-sliced, offset and stride-0 q, k, v, upstream gradient and state (S, Z, m),
    through the forward, the backward and the recurrent step: bit for bit the answer on contiguous copies."""
    HX.check_strided_equals_contiguous("tvm", case)


@pytest.mark.filterwarnings("ignore:Input #:UserWarning")  # gradgradcheck on float32: it raises first
@pytest.mark.parametrize("causal", [True, False])
def test_second_derivatives_are_refused_clearly(causal):
    HX.check_double_backward_refused("tvm", causal)


def test_the_recurrent_step_is_differentiable_and_matches_torch():
    HX.check_step_gradients_match_torch("tvm", range(6))


def test_step_custom_op_passes_opcheck():
    st = HX.true_state(2, 1, 3, 2, seed=50)
    q, k, v = (torch.randn(2, 1, 3, generator=torch.Generator().manual_seed(i)) for i in range(3))
    torch.library.opcheck(ops.step_op, (q.requires_grad_(), k.requires_grad_(), v, st.S, st.Z, st.m, 2, 0.8))


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("shape", HX.ZERO_SHAPES)
def test_zero_size_batch_heads_channels_or_length(shape, causal):
    HX.check_zero_size_ops(ops, shape, causal)
