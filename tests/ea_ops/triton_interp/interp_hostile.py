"""The Triton kernels under hostile input, in the interpreter (issue 10): strided tensors, second derivatives,
the step's autograd, zero-size shapes, non-finite inputs and large keys. Outputs are NaN-poisoned throughout."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ea_ops.backends import common
from ea_ops.backends.triton import configs, ops
from tests.ea_ops import hostile as HX
from tests.ea_ops.triton_interp import common as C  # fails collection without TRITON_INTERPRET=1


@pytest.fixture(autouse=True, scope="module")
def _poison():
    with common.poison_outputs():
        yield


# Half the profile's examples: each runs several forward/backward passes through the (slow) interpreter.
HALF = settings(max_examples=max(1, settings.default.max_examples // 2))


@HALF
@given(HX.stride_cases())
def test_strided_inputs_states_and_gradients_give_the_contiguous_answer(case):
    """Transposed, permuted, step-sliced, offset and stride-0 q, k, v, upstream gradient and state (S, Z, m),
    through the forward, the backward and the recurrent step: bit for bit the answer on contiguous copies."""
    HX.check_strided_equals_contiguous("triton", case)


@pytest.mark.parametrize("causal", [True, False])
def test_second_derivatives_are_the_torch_backends(causal):
    HX.check_double_backward_matches_torch("triton", causal)


def test_the_recurrent_step_is_differentiable_and_matches_torch():
    HX.check_step_gradients_match_torch("triton", range(2))


def test_step_custom_op_passes_opcheck():
    st = HX.true_state(2, 1, 3, 2, seed=50)
    q, k, v = (torch.randn(2, 1, 3, generator=torch.Generator().manual_seed(i)) for i in range(3))
    torch.library.opcheck(ops.step_op, (q.requires_grad_(), k.requires_grad_(), v, st.S, st.Z, st.m, 2, 0.8))


@pytest.mark.parametrize("want", [True, False])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("shape", HX.ZERO_SHAPES)
def test_zero_size_batch_heads_channels_or_length(shape, causal, want):
    HX.check_zero_size_ops(ops, shape, causal, want_state=want)


@HALF
@given(HX.poison_cases(max_T=6), st.sampled_from(sorted(C.CONFIGS)))  # 6 rows: chunks 1, 5 and 8 cut them
def test_a_non_finite_input_stays_in_its_channel_and_after_its_position(case, cfg):
    """On every configuration: the plain scan, and chunked ones whose chunk states could carry a NaN back."""
    with configs.forced(C.CONFIGS[cfg]):
        HX.check_non_finite_stays_put("triton", case)


# chunk1 at T = 37 would be 37 one-row items, the tails T = 1, 3, 5 already give it (and 7 s of interpreter)
LARGE = [(T, cu, cfg) for T, cu in HX.LARGE_CASES for cfg in sorted(C.CONFIGS) if (T, cfg) != (37, "chunk1")]


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("T, cu, cfg", LARGE)
def test_large_keys_finite_and_as_float64(T, cu, cfg, causal):
    """Rows past the end of a work item (T = 1, 3, 5, 37 and varlen tails against 4-row blocks and the chunk
    lengths) must not turn exp(m) = inf into NaN in the state."""
    with configs.forced(C.CONFIGS[cfg]):
        HX.check_large_keys("triton", T, cu, causal)


# Row 13 is the second row of a block of the block form (rows 12..15, after the exact first block; with chunks
# of 8, the second block of chunk 1); row 70 one of a later block, in the plain scan only (16 s a case here).
FALL_CASES = ([("scan", (100, 131), 70, fall) for fall in (15.0, 300.0)]
              + [(cfg, (16, 19), 13, fall) for cfg in ("scan", "chunk8") for fall in HX.FALLS])


@pytest.mark.parametrize("cfg, lengths, at, fall", FALL_CASES)
def test_the_minimum_falling_inside_a_block(cfg, lengths, at, fall):
    """The forward's block form scales the rows before a fall by exp(-fall): up to DROP_MAX (16) it answers;
    past it the program rescans exactly (without that, a fall of 300 leaves those rows 0 / 0: NaN)."""
    with configs.forced(C.CONFIGS[cfg]):
        HX.check_minimum_falls("triton", lengths, at, fall)
