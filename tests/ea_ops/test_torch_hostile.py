"""The torch backend under the hostile layouts the compiled backends are tested with (tests/ea_ops/hostile.py):
strided inputs, states and upstream gradients give bit for bit the contiguous answer, through the forward,
the backward and the recurrent step; its chunk length is forced small so the layouts cross chunk boundaries.
Large keys (the stabiliser's case) at lengths that leave partial tails."""

import pytest
from hypothesis import given

from tests.ea_ops import hostile as HX
from tests.ea_ops.properties import torch_chunks


@given(HX.stride_cases())
def test_strided_inputs_states_and_gradients_give_the_contiguous_answer(case):
    with torch_chunks(3):
        HX.check_strided_equals_contiguous("torch", case)


@pytest.mark.parametrize("chunk", [None, 2])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("T, cu", HX.LARGE_CASES)
def test_large_keys_finite_and_as_float64(T, cu, causal, chunk):
    """Keys and queries near 11-12 (exp(min y^2) overflows float32) at T = 1, 3, 5, 37 and varlen tails, in
    float32 against float64: outputs, final state, gradients and a decoding step; chunks of 2 rows put a partial
    chunk at the end of every odd length."""
    with torch_chunks(chunk):
        HX.check_large_keys("torch", T, cu, causal)


@pytest.mark.parametrize("fall", HX.FALLS)
def test_the_minimum_falling_inside_a_block(fall):
    HX.check_minimum_falls("torch", (100, 131), 70, fall)
