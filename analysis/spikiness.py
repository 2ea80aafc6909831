"""How peaked are the per-channel attention distributions of exact EA, EA-t and plain linear attention?

For one channel and query ``i`` (causal), each method gives a distribution ``p_i`` over the keys ``j <= i``:

- exact EA:      ``p_ij ~ exp(-(x_i - y_j)^2)``
- EA-t:          ``p_ij ~ exp(-y_j^2) P_t(2 x_i y_j)`` (even t: positive)
- linear:        ``p_ij ~ phi(x_i) phi(y_j)`` with ``phi = elu + 1`` (Katharopoulos et al.). Within one channel
                 ``phi(x_i)`` cancels, so the distribution cannot depend on the query at all.

Measured per query: the normalised entropy ``H(p_i) / ln(i + 1)`` (1 = uniform) and the peak weight
``max_j p_ij``. Queries with fewer than ``min_keys`` visible keys are skipped (their entropy is trivially
small).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .dense import rows_of


def distributions(x: torch.Tensor, y: torch.Tensor, method: str) -> torch.Tensor:
    """Causal attention distributions ``[N, T, T]`` (float64) of one method on rows ``x, y [N, T]``."""
    x, y = x.double(), y.double()
    N, T = x.shape
    hidden = torch.ones(T, T, dtype=torch.bool).triu(1)
    if method == "exact":
        logw = -((x[:, :, None] - y[:, None, :]) ** 2)
    elif method.startswith("ea-"):
        t = int(method[3:])
        if t % 2:
            raise ValueError(f"EA-t distributions need an even order, got {t}")
        z = 2 * x[:, :, None] * y[:, None, :]
        poly, term = torch.ones_like(z), torch.ones_like(z)
        for n in range(1, t + 1):
            term = term * z / n
            poly = poly + term
        logw = torch.log(poly) - (y * y)[:, None, :]
    elif method == "linear":
        phi = torch.nn.functional.elu(y) + 1
        logw = torch.log(phi)[:, None, :].expand(N, T, T).clone()
    else:
        raise ValueError(f"unknown method {method!r}: 'exact', 'ea-<even t>' or 'linear'")
    logw = logw.masked_fill(hidden, -math.inf)
    return torch.softmax(logw, dim=-1)


def entropy_and_peak(p: torch.Tensor, min_keys: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised entropy and peak weight, flattened over channels and queries ``i >= min_keys - 1``."""
    T = p.shape[-1]
    i = torch.arange(T)
    keep = i >= min_keys - 1
    plogp = torch.where(p > 0, p * torch.log(p), torch.zeros_like(p))
    H = -plogp.sum(-1) / torch.log((i + 1).double()).clamp_min(1e-300)
    peak = p.amax(-1)
    return H[:, keep].flatten(), peak[:, keep].flatten()


def spikiness(q: torch.Tensor, k: torch.Tensor, *, scales: list[float], orders: list[int], min_keys: int = 8
              ) -> dict[str, Any]:
    """Summary per scale and method (mean / p10 / p90 of entropy and peak), plus the raw samples of the
    middle scale for the plots and one example query row. ``q, k: [B, T, H, D]``."""
    methods = ["exact", *[f"ea-{t}" for t in orders], "linear"]
    out: dict[str, Any] = {"scales": scales, "methods": methods, "min_keys": min_keys, "summary": [],
                           "samples": {}, "example": {}}
    mid = scales[len(scales) // 2]
    for s in scales:
        r = math.sqrt(s)
        x, y = rows_of(q) * r, rows_of(k) * r
        for m in methods:
            p = distributions(x, y, m)
            H, peak = entropy_and_peak(p, min_keys)
            out["summary"].append({
                "scale": s, "method": m,
                "entropy_mean": float(H.mean()), "entropy_p10": float(torch.quantile(H, 0.1)),
                "entropy_p90": float(torch.quantile(H, 0.9)),
                "peak_mean": float(peak.mean()), "peak_p10": float(torch.quantile(peak, 0.1)),
                "peak_p90": float(torch.quantile(peak, 0.9)),
            })
            if s == mid:
                out["samples"][m] = {"entropy": H.tolist(), "peak": peak.tolist()}
                out["example"][m] = p[0, -1].tolist()  # channel 0, last query: weights over all keys
        if s == mid:
            out["example_scale"] = s
            out["example_query"] = float(x[0, -1])
            out["example_keys"] = y[0].tolist()
    return out
