"""Small shared test helpers (imported as ``tests.helpers``)."""

from __future__ import annotations

import torch


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max-norm relative error of ``a`` against reference ``b`` (floored at 1e-30)."""
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def qkv(shape, *, dtype=torch.float64, scale_q=0.7, scale_k=0.7, shift_k=0.0, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(shape, generator=g, dtype=torch.float64) * scale_q
    k = torch.randn(shape, generator=g, dtype=torch.float64) * scale_k + shift_k
    v = torch.randn(shape, generator=g, dtype=torch.float64)
    return tuple(t.to(dtype).requires_grad_(requires_grad) for t in (q, k, v))
