"""EA-t without stabilisation: what the running-minimum rescaling and float32 accumulation buy.

The naive causal kernel keeps the prefix sums ``S_n(i) = sum_{j<=i} exp(-y_j^2) f_n(y_j) v_j`` and
``Z_n(i)`` (no ``exp(m)`` rescaling) and evaluates ``o_i = sum_n f_n(x_i) S_n(i) / sum_n f_n(x_i) Z_n(i)``.
Every operation here rounds to ``acc_dtype`` (by default the dtype under test) one step at a time: torch's
own ``cumsum``/``sum`` on half dtypes accumulate in float32 internally, which would hide the very effect
measured (a float16 sum of terms <= 1 stalls at 2048, a bfloat16 one at 256).
"""

from __future__ import annotations

import math

import torch

from ea_ops.features import features


def unstabilised_rows(x: torch.Tensor, y: torch.Tensor, v: torch.Tensor, order: int,
                      acc_dtype: torch.dtype) -> torch.Tensor:
    """Causal EA-t on rows ``[N, T]`` (``x, y`` already scaled), every step rounded to ``acc_dtype``."""
    x, y, v = x.to(acc_dtype), y.to(acc_dtype), v.to(acc_dtype)
    N, T = x.shape
    kf = features(y, order) * torch.exp(-(y * y))[..., None]  # [N, T, t+1], underflows for large |y|
    kfv = kf * v[..., None]
    S = torch.zeros(N, order + 1, dtype=acc_dtype)
    Z = torch.zeros(N, order + 1, dtype=acc_dtype)
    S_all = torch.empty(N, T, order + 1, dtype=acc_dtype)
    Z_all = torch.empty(N, T, order + 1, dtype=acc_dtype)
    for i in range(T):
        S = S + kfv[:, i]
        Z = Z + kf[:, i]
        S_all[:, i] = S
        Z_all[:, i] = Z
    qf = features(x, order)  # [N, T, t+1]
    num = torch.zeros(N, T, dtype=acc_dtype)
    den = torch.zeros(N, T, dtype=acc_dtype)
    for n in range(order + 1):  # term by term: a torch .sum() would accumulate half dtypes in float32
        num = num + qf[..., n] * S_all[..., n]
        den = den + qf[..., n] * Z_all[..., n]
    return num / den


def unstabilised_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, order: int, scale: float = 1.0,
                           acc_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Naive causal EA-t ``[B, T, H, D] -> [B, T, H, D]`` in ``acc_dtype`` (default: ``q.dtype``)."""
    B, T, H, D = q.shape
    acc = acc_dtype or q.dtype
    r = math.sqrt(scale)

    def rows(t):
        return t.permute(0, 2, 3, 1).reshape(B * H * D, T).to(acc)

    o = unstabilised_rows(rows(q) * r, rows(k) * r, rows(v), order, acc)
    return o.reshape(B, H, D, T).permute(0, 3, 1, 2).to(q.dtype)
