"""Shared set-up of the interpreter-mode Triton tests (run by tests/ea_ops/test_triton_interp.py).

These modules need ``TRITON_INTERPRET=1`` before Triton is imported, so they run in their own process; run
alone without it they fail at collection rather than pass vacuously.
"""

from __future__ import annotations

import pytest
import torch

from ea_ops.backends.torch import backend as torch_backend
from ea_ops.backends.triton.target import interpreting
from ea_ops.state import EAState

if not interpreting():
    pytest.fail("the triton_interp tests need TRITON_INTERPRET=1 set before triton is imported; run them "
                "through tests/ea_ops/test_triton_interp.py", pytrace=False)

EPS32 = torch.finfo(torch.float32).eps
# Max-norm relative error allowed against the float32 torch reference on the same (rounded) inputs, for
# outputs, states and gradients. float32: both implementations' roundings, measured at most 3.9e-6 (32 eps,
# interp_api's causal gradients; 1.6e-6 in interp_kernels); tolerance 128 eps (4x). Half precisions: one ulp of
# the result (2^-7 bfloat16, 2^-10 float16: the interpreter casts float32 to half precision by truncation, a GPU
# rounds to nearest; measured 5.3e-3 and 3.7e-4) plus the float32 part.
TOL = {torch.float32: 128 * EPS32, torch.float16: 2**-10 + 128 * EPS32, torch.bfloat16: 2**-7 + 128 * EPS32}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# Forced configurations: the plain scan, chunked with several chunks per sequence (and a partial last one),
# chunks of a single row, and two warps (64 channels per program, most of them masked here).
CONFIGS = {
    "scan": {"variant": "scan", "num_warps": 1},
    "chunk8": {"variant": "chunked", "num_warps": 1, "chunk": 8},
    "chunk1": {"variant": "chunked", "num_warps": 1, "chunk": 1},
    "chunk5w2": {"variant": "chunked", "num_warps": 2, "chunk": 5},
}


def inputs(shape, dtype, *, seed=0, scale_qk=0.7, shift_k=0.0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(shape, generator=g) * scale_qk
    k = torch.randn(shape, generator=g) * scale_qk + shift_k
    v = torch.randn(shape, generator=g)
    return tuple(t.to(dtype) for t in (q, k, v))


def random_state(n, H, D, order, *, seed=1, T0=6, shift_k=0.0) -> EAState:
    """A realistic state: the torch backend's state after ``T0`` random tokens."""
    q, k, v = inputs((n, T0, H, D), torch.float32, seed=seed, shift_k=shift_k)
    _, st = torch_backend.attention(q, k, v, order=order, causal=True, scale=1.0, initial_state=None,
                                    output_final_state=True, cu_seqlens=None)
    return st


def ref_forward(q, k, v, *, order, causal, scale, state=None, segments=None, want_grad_of=None):
    """The torch backend in float32 on the same inputs: ``(o, final_state, grads or None)``."""
    qf, kf, vf = (t.float().detach().requires_grad_(want_grad_of is not None) for t in (q, k, v))
    o, st = torch_backend.attention(qf, kf, vf, order=order, causal=causal, scale=scale, initial_state=state,
                                    output_final_state=causal, cu_seqlens=segments)
    grads = None
    if want_grad_of is not None:
        grads = torch.autograd.grad(o, (qf, kf, vf), want_grad_of.float())
    return o.detach(), st, grads


def rel(a, b) -> float:
    a, b = a.double(), b.double()
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.isfinite(a).all(), "non-finite values (an unwritten NaN-poisoned element?)"
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def state_rel(got: tuple, want: EAState) -> float:
    S, Z, m = got
    assert torch.equal(torch.isinf(m), torch.isinf(want.m))
    fin = torch.isfinite(want.m)
    err_m = (m[fin] - want.m[fin]).abs().max().item() / max(1.0, want.m[fin].abs().max().item()) if fin.any() else 0
    return max(rel(S, want.S), rel(Z, want.Z), err_m)
