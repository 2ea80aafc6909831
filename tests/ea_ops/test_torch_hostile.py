"""The torch backend under the hostile layouts the compiled backends are tested with (tests/ea_ops/hostile.py):
strided inputs, states and upstream gradients give bit for bit the contiguous answer, through the forward,
the backward and the recurrent step; its chunk length is forced small so the layouts cross chunk boundaries."""

from hypothesis import given

from tests.ea_ops import hostile as HX
from tests.ea_ops.properties import torch_chunks


@given(HX.stride_cases())
def test_strided_inputs_states_and_gradients_give_the_contiguous_answer(case):
    with torch_chunks(3):
        HX.check_strided_equals_contiguous("torch", case)
