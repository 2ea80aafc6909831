"""Error bounds of EA-t against exact EA, and the realised error (docs/math.md section 6).

EA-t multiplies the exact weight of key ``j`` at query ``i`` by ``r_t(2 x_i y_j)``, ``r_t(z) = P_t(z) e^{-z}``.
If every factor lies in ``[c_lo, c_hi]`` (``c_lo > 0``) with ``rho = c_hi / c_lo``, a weighted mean of values
moves by at most ``tanh(ln(rho) / 4) * (max v - min v)``, and two keys with suitable weights reach it.

- :func:`worst_case_error` -- over every input with ``|x| <= a``, ``|y| <= b`` (``|2xy| <= Z = 2ab``);
- :func:`posterior_bound` -- per query position, from the keys it actually sees: O(T) per channel, since
  for even ``t`` ``r_t`` is monotone and its extremes come from the smallest and largest visible key;
- :func:`realised_error` -- the error itself, against exact EA in float64, O(T^2) on sampled positions.

All three are in the units of ``v``; :func:`worst_case_error` is relative to the spread of ``v``.
"""

from __future__ import annotations

import math

import torch

from .dense import dense_rows, rows_of, sample_positions
from .taylor import log_r, r_ratio


def mean_shift_bound(log_rho) -> torch.Tensor:
    """``tanh(ln(rho) / 4)``: the largest move of a weighted mean (relative to the values' spread) when
    its positive weights are multiplied by positive factors whose max/min ratio is ``rho``."""
    lr = torch.as_tensor(log_rho, dtype=torch.float64)
    return torch.tanh(lr / 4)


def _log_factor_range(z_lo: torch.Tensor, z_hi: torch.Tensor, order: int) -> torch.Tensor:
    """``ln(max r_t / min r_t)`` over ``z in [z_lo, z_hi]``; ``inf`` when ``r_t`` reaches 0 or below."""
    if order % 2 == 0:  # r_t strictly decreasing: max at z_lo, min at z_hi
        return log_r(z_lo, order) - log_r(z_hi, order)
    # odd t: r_t increases up to r_t(0) = 1, then decreases; it is negative far out on the left
    lo_ok = r_ratio(z_lo, order) > 0
    hi_ok = r_ratio(z_hi, order) > 0
    l_lo = log_r(torch.where(lo_ok, z_lo, torch.zeros_like(z_lo)), order)
    l_hi = log_r(torch.where(hi_ok, z_hi, torch.zeros_like(z_hi)), order)
    top = torch.where((z_lo <= 0) & (z_hi >= 0), torch.zeros_like(l_lo), torch.maximum(l_lo, l_hi))
    out = top - torch.minimum(l_lo, l_hi)
    return torch.where(lo_ok & hi_ok, out, torch.full_like(out, math.inf))


def worst_case_error(order: int, a: float, b: float) -> float:
    """Proven bound on ``|EA-t - EA| / (max v - min v)`` over every input with ``|x| <= a``, ``|y| <= b``
    (``x = sqrt(scale) q``, ``y = sqrt(scale) k``). ``inf`` for odd orders whose weights can reach zero."""
    if isinstance(order, bool) or not isinstance(order, int) or order < 0:
        raise ValueError(f"order must be a non-negative int, got {order!r}")
    a, b = float(a), float(b)
    if not (a >= 0 and b >= 0 and math.isfinite(a) and math.isfinite(b)):
        raise ValueError(f"a and b must be finite and >= 0, got a={a}, b={b}")
    Z = torch.tensor(2.0 * a * b, dtype=torch.float64)
    lr = _log_factor_range(-Z, Z, order)
    if not math.isfinite(float(lr)):
        return math.inf
    return float(mean_shift_bound(lr))


def posterior_factor_rows(x: torch.Tensor, y: torch.Tensor, order: int, *, causal: bool = True) -> torch.Tensor:
    """``tanh(ln(rho_i)/4)`` per position ``[N, T]`` (rows ``x, y`` already scaled): the a-posteriori bound
    relative to the spread of the visible values; ``inf`` where odd-order factors reach zero."""
    x, y = x.double(), y.double()
    if causal:
        ymin, ymax = torch.cummin(y, 1).values, torch.cummax(y, 1).values
    else:
        ymin, ymax = y.amin(1, keepdim=True), y.amax(1, keepdim=True)
    z1, z2 = 2 * x * ymin, 2 * x * ymax
    lr = _log_factor_range(torch.minimum(z1, z2), torch.maximum(z1, z2), order)
    # lr = inf flags factors <= 0 (odd orders): the "mean" can then leave the values' range: no bound
    return torch.where(torch.isinf(lr), math.inf, mean_shift_bound(lr))


def posterior_bound_rows(x: torch.Tensor, y: torch.Tensor, v: torch.Tensor, order: int, *,
                         causal: bool = True) -> torch.Tensor:
    """Per-position bound ``[N, T]`` on rows ``x, y, v [N, T]`` (already scaled): the spread of the visible
    values times ``tanh(ln(rho_i)/4)``, ``rho_i`` from the visible keys' extremes."""
    v = v.double()
    if causal:
        spread = torch.cummax(v, 1).values - torch.cummin(v, 1).values
    else:
        spread = (v.amax(1, keepdim=True) - v.amin(1, keepdim=True)).expand_as(v)
    factor = posterior_factor_rows(x, y, order, causal=causal)
    return torch.where(torch.isinf(factor), math.inf, spread * factor)


def _from_rows(t: torch.Tensor, B: int, H: int, D: int) -> torch.Tensor:
    return t.reshape(B, H, D, -1).permute(0, 3, 1, 2).contiguous()


def posterior_bound(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, order: int, *, causal: bool = True,
                    scale: float = 1.0) -> torch.Tensor:
    """A-posteriori bound on ``|EA-t - EA|`` at every position, ``[B, T, H, D] -> [B, T, H, D]`` (units of
    ``v``), from the actual keys each query sees. Proven (up to float64 rounding of the bound itself)."""
    B, T, H, D = q.shape
    r = math.sqrt(scale)
    out = posterior_bound_rows(rows_of(q) * r, rows_of(k) * r, rows_of(v), order, causal=causal)
    return _from_rows(out, B, H, D)


def realised_error(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, order: int, *, causal: bool = True,
                   scale: float = 1.0, rows: int | None = None, seed: int = 0
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``|EA-t - EA|`` in float64 on ``rows`` sampled query positions (all when None).

    Returns ``(error [B, R, H, D], positions [R])``. Cost O(B H D R T).
    """
    B, T, H, D = q.shape
    r = math.sqrt(scale)
    pos = sample_positions(T, rows, seed=seed)
    res = dense_rows(rows_of(q) * r, rows_of(k) * r, rows_of(v), orders=[order], causal=causal, positions=pos)
    err = (res.taylor[order] - res.exact).abs()
    return _from_rows(err, B, H, D), pos


def two_key_construction(order: int, a: float, b: float, max_keys: int = 4096
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs that attain :func:`worst_case_error` (up to integer rounding of the key counts).

    Query ``x = a``; ``n_A`` keys at ``y = +b`` with ``v = 0`` (factor ``r_t(Z)``, the smallest) and ``n_B``
    keys at ``y = -b`` with ``v = 1`` (factor ``r_t(-Z)``, the largest). The mean-shift bound is reached
    when the exact share of the ``B`` keys is ``1 / (sqrt(rho) + 1)``; exact weights are in ratio
    ``e^{-2Z}``, so ``n_B / n_A = e^{2Z} / sqrt(rho)``. With only one key of each kind the shares are fixed
    and the bound is not reached (e.g. 79% of it at Z = 0.5): two key *values* with multiplicities are needed.

    Returns float64 ``q, k, v`` of shape ``[1, n_A + n_B, 1, 1]`` for non-causal EA (every position is a
    query at ``x = a``), with ``scale = 1``.
    """
    Z = 2.0 * a * b
    lr = float(_log_factor_range(torch.tensor(-Z, dtype=torch.float64), torch.tensor(Z, dtype=torch.float64),
                                 order))
    ratio = math.exp(2 * Z - lr / 2)  # n_B / n_A
    best = None
    for n_a in range(1, max_keys):
        n_b = max(1, round(ratio * n_a))
        if n_a + n_b > max_keys:
            break
        u = n_b * math.exp(-2 * Z) / (n_a + n_b * math.exp(-2 * Z))  # exact share of the B keys
        shift = u * math.exp(lr) / (1 - u + u * math.exp(lr)) - u
        if best is None or shift > best[0]:
            best = (shift, n_a, n_b)
    if best is None:
        raise ValueError(f"Z = 2ab = {Z:g} needs more than max_keys={max_keys} keys (ratio {ratio:.3g})")
    _, n_a, n_b = best
    T = n_a + n_b
    q = torch.full((1, T, 1, 1), float(a), dtype=torch.float64)
    k = torch.cat([torch.full((n_a,), float(b)), torch.full((n_b,), -float(b))]).double().reshape(1, T, 1, 1)
    v = torch.cat([torch.zeros(n_a), torch.ones(n_b)]).double().reshape(1, T, 1, 1)
    return q, k, v
