"""High-precision references in mpmath (the ground truth the float64 code is checked against).

Everything here is slow (pure Python, arbitrary precision) and meant for small inputs: the golden table in
``tests/analysis/golden.json`` is generated from these functions once (:mod:`analysis.golden`) and a slow
test tier recomputes it. The working precision is at least :data:`MIN_DPS` decimal digits and is raised with
the condition number of the sum being evaluated (``exp(2Z)`` for ``|2xy| <= Z``), so the result keeps at
least ~40 correct digits.
"""

from __future__ import annotations

import math

import torch

MIN_DPS = 50


def _mp():
    import mpmath

    return mpmath


def dps_for(zmax: float, base: int = MIN_DPS) -> int:
    """Digits needed when terms as large as ``e^{|z|}`` cancel down to ``e^{-|z|}``: ``base + 2Z/ln 10``."""
    return base + int(math.ceil(2.0 * max(float(zmax), 0.0) / math.log(10.0))) + 5


def mp_taylor(order: int, z):
    """``P_t(z)`` as an mpf (at the caller's precision)."""
    mp = _mp()
    z = mp.mpf(z)
    term = mp.mpf(1)
    total = mp.mpf(1)
    for n in range(1, order + 1):
        term = term * z / n
        total += term
    return total


def mp_r(order: int, z):
    """``r_t(z) = P_t(z) e^{-z}``."""
    mp = _mp()
    return mp_taylor(order, z) * mp.exp(-mp.mpf(z))


def mp_one_minus_r(order: int, z):
    """``1 - r_t(z) = e^{-z} sum_{n>t} z^n / n!``, summed as a series (no cancellation against 1)."""
    mp = _mp()
    z = mp.mpf(z)
    return mp.exp(-z) * mp.nsum(lambda n: z ** int(n) / mp.factorial(int(n)), [order + 1, mp.inf])


def mp_min_taylor(order: int, dps: int = MIN_DPS):
    """``(z*, P_t(z*))`` for even ``t >= 2``: the root of ``P_{t-1}`` (``P_t' = P_{t-1}``) and the value."""
    mp = _mp()
    if order < 2 or order % 2:
        raise ValueError(f"order must be an even int >= 2, got {order}")
    with mp.workdps(dps):
        # P_{t-1} is increasing through its single real root, which lies in (-t-1, 0): bisect then polish.
        z = mp.findroot(lambda s: mp_taylor(order - 1, s), (mp.mpf(-order - 1), mp.mpf(0)), solver="anderson")
        return z, mp_taylor(order, z)


def mp_worst_case_error(order: int, a, b, dps: int = MIN_DPS):
    """``tanh(ln(rho)/4)``, ``rho = max r_t / min r_t`` over ``|z| <= 2ab``; ``inf`` if ``min r_t <= 0``."""
    mp = _mp()
    with mp.workdps(dps_for(2 * float(a) * float(b), dps)):
        Z = 2 * mp.mpf(a) * mp.mpf(b)

        def log_r(z):  # log1p of the series keeps tiny 1 - r_t exact; far out, r_t itself is fine
            return mp.log1p(-mp_one_minus_r(order, z)) if abs(z) < order + 8 else mp.log(mp_r(order, z))

        if order % 2 == 0:  # r_t decreasing: max at -Z, min at +Z
            return mp.tanh((log_r(-Z) - log_r(Z)) / 4)
        # odd: r_t increases up to r_t(0) = 1, then decreases; it is negative far out on the left
        if min(mp_r(order, -Z), mp_r(order, Z)) <= 0:
            return mp.inf
        return mp.tanh(-min(log_r(-Z), log_r(Z)) / 4)


def mp_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, order: int | None, causal: bool = True,
                 scale: float = 1.0, dps: int | None = None) -> torch.Tensor:
    """Exact EA (``order=None``) or EA-t in mpmath, returned as float64 ``[B, T, H, D]``.

    Weights are ``exp(-(x-y)^2)`` (exact) or ``exp(-x^2 - y^2) P_t(2xy)`` (EA-t) with ``x = sqrt(s) q``,
    evaluated literally at ``dps`` digits (default: :func:`dps_for` the largest ``|2xy|``). Small inputs only:
    O(B H D T^2) mpmath operations.
    """
    mp = _mp()
    B, T, H, D = q.shape
    xs, ys, vs = (t.double().permute(0, 2, 3, 1).reshape(-1, T).tolist() for t in (q, k, v))
    zmax = 2.0 * scale * float(q.double().abs().max()) * float(k.double().abs().max()) if q.numel() else 0.0
    out = torch.empty(B * H * D, T, dtype=torch.float64)
    with mp.workdps(dps or dps_for(zmax)):
        rs = mp.sqrt(mp.mpf(scale))
        for c, (xr, yr, vr) in enumerate(zip(xs, ys, vs, strict=True)):
            x = [rs * mp.mpf(e) for e in xr]
            y = [rs * mp.mpf(e) for e in yr]
            vv = [mp.mpf(e) for e in vr]
            for i in range(T):
                keys = range(i + 1) if causal else range(T)
                if order is None:
                    w = [mp.exp(-(x[i] - y[j]) ** 2) for j in keys]
                else:
                    w = [mp.exp(-x[i] ** 2 - y[j] ** 2) * mp_taylor(order, 2 * x[i] * y[j]) for j in keys]
                num = mp.fsum(wj * vv[j] for wj, j in zip(w, keys, strict=True))
                den = mp.fsum(w)
                out[c, i] = float(num / den)
    return out.reshape(B, H, D, T).permute(0, 3, 1, 2).contiguous()
