"""The TVM backend under hostile input (issue 10): strided tensors, second derivatives, the step's autograd,
zero-size shapes, the int32 limit, non-finite inputs and large keys. Outputs are NaN-poisoned throughout."""

from __future__ import annotations

import pytest
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
