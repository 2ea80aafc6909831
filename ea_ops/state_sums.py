"""EA states in closed form, their merge, and the gradients through them: what context parallelism exchanges
(``ea_ops.distributed``; docs/math.md section 9).

A piece of a sequence, keys ``y = sqrt(s) k`` and values ``v`` ``[B, T, H, D]``, has the state (``EAState``'s
form) ``S_n = sum_t exp(m - y_t^2) f_n(y_t) v_t``, ``Z_n = sum_t exp(m - y_t^2) f_n(y_t)`` with ``m = min_t y_t^2``:
every term's weight is at most 1. States of consecutive pieces merge exactly, ``m = min(m_a, m_b)``,
``S = S_a exp(m - m_a) + S_b exp(m - m_b)``: the scan's own rebase, associative. References are constants
throughout: the outputs do not depend on them (numerator and denominator scale alike), so gradients hold them
fixed.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .features import features, features_grad
from .state import EAState

CHUNK_ELEMENTS = 1 << 16  # elements of [B, chunk, H, D] per step of the sums: their features stay in cache


def chunk_of(x: Tensor) -> int:
    """Positions per step for ``x [B, T, H, D]`` (at least 16; 128 at B1 H8 D64)."""
    return max(16, CHUNK_ELEMENTS // max(1, x.shape[0] * x.shape[2] * x.shape[3]))


def piece_sums(y: Tensor, v: Tensor, order: int, m: Tensor | None = None) -> EAState:
    """The state of one piece: ``y, v [B, T, H, D]`` (keys already scaled) -> sums ``[B, H, t+1, D]``,
    ``m [B, H, D]``; the empty state for ``T = 0``. ``m``: the reference to sum at (at most the piece's own
    minimum; default that minimum)."""
    B, T, H, D = y.shape
    if T == 0 and m is None:
        return EAState.empty(B, H, D, order, device=y.device, dtype=y.dtype)
    if m is None:
        m = (y * y).amin(dim=1)
    S = y.new_zeros(B, H, order + 1, D)
    Z = torch.zeros_like(S)
    step = chunk_of(y)
    for s in range(0, T, step):
        yc, vc = y[:, s:s + step], v[:, s:s + step]
        w = torch.exp(m[:, None] - yc * yc)
        f = features(yc, order) * w[..., None]  # [B, c, H, D, t+1]
        S += (f * vc[..., None]).sum(1).transpose(-1, -2)
        Z += f.sum(1).transpose(-1, -2)
    return EAState(S, Z, m)


def piece_sums_grad(y: Tensor, v: Tensor, m: Tensor, dS: Tensor, dZ: Tensor) -> tuple[Tensor, Tensor]:
    """``(dy, dv)`` of ``<dS, S> + <dZ, Z>`` for the piece's sums at the reference ``m`` (held fixed):
    ``dv_t = w_t sum_n f_n(y_t) dS_n``, ``dy_t = w_t sum_n (f_n'(y_t) - 2 y_t f_n(y_t)) (v_t dS_n + dZ_n)``."""
    T, order = y.shape[1], dS.shape[2] - 1
    dy, dv = torch.empty_like(y), torch.empty_like(v)
    dSt, dZt = dS.transpose(-1, -2)[:, None], dZ.transpose(-1, -2)[:, None]  # [B, 1, H, D, t+1]
    step = chunk_of(y)
    for s in range(0, T, step):
        yc, vc = y[:, s:s + step], v[:, s:s + step]
        w = torch.exp(m[:, None] - yc * yc)
        f = features(yc, order)
        fg = features_grad(f) - 2 * yc[..., None] * f
        dv[:, s:s + step] = w * (f * dSt).sum(-1)
        dy[:, s:s + step] = w * (fg * (vc[..., None] * dSt + dZt)).sum(-1)
    return dy, dv


def rebase_factor(m_to: Tensor, m_from: Tensor) -> Tensor:
    """``exp(m_to - m_from)`` with ``m_to <= m_from``; 0 for an empty state (``m_from = +inf``)."""
    return torch.where(m_from == math.inf, torch.zeros_like(m_from), torch.exp(m_to - m_from))


def merge(states: list[EAState]) -> EAState:
    """The state of consecutive pieces from theirs, in order (at least one; empty states change nothing)."""
    m = states[0].m
    for st in states[1:]:
        m = torch.minimum(m, st.m)
    S = sum(st.S * rebase_factor(m, st.m)[:, :, None] for st in states)
    Z = sum(st.Z * rebase_factor(m, st.m)[:, :, None] for st in states)
    return EAState(S, Z, m)
