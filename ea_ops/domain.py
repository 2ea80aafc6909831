"""The finite domain: how large ``sqrt(s) |q|`` and ``sqrt(s) |k|`` may be before the stabilised sums overflow.

Every backend accumulates in float32 (float64 for float64 inputs). With ``|x|, |y| <= R`` (``x = sqrt(s) q``,
``y = sqrt(s) k``), ``|v| <= V`` and ``L`` keys, each stored term ``exp(m - y^2) f_n(y)`` is at most
``f_n(R)`` (the stabiliser keeps ``exp(m - y^2) <= 1``), so the largest quantity any kernel forms is the
numerator ``sum_n f_n(x) S_n <= L V P_t(2 R^2)``. ``finite_radius`` is the largest ``R`` for which that, and
``y^2`` itself, stays below the accumulator's largest float by a margin. Beyond it outputs may be Inf or
NaN with no error: checking every input against it would cost a pass over memory and a host sync per call.
Far inside it the Taylor order is the limit, not the range (``analysis`` says which order meets a budget).
"""

from __future__ import annotations

import math

import torch

from .checks import check_order, state_dtype

_MARGIN = 16.0  # rounding and the partial sums of Horner's rule stay below 16x the bound


def _log_taylor(z: float, order: int) -> float:
    """``log P_t(z)`` for ``z >= 0`` without overflow."""
    terms = [n * math.log(z) - math.lgamma(n + 1) if z > 0 else (0.0 if n == 0 else -math.inf)
             for n in range(order + 1)]
    top = max(terms)
    return top + math.log(sum(math.exp(t - top) for t in terms))


def finite_radius(order: int, length: int, *, value_bound: float = 1.0,
                  dtype: torch.dtype = torch.float32) -> float:
    """Largest ``R`` such that ``|sqrt(s) q|, |sqrt(s) k| <= R``, ``|v| <= value_bound`` and at most ``length``
    keys per sequence give finite outputs on every backend, for inputs of ``dtype``."""
    order = check_order(order)
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"length must be an int >= 1, got {length!r}")
    if not (isinstance(value_bound, (int, float)) and math.isfinite(value_bound) and value_bound > 0):
        raise ValueError(f"value_bound must be a finite number > 0, got {value_bound!r}")
    log_max = math.log(torch.finfo(state_dtype(dtype)).max / _MARGIN)
    budget = log_max - math.log(length * max(value_bound, 1.0))
    ok = lambda r: _log_taylor(2 * r * r, order) <= budget
    lo, hi = 1e-6, math.exp(0.5 * log_max)  # y^2 itself must stay finite
    if ok(hi):
        return hi
    if not ok(lo):
        return 0.0
    while hi - lo > 1e-12 * hi:  # bisection in log R
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo
