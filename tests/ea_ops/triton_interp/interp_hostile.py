"""The Triton kernels under hostile input, in the interpreter (issue 10): strided tensors, second derivatives,
the step's autograd, zero-size shapes, non-finite inputs and large keys. Outputs are NaN-poisoned throughout."""

from __future__ import annotations

import pytest
from hypothesis import given

from ea_ops.triton import launch
from tests.ea_ops import hostile as HX
from tests.ea_ops.triton_interp import common as C  # noqa: F401  (fails collection without TRITON_INTERPRET=1)


@pytest.fixture(autouse=True, scope="module")
def _poison():
    with launch.poison_outputs():
        yield


@given(HX.stride_cases())
def test_strided_inputs_states_and_gradients_give_the_contiguous_answer(case):
    """Transposed, permuted, step-sliced, offset and stride-0 q, k, v, upstream gradient and state (S, Z, m),
    through the forward, the backward and the recurrent step: bit for bit the answer on contiguous copies."""
    HX.check_strided_equals_contiguous("triton", case)


@pytest.mark.filterwarnings("ignore:Input #:UserWarning")  # gradgradcheck on float32: it raises first
@pytest.mark.parametrize("causal", [True, False])
def test_second_derivatives_are_refused_clearly(causal):
    HX.check_double_backward_refused("triton", causal)
