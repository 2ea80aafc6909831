"""EA's properties (tests/ea_ops/properties.py, the same checks the torch and TVM backends pass) on
``backend="triton"`` under the interpreter, for every forced configuration: the plain scan, and chunked
with chunks of 5 (and 8) rows (so short sequences cross chunk boundaries, where the per-chunk sums,
the prefix over chunk states and the stabiliser are combined). Few, small examples: the interpreter is slow.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ea_ops.backends import common
from ea_ops.backends.triton import configs
from tests.ea_ops import properties as P
from tests.ea_ops.triton_interp.common import CONFIGS

FEW = settings(max_examples=4)
# The plain scan, and chunks of 5 rows with two warps (partial last chunks, masked lanes); the NaN property
# also runs chunks of 8 (a chunk's shared stabiliser is where a NaN could leak backwards).
SOME = ["scan", "chunk5w2"]


@pytest.fixture(autouse=True)
def _poison():
    with common.poison_outputs():
        yield


@st.composite
def problems(draw):
    T = draw(st.integers(1, 20))
    q, k, v = P.make((draw(st.integers(1, 2)), T, 2, 4), draw(st.integers(0, 2**16)),
                     draw(st.floats(0.05, 0.75)), torch.float32)
    return q, k, v, draw(st.sampled_from([2, 6]))


@pytest.mark.parametrize("cfg", SOME)
def test_matches_the_float64_formula(cfg):
    @FEW
    @given(problems(), st.booleans())
    def run(prob, causal):
        q, k, v, order = prob
        with configs.forced(CONFIGS[cfg]):
            P.check_matches_naive("triton", q, k, v, order=order, causal=causal)

    run()


@pytest.mark.parametrize("cfg", [*SOME, "chunk8"])
def test_a_non_finite_input_stays_in_its_channel_and_after_its_position(cfg):
    @settings(max_examples=8)
    @given(problems(), st.booleans(), st.integers(0, 2), st.sampled_from([float("nan"), float("inf"), -float("inf")]),
           st.data())
    def run(prob, causal, which, value, data):
        q, k, v, order = prob
        B, T, H, D = q.shape
        pos = data.draw(st.integers(0, T - 1))
        chan = (data.draw(st.integers(0, B - 1)), data.draw(st.integers(0, H - 1)), data.draw(st.integers(0, D - 1)))
        with configs.forced(CONFIGS[cfg]):
            P.check_non_finite_input_stays_causal("triton", q, k, v, order=order, causal=causal, which=which,
                                                  pos=pos, chan=chan, value=value)

    run()


@pytest.mark.parametrize("cfg", SOME)
def test_parallel_equals_recurrent_equals_split(cfg):
    @FEW
    @given(problems(), st.data())
    def run(prob, data):
        q, k, v, order = prob
        cut = data.draw(st.integers(0, q.shape[1]))
        with configs.forced(CONFIGS[cfg]):
            P.check_parallel_equals_recurrent_equals_split("triton", q, k, v, order=order, cut=cut)

    run()


@pytest.mark.parametrize("cfg", SOME)
def test_cu_seqlens_equals_separate_calls(cfg):
    @FEW
    @given(st.lists(st.integers(0, 9), min_size=1, max_size=3), st.integers(0, 2**16), st.booleans(),
           st.booleans())
    def run(lengths, seed, causal, with_state):
        q, k, v = P.make((1, sum(lengths), 2, 4), seed, 0.6, torch.float32)
        init = None
        if causal and with_state:
            init = P.attention("torch", *P.make((len(lengths), 5, 2, 4), seed + 1, 0.6, torch.float32),
                               order=2, output_final_state=True)[1]
        with configs.forced(CONFIGS[cfg]):
            P.check_cu_seqlens_equals_separate_calls("triton", q, k, v, lengths, order=2, causal=causal,
                                                     init=init)

    run()
