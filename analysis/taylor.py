"""The Taylor polynomial ``P_t`` and the weight ratio ``r_t`` in float64, vectorised (torch).

``P_t(z) = sum_{n<=t} z^n / n!`` and ``r_t(z) = P_t(z) e^{-z}``: the factor by which EA-t multiplies the
exact weight of a key (``exp(-(x-y)^2) r_t(2xy)`` is the EA-t weight). For ``z >= 0``,
``r_t(z) = Q(t+1, z)``, the regularised upper incomplete gamma function.

Accuracy: evaluating ``P_t(z)`` for ``z < 0`` sums alternating terms, so float64 loses a factor
``K_t(z) = P_t(|z|) / |P_t(z)|`` (at most about 69 for t = 6, 2.1e4 for t = 16, 1.8e8 for t = 32; see
:func:`cancellation`). Where ``r_t`` is close to 1 the tail ``sum_{n>t} z^n / n!`` is summed directly so
that tiny differences ``1 - r_t`` (and with them tiny error bounds) keep their relative accuracy.
"""

from __future__ import annotations

import math

import torch

_TAIL_TERMS = 120  # the tail is only used where |z| < ~t + 8; 120 terms reach below 1e-17 of the first


def _as64(z) -> torch.Tensor:
    return torch.as_tensor(z, dtype=torch.float64)


def taylor_poly(z, order: int) -> torch.Tensor:
    """``P_t(z)`` by Horner's rule, float64, any shape."""
    z = _as64(z)
    p = torch.ones_like(z)
    for n in range(order, 0, -1):
        p = 1 + p * z / n
    return p


def taylor_tail(z, order: int, terms: int = _TAIL_TERMS) -> torch.Tensor:
    """``e^{-z} sum_{n>t} z^n / n! = 1 - r_t(z)``, summed term by term in float64.

    Accurate where the terms do not grow far beyond the result, i.e. ``|z|`` up to about ``t + 8``.
    The first term is formed in log space so that ``z^{t+1} / (t+1)!`` never overflows.
    """
    z = _as64(z)
    n0 = order + 1
    az = z.abs()
    with torch.no_grad():
        log_first = n0 * torch.log(az.clamp_min(1e-300)) - math.lgamma(n0 + 1) - z
    sign = torch.where(z < 0, -1.0 if n0 % 2 else 1.0, 1.0).to(torch.float64)
    term = torch.where(az > 0, sign * torch.exp(log_first), torch.zeros_like(z))
    total = term.clone()
    for n in range(n0 + 1, n0 + terms):
        term = term * z / n
        total = total + term
        # stop once every remaining term is below 1e-20 of its sum (terms decay faster than 1/n! from here)
        if (n - n0) % 8 == 0 and n > az.max() and bool((term.abs() <= 1e-20 * total.abs()).all()):
            break
    return total


def log_r(z, order: int) -> torch.Tensor:
    """``ln r_t(z) = ln P_t(z) - z`` for even ``t`` (``P_t > 0``); ``-inf``/``nan`` where ``P_t(z) <= 0``.

    Uses ``log1p(-tail)`` where ``r_t`` is within a factor 2 of 1 (small ``|z|``), else ``ln P_t - z``.
    """
    z = _as64(z)
    p = taylor_poly(z, order)
    direct = torch.log(p) - z
    near_one = direct.abs() < math.log(2.0)
    if bool(near_one.any()):
        zz = torch.where(near_one, z, torch.zeros_like(z))
        tail = taylor_tail(zz, order)
        direct = torch.where(near_one, torch.log1p(-tail), direct)
    return direct


def r_ratio(z, order: int) -> torch.Tensor:
    """``r_t(z) = P_t(z) e^{-z}`` (any order, sign kept for odd orders)."""
    z = _as64(z)
    p = taylor_poly(z, order)
    out = p * torch.exp(-z)
    near_one = (out - 1).abs() < 0.5
    if bool(near_one.any()):
        zz = torch.where(near_one, z, torch.zeros_like(z))
        out = torch.where(near_one, 1 - taylor_tail(zz, order), out)
    return out


def cancellation(order: int, zmax: float, points: int = 4001) -> float:
    """``K_t(Z) = max_{|z|<=Z} P_t(|z|) / |P_t(z)|``: the factor by which summing the Taylor terms of
    ``exp(2xy)`` (as every kernel does, through the features) amplifies rounding, for ``|2xy| <= Z``."""
    if zmax <= 0:
        return 1.0
    z = torch.linspace(0.0, float(zmax), points, dtype=torch.float64)
    ratio = taylor_poly(z, order) / taylor_poly(-z, order).abs()
    return float(ratio.max())


def min_taylor_even(order: int) -> tuple[float, float]:
    """``(z*, P_t(z*))``: the global minimum of ``P_t`` for even ``t >= 2`` (float64).

    ``P_t' = P_{t-1}``, which has exactly one real root (odd degree), so ``z*`` is that root and
    ``P_t(z*) = z*^t / t!``. Found by bisection on ``P_{t-1}`` over ``[-t-1, 0]``.
    """
    if order < 2 or order % 2:
        raise ValueError(f"order must be an even int >= 2, got {order}")
    lo, hi = -float(order) - 1.0, 0.0  # P_{t-1}(-t-1) < 0 < P_{t-1}(0) = 1
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if float(taylor_poly(mid, order - 1)) < 0:
            lo = mid
        else:
            hi = mid
    z = 0.5 * (lo + hi)
    return z, float(taylor_poly(z, order))
