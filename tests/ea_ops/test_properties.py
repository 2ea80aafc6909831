"""EA's properties (docs/math.md) on every backend that runs in this process, through the one checker any
implementation runs (``analysis.properties.check_implementation``, via tests/ea_ops/properties.py ``check``).

The torch backend runs with its chunk length forced small (1 to 8), so sequences of up to 40 positions cross
many chunk boundaries, where the state and the stabilising offset are carried, in float64 and (order 6) in
float32, bfloat16 and float16 too; orders 0 to 8, causal and not, scales 0.5, 1 and 2. The TVM backend runs in
float32 at fixed H, D (each new shape is a kernel build) with orders 2 and 6. The references (the naive float64
formula and ``ea_attention_exact``) pass the same checks. Triton runs them under its interpreter
(tests/ea_ops/triton_interp/interp_properties.py). Packed sequences (``cu_seqlens``) are the library's own API
and are checked here against one call per sequence.
"""

import importlib.util

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.ea_ops import properties as P

HAS_TVM = importlib.util.find_spec("tvm") is not None
ALL_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)

# (order, causal, scale, chunk, dtypes): each torch configuration runs every property
TORCH = {
    "order6-causal-chunk2-all-dtypes": (6, True, 1.0, 2, ALL_DTYPES),
    "order8-causal-scale2-chunk5": (8, True, 2.0, 5, (torch.float64,)),
    "order0-causal-chunk1": (0, True, 1.0, 1, (torch.float64,)),
    "order2-noncausal-scale0.5-chunk3": (2, False, 0.5, 3, (torch.float64, torch.float32)),
    "order4-noncausal-scale2-chunk8": (4, False, 2.0, 8, (torch.float64,)),
}


@pytest.mark.parametrize("config", sorted(TORCH))
def test_torch_backend_has_every_property(config):
    order, causal, scale, chunk, dtypes = TORCH[config]
    P.check("torch", order=order, causal=causal, scale=scale, chunk=chunk, dtypes=dtypes, reference="taylor",
            max_T=40)


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 8])
def test_torch_non_finite_inputs_stay_in_their_channel_and_after_their_position(chunk):
    """More NaN/Inf draws per chunk length: a chunk's stabilising reference is where one could leak backwards."""
    for order, causal in ((6, True), (2, False)):
        P.check("torch", order=order, causal=causal, chunk=chunk, dtypes=(torch.float64, torch.float32),
                properties=["non_finite"], max_T=16)


@pytest.mark.skipif(not HAS_TVM, reason="needs the tvm extra")
@pytest.mark.parametrize(("order", "causal", "scale"), [(6, True, 1.0), (2, False, 0.5)])
def test_tvm_backend_has_every_property(order, causal, scale):
    P.check("tvm", order=order, causal=causal, scale=scale, dtypes=(torch.float32,), reference="taylor",
            heads=(2,), dims=(8,))


@pytest.mark.parametrize("causal", [True, False])
def test_exact_ea_has_every_property(causal):
    """``ea_attention_exact`` in float64 and float32, q/k shift invariance included."""
    report = P.check("exact", order=None, causal=causal, dtypes=(torch.float64, torch.float32), max_examples=10)
    assert report["qk_shift"].status == "pass"


@pytest.mark.parametrize("causal", [True, False])
def test_the_naive_formula_has_every_property_but_the_finite_domain(causal):
    """The literal float64 EA-4 (``ea_ops.naive``, no stabiliser) passes every property on the inputs where it
    is representable; the finite-domain property finds where it is not: 0/0 once exp(-k^2) underflows."""
    props = [p for p in P.PROPERTIES if p != "finite"]
    P.check("naive", order=4, causal=causal, dtypes=(torch.float64,), reference="taylor", properties=props,
            max_examples=10)
    fn, _ = P.implementation("naive", order=4, causal=causal)
    finite = P.check_implementation(fn, order=4, causal=causal, dtypes=(torch.float64,), properties=["finite"],
                                    max_examples=10)["finite"]
    assert finite.status == "fail" and 26.7 < max(abs(a) for a in finite.counterexample["values"]["k"]) <= 30


def test_the_checker_runs_every_property_on_a_backend():
    """The configurations above leave no property unchecked on the torch backend."""
    report = P.check("torch", order=6, causal=True, chunk=3, dtypes=(torch.float32,), max_examples=3)
    ran = {r.name for r in report.results if r.status == "pass"}
    assert ran == set(P.PROPERTIES) - {"qk_shift"}


@pytest.mark.parametrize("backend", ["torch", "tvm"])
def test_cu_seqlens_equals_separate_calls(backend):
    if backend == "tvm" and not HAS_TVM:
        pytest.skip("needs the tvm extra")

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
