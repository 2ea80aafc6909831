"""What the tests and the bench share to judge a kernel: one relative error (and no test framework import).

``rel_err(a, ref)`` is the max-norm relative error ``max|a - ref| / max|ref|`` in float64. It is ``inf`` when
``a`` has a non-finite value where ``ref`` is finite, or another shape, so a NaN-poisoned, unwritten output
never passes a tolerance; entries where ``ref`` is infinite (a state's ``m`` before any key) must match.
"""

from __future__ import annotations

import torch


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """Max-norm relative error of ``a`` against ``ref`` (``inf`` for a wrong shape or a non-finite ``a``)."""
    if a.shape != ref.shape:
        return float("inf")
    a, ref = a.detach().double(), ref.detach().double()
    inf = torch.isinf(ref)
    if bool(inf.any()):
        if not bool((a[inf] == ref[inf]).all()):
            return float("inf")
        a, ref = a[~inf], ref[~inf]
    if a.numel() == 0:
        return 0.0
    if not bool(torch.isfinite(a).all()):
        return float("inf")
    return ((a - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()
