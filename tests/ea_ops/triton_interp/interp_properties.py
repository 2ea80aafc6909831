"""EA's properties (analysis.properties.check_implementation, the same checker the torch and TVM backends pass:
tests/ea_ops/properties.py ``check``) on ``backend="triton"`` under the interpreter, for forced
configurations: the plain scan, and chunked with chunks of 5 (and 8) rows (so short sequences cross chunk
boundaries, where the per-chunk sums, the prefix over chunk states and the stabiliser are combined). float32
only (the interpreter truncates to half precisions, tests/ea_ops/triton_interp/common.py). Few, small
examples: the interpreter is slow.
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

FEW = 4
# The plain scan, and chunks of 5 rows with two warps (partial last chunks, masked lanes); the NaN property
# also runs chunks of 8 (a chunk's shared stabiliser is where a NaN could leak backwards).
SOME = ["scan", "chunk5w2"]
SHAPES = {"heads": (2,), "dims": (4,), "max_T": 16, "dtypes": (torch.float32,), "reference": "taylor"}


@pytest.fixture(autouse=True)
def _poison():
    with common.poison_outputs():
        yield


def _check(cfg: str, *, order: int, causal: bool, properties: list[str], examples: int = FEW):
    P.check("triton", order=order, causal=causal, context=lambda: configs.forced(CONFIGS[cfg]),
            properties=properties, max_examples=examples, **SHAPES)


@pytest.mark.parametrize("cfg", SOME)
def test_matches_the_float64_formula(cfg):
    """Agreement and finite up to the radius (order 6, causal); agreement and convexity (order 2, non-causal).
    (v + c and the worst-case bound are checked on the torch and TVM backends: the interpreter is slow.)"""
    _check(cfg, order=6, causal=True, properties=["agreement", "finite"], examples=3)
    _check(cfg, order=2, causal=False, properties=["agreement", "convexity"], examples=3)


@pytest.mark.parametrize("cfg", [*SOME, "chunk8"])
def test_a_non_finite_input_stays_in_its_channel_and_after_its_position(cfg):
    _check(cfg, order=6, causal=True, properties=["non_finite"], examples=5)
    _check(cfg, order=2, causal=False, properties=["non_finite"], examples=3)


@pytest.mark.parametrize(("cfg", "order"), [("scan", 6), ("chunk5w2", 2)])
def test_parallel_equals_recurrent_equals_split(cfg, order):
    """Also causality: later inputs leave earlier outputs as they were."""
    _check(cfg, order=order, causal=True, properties=["recurrent", "causality"], examples=3)


@pytest.mark.parametrize("cfg", SOME)
def test_cu_seqlens_equals_separate_calls(cfg):
    @settings(max_examples=FEW)
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
