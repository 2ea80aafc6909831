"""Exact EA, ``o_i = sum_j exp(-s (q_i - k_j)^2) v_j / sum_j exp(-s (q_i - k_j)^2)``: the O(T^2) reference."""

from __future__ import annotations

import torch


def exact_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, scale: float,
                    block: int = 256) -> torch.Tensor:
    """``[B, T, H, D] -> [B, T, H, D]``, computed in float32 (float64 for float64 inputs).

    Each row's logits are shifted by their maximum (softmax style), so far-apart q and k never give 0/0.
    Queries go in blocks, so memory is O(block * T * B * H * D).
    """
    B, T, H, D = q.shape
    cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
    qq = q.to(cdt).permute(0, 2, 3, 1)  # [B, H, D, T]
    kk = k.to(cdt).permute(0, 2, 3, 1)
    vv = v.to(cdt).permute(0, 2, 3, 1)
    out = torch.empty(B, H, D, T, dtype=cdt, device=q.device)
    cols = torch.arange(T, device=q.device)
    for s in range(0, T, block):
        qi = qq[..., s:s + block]
        logits = -scale * (qi[..., :, None] - kk[..., None, :]) ** 2  # [B, H, D, bi, T]
        if causal:
            rows = torch.arange(s, s + qi.shape[-1], device=q.device)
            later = cols[None, :] > rows[:, None]
            logits = logits.masked_fill(later, float("-inf"))
        w = torch.softmax(logits, dim=-1)
        wv = w * vv[..., None, :]
        if causal:  # select, not 0 * v: a NaN or Inf value at j must not reach the queries before j
            wv = wv.masked_fill(later, 0.0)
        out[..., s:s + block] = wv.sum(-1)
    return out.permute(0, 3, 1, 2).to(q.dtype)
