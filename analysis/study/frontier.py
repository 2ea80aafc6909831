"""Part 1: spikiness against accuracy. Per channel scale ``s``, how peaked exact EA's causal weights are (peak
weight, normalised entropy, as ``analysis.spikiness`` measures them) and how far EA-t's output is from exact EA's,
per order: the frontier a user chooses on (spiky enough to recall, accurate enough to trust)."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..spikiness import distributions, entropy_and_peak

MIN_KEYS = 8


def frontier(scales: tuple[float, ...], orders: tuple[int, ...], *, seq_len: int = 128, channels: int = 64,
             seed: int = 0) -> list[dict[str, Any]]:
    """One row per scale. Inputs: ``q, k, v ~ N(0, 1)``, ``[channels, seq_len]`` rows, float64; the output error
    of EA-t is ``|o_t - o| / (max v - min v)`` over queries with at least ``MIN_KEYS`` keys (max and RMS)."""
    if seq_len < MIN_KEYS:
        raise ValueError(f"seq_len must be >= {MIN_KEYS}, got {seq_len}")
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(channels, seq_len, generator=g, dtype=torch.float64) for _ in range(3))
    spread = v.amax(1, keepdim=True) - v.amin(1, keepdim=True)
    keep = torch.arange(seq_len) >= MIN_KEYS - 1
    rows = []
    for s in scales:
        x, y = q * math.sqrt(s), k * math.sqrt(s)
        p = distributions(x, y, "exact")
        H, peak = entropy_and_peak(p, MIN_KEYS)
        H_lin, peak_lin = entropy_and_peak(distributions(x, y, "linear"), MIN_KEYS)
        o = (p @ v[:, :, None])[..., 0]
        row: dict[str, Any] = {"scale": s, "exact_peak_mean": float(peak.mean()),
                               "exact_peak_p90": float(torch.quantile(peak, 0.9)),
                               "exact_entropy_mean": float(H.mean()), "linear_entropy_mean": float(H_lin.mean()),
                               "linear_peak_mean": float(peak_lin.mean()), "errors": {}}
        for t in orders:
            o_t = (distributions(x, y, f"ea-{t}") @ v[:, :, None])[..., 0]
            err = ((o_t - o).abs() / spread)[:, keep]
            row["errors"][str(t)] = {"max": float(err.max()), "rms": float(err.square().mean().sqrt())}
        rows.append(row)
    return rows


def smallest_order(row: dict[str, Any], tol: float) -> int | None:
    """The smallest order of the row whose max error is <= ``tol`` (None: none is)."""
    ok = [int(t) for t, e in row["errors"].items() if e["max"] <= tol]
    return min(ok) if ok else None
