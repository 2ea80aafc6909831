"""Float64 O(T^2) evaluation of exact EA and EA-t on (a sample of) query positions.

This is the "computed exactly" side of every error the suite measures: for each channel (a row ``[T]`` of the
``[N, T]`` layout of :mod:`ea_ops.backends.torch`) and each selected query position ``i`` it forms the weights
of all visible keys directly, pair by pair (no feature factorisation):

    exact EA:  w_ij = exp(-(x_i - y_j)^2 - max_j(...))            (softmax-style shift)
    EA-t:      w_ij = exp(m_i - y_j^2) P_t(2 x_i y_j),  m_i = min_{visible j} y_j^2

(the factor ``exp(-x_i^2)`` cancels in the ratio), so nothing under- or overflows at any channel scale. The
only loss of accuracy is the alternating sum inside ``P_t(z)`` for ``z < 0``: a relative error of about
``1e-16 * K_t`` per weight (``K_t <= 2.1e4`` for t <= 16, 1.8e8 for t = 32; see
:func:`analysis.taylor.cancellation`), checked against mpmath by the golden tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

_BLOCK_ELEMS = 1 << 21  # N * R * T elements per temporary (16 MB in float64)


def rows_of(x: torch.Tensor) -> torch.Tensor:
    """``[B, T, H, D] -> [B*H*D, T]`` float64 (the channel-row layout)."""
    B, T, H, D = x.shape
    return x.double().permute(0, 2, 3, 1).reshape(B * H * D, T)


def sample_positions(T: int, rows: int | None, *, seed: int = 0) -> torch.Tensor:
    """Query positions to evaluate: all ``T`` when ``rows`` is None or >= T, else ``rows`` of them drawn
    without replacement (always including the last position, which sees every key), sorted."""
    if rows is None or rows >= T:
        return torch.arange(T)
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(T - 1, generator=g)[: rows - 1]
    return torch.sort(torch.cat([pick, torch.tensor([T - 1])])).values


@dataclass
class DenseResult:
    """Outputs on the selected positions: ``exact [N, R]``, ``taylor[t] [N, R]``, and optionally the total
    variation ``tv[t] [N, R]`` between the normalised EA-t and exact weights (the worst error over all
    values of spread 1)."""

    positions: torch.Tensor
    exact: torch.Tensor | None
    taylor: dict[int, torch.Tensor] = field(default_factory=dict)
    tv: dict[int, torch.Tensor] = field(default_factory=dict)


def _softmax_rows(logw: torch.Tensor) -> torch.Tensor:
    top = logw.amax(-1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    w = torch.exp(logw - top)
    return w / w.sum(-1, keepdim=True)


def dense_rows(x: torch.Tensor, y: torch.Tensor, v: torch.Tensor | None, *, orders: list[int],
               exact: bool = True, causal: bool = True, positions: torch.Tensor | None = None,
               with_tv: bool = False) -> DenseResult:
    """Exact EA and EA-t for every order in ``orders`` on rows ``x, y, v [N, T]`` (already scaled by
    ``sqrt(s)``), at query ``positions`` ``[R]`` (default: all). ``v=None`` skips the outputs (``tv`` only).

    EA-t weights are formed as ``exp(m_i - y_j^2) P_t(2 x_i y_j)`` with ``m_i`` the smallest visible
    ``y^2``: the key attaining it has weight ``>= min P_t > 0``, every factor ``exp(.) <= 1`` and
    ``P_t(z) <= |z|^t``-ish stays far below float64's range for t <= 32, so the sums neither over- nor
    underflow (keys whose factor underflows carry less than ``e^-700`` of the total).
    """
    x, y = x.double(), y.double()
    N, T = x.shape
    pos = torch.arange(T) if positions is None else positions
    R = pos.numel()
    need_exact = exact or with_tv
    res = DenseResult(pos, x.new_empty(N, R) if (exact and v is not None) else None)
    orders = sorted(set(int(t) for t in orders))
    for t in orders:
        if v is not None:
            res.taylor[t] = x.new_empty(N, R)
        if with_tv:
            res.tv[t] = x.new_empty(N, R)
    if R == 0 or N == 0:
        return res
    vv = None if v is None else v.double()[:, :, None]  # [N, T, 1] for bmm
    keys = torch.arange(T)
    step = max(1, _BLOCK_ELEMS // max(1, N * T))
    y2 = y * y
    if causal:
        m_all = torch.cummin(y2, 1).values  # smallest visible y^2 per query position
    else:
        m_all = y2.amin(1, keepdim=True).expand(N, T)
    for s in range(0, R, step):
        p = pos[s:s + step]
        xi = x[:, p][..., None]  # [N, r, 1]
        hidden = (keys[None, :] > p[:, None]) if causal else None  # [r, T] True = not visible
        p_exact = None
        if need_exact:
            lw = -((xi - y[:, None, :]) ** 2)
            if hidden is not None:
                lw = lw.masked_fill(hidden, -math.inf)
            p_exact = _softmax_rows(lw)
            if res.exact is not None:
                res.exact[:, s:s + step] = torch.bmm(p_exact, vv).squeeze(-1)
        if not orders:
            continue
        damp = torch.exp(m_all[:, p][..., None] - y2[:, None, :])  # [N, r, T], <= 1 on visible keys
        if hidden is not None:
            damp.masked_fill_(hidden, 0.0)
        z = 2 * xi * y[:, None, :]
        term = torch.ones_like(z)
        poly = torch.ones_like(z)
        n = 0
        for t in orders:
            # forward summation of the Taylor terms: the same error as Horner (eps * sum of |terms|)
            while n < t:
                n += 1
                term.mul_(z).div_(n)
                poly.add_(term)
            w = damp * poly
            den = w.sum(-1, keepdim=True)
            if vv is not None:
                res.taylor[t][:, s:s + step] = (torch.bmm(w, vv) / den).squeeze(-1)
            if with_tv:
                res.tv[t][:, s:s + step] = 0.5 * (w / den - p_exact).abs().sum(-1)
    return res


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, order: int | None,
                    causal: bool = True, scale: float = 1.0) -> torch.Tensor:
    """Exact EA (``order=None``) or EA-t in float64 at every position: ``[B, T, H, D] -> [B, T, H, D]``."""
    B, T, H, D = q.shape
    r = math.sqrt(scale)
    res = dense_rows(rows_of(q) * r, rows_of(k) * r, rows_of(v), orders=[] if order is None else [order],
                     exact=order is None, causal=causal)
    o = res.exact if order is None else res.taylor[order]
    return o.reshape(B, H, D, T).permute(0, 3, 1, 2).contiguous()
