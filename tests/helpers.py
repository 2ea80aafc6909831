"""Small shared test helpers (imported as ``tests.helpers``)."""

from __future__ import annotations

import torch

from ea_ops.testing import rel_err  # noqa: F401  (one relative error for tests and bench)


def qkv(shape, *, dtype=torch.float64, scale_q=0.7, scale_k=0.7, shift_k=0.0, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(shape, generator=g, dtype=torch.float64) * scale_q
    k = torch.randn(shape, generator=g, dtype=torch.float64) * scale_k + shift_k
    v = torch.randn(shape, generator=g, dtype=torch.float64)
    return tuple(t.to(dtype).requires_grad_(requires_grad) for t in (q, k, v))
