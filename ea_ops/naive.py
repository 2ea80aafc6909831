"""Naive O(T^2) float64 references, written as literally as docs/math.md states them.

No stabilisation, no chunking: for tests and the analysis suite, on inputs where the literal formula is
representable in float64. Both are differentiable through plain autograd (the gradient reference).
"""

from __future__ import annotations

import math

import torch


def _taylor_poly(z: torch.Tensor, order: int) -> torch.Tensor:
    return sum(z**n / math.factorial(n) for n in range(order + 1))


def naive_weights(q, k, *, order: int | None, causal: bool, scale: float = 1.0) -> torch.Tensor:
    """Unnormalised weights ``[B, H, D, T_i, T_j]`` in float64; ``order=None`` gives exact EA."""
    x = (math.sqrt(scale) * q.double()).permute(0, 2, 3, 1)[..., :, None]
    y = (math.sqrt(scale) * k.double()).permute(0, 2, 3, 1)[..., None, :]
    if order is None:
        w = torch.exp(-((x - y) ** 2))
    else:
        w = torch.exp(-(y**2)) * _taylor_poly(2 * x * y, order)
    if causal:
        w = w.where(_earlier(q.shape[1], w.device), 0.0)
    return w


def _earlier(T: int, device) -> torch.Tensor:
    """``[T, T]`` mask of ``j <= i``. Masks select (``where``): ``0 * NaN`` would leak a later key's NaN."""
    return torch.ones(T, T, dtype=torch.bool, device=device).tril()


def naive_attention(q, k, v, *, order: int | None, causal: bool = True, scale: float = 1.0) -> torch.Tensor:
    """EA-t (or exact EA with ``order=None``) in float64: ``[B, T, H, D] -> [B, T, H, D]``."""
    w = naive_weights(q, k, order=order, causal=causal, scale=scale)
    wv = w * v.double().permute(0, 2, 3, 1)[..., None, :]
    if causal:
        wv = wv.where(_earlier(q.shape[1], w.device), 0.0)
    o = wv.sum(-1) / w.sum(-1)
    return o.permute(0, 3, 1, 2)
