"""The torch backend: chunked, stabilised EA-t with an explicit backward (the reference for every kernel).

Internally every channel ``(b, h, d)`` is one row: tensors are ``[N, T]`` with ``N = B*H*D`` (or ``H*D`` per
sequence with ``cu_seqlens``), states ``[N, t+1]`` and offsets ``[N]``. Within a chunk of ``C`` positions the
causal sums are an explicit ``C x C`` weight matrix ``exp(m_i - y_j^2) P_t(2 x_i y_j)``; across chunks they
go through the state. Every exponent is ``<= 0`` (``m_i`` is the running minimum of ``y^2``), so nothing
overflows and nothing underflows to 0/0. Memory beyond the inputs is O(N T) plus O(N C^2) per chunk.
"""

from __future__ import annotations

import math

import torch

from ...features import features, features_grad, taylor_exp
from ...state import EAState

_MAX_TILE_ELEMS = 1 << 22  # N * C * C per temporary: ~16 MB in float32


def chunks(T: int, chunk: int) -> list[tuple[int, int]]:
    """``(begin, end)`` of every chunk of ``[0, T)``: the one loop every scan below walks."""
    return [(s, min(s + chunk, T)) for s in range(0, T, chunk)]


def new_out(x: torch.Tensor, *shape: int) -> torch.Tensor:
    """An output buffer that the scans fill chunk by chunk (tests replace it with a NaN-filled one)."""
    return x.new_empty(shape)


def chunk_size(n_rows: int, T: int) -> int:
    c = 64
    while c > 16 and n_rows * c * c > _MAX_TILE_ELEMS:
        c //= 2
    return max(1, min(c, T))


# ----------------------------------------------------------------------------------------------- layout
def to_rows(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[B, T, H, D] -> [B*H*D, T]`` in ``dtype``."""
    B, T, H, D = x.shape
    return x.to(dtype).permute(0, 2, 3, 1).reshape(B * H * D, T)


def from_rows(x: torch.Tensor, B: int, H: int, D: int) -> torch.Tensor:
    """``[B*H*D, T] -> [B, T, H, D]``."""
    return x.reshape(B, H, D, -1).permute(0, 3, 1, 2)


def state_to_rows(state: EAState) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    B, H, t1, D = state.S.shape
    S = state.S.permute(0, 1, 3, 2).reshape(B * H * D, t1)
    Z = state.Z.permute(0, 1, 3, 2).reshape(B * H * D, t1)
    return S, Z, state.m.reshape(B * H * D)


def state_from_rows(S: torch.Tensor, Z: torch.Tensor, m: torch.Tensor, B: int, H: int, D: int) -> EAState:
    t1 = S.shape[1]
    return EAState(
        S.reshape(B, H, D, t1).permute(0, 1, 3, 2).contiguous(),
        Z.reshape(B, H, D, t1).permute(0, 1, 3, 2).contiguous(),
        m.reshape(B, H, D).contiguous(),
    )


# ------------------------------------------------------------------------------------- causal forward
def _intra(x: torch.Tensor, y: torch.Tensor, mi: torch.Tensor, order: int, deriv: str | None = None):
    """Weights within a chunk ``[N, C, C]`` (row i = query, column j = key, j <= i).

    ``deriv=None``: ``exp(m_i - y_j^2) P_t(2 x_i y_j)``; ``"x"``: its derivative in ``x_i``;
    ``"y"``: its derivative in ``y_j`` (as a function of ``exp(-y_j^2)`` too, ``m_i`` held fixed).
    """
    y2 = y * y
    e = torch.exp(mi[:, :, None] - y2[:, None, :])
    z = 2 * x[:, :, None] * y[:, None, :]
    if deriv is None:
        w = e * taylor_exp(z, order)
    elif deriv == "x":
        w = e * (2 * y[:, None, :]) * taylor_exp(z, order - 1)
    else:
        w = e * (2 * x[:, :, None] * taylor_exp(z, order - 1) - 2 * y[:, None, :] * taylor_exp(z, order))
    # Select, never multiply by a mask: a non-finite later key would make 0 * inf = NaN above the diagonal.
    return w.where(_lower(x.shape[1], x.device), 0.0)


def _lower(C: int, device) -> torch.Tensor:
    """``[C, C]`` mask of ``j <= i``."""
    return torch.ones(C, C, dtype=torch.bool, device=device).tril()


def _masked_matvec(A: torch.Tensor, u: torch.Tensor, upper: bool = False) -> torch.Tensor:
    """``sum_j A_ij u_j`` over ``j <= i`` (``upper``: ``j >= i``) of ``A [N, C, C]``, ``u [N, C]``.

    A product with the mask, not ``bmm``: ``0 * NaN`` from a masked position would leak a later (or, for the
    reverse sums, an earlier) non-finite value across time.
    """
    mask = _lower(A.shape[1], A.device)
    return (A * u[:, None, :]).where(mask.T if upper else mask, 0.0).sum(-1)


def _absorb(S, Z, m, y, v, m_end, order):
    """State after the keys ``y, v`` ``[N, C]``, rebased from ``m`` to ``m_end`` (both ``[N]``)."""
    kf = features(y, order) * torch.exp(m_end[:, None] - y * y)[..., None]
    r = torch.exp(m_end - m)[:, None]
    return r * S + (kf * v[..., None]).sum(1), r * Z + kf.sum(1)


def _max_spread(dtype: torch.dtype) -> float:
    """Largest drop of the running min of ``y^2`` within a chunk that the cumsum path takes.

    The cumsum path scales keys by ``exp(c - y_j^2)`` (``c`` the chunk's final running min) and positions by
    ``exp(m_i - c)``; both stay within ``exp(+-60)`` (normal floats, float32 overflows at ``exp(88)``).
    """
    return 600.0 if dtype == torch.float64 else 60.0


def _reference(mi: torch.Tensor) -> torch.Tensor:
    """The chunk's stabilising reference ``[N]``: its smallest running min of ``y^2`` that is not NaN.

    The running min is non-increasing and turns NaN at a NaN key for good; taking the last finite value
    (not ``mi[:, -1]``) keeps a NaN key from poisoning the outputs of the chunk's earlier positions.
    """
    return mi.nan_to_num(nan=math.inf).amin(1)


def _rows(bad: torch.Tensor) -> torch.Tensor | None:
    """Indices of the rows ``bad [N]`` marks, None when there is none. Under ``torch.compile`` every row
    (``_ALL``): a data-dependent branch breaks a graph, so the explicit weights are computed for all rows and
    selected per row with ``torch.where`` (``_take``); more work, the same values."""
    if torch.compiler.is_compiling():
        return _ALL
    return bad.nonzero().squeeze(1) if bool(bad.any()) else None


_ALL = slice(None)


def _take(out: torch.Tensor, rows, bad: torch.Tensor, value: torch.Tensor) -> None:
    """``out[rows] = value`` for the rows of ``_rows(bad)`` (all rows where ``bad`` under compile)."""
    if rows is _ALL:
        out.copy_(torch.where(bad[:, None], value, out))
    else:
        out[rows] = value


def _intra_sums(xc, yc, vc, mi, order: int, deriv: str | None, max_spread: float):
    """``(sum_j W_ij v_j, sum_j W_ij)`` over keys ``j <= i`` of the chunk, ``[N, C]`` each.

    ``W_ij = exp(m_i - y_j^2) P_t(2 x_i y_j)`` (``deriv="x"``: its derivative in ``x_i``). Rows whose running
    min drops by at most ``max_spread`` in the chunk take prefix sums of features (O(C t)); the others take
    the explicit C x C weights (O(C^2 t)), which are stable for any keys.
    """
    y2 = yc * yc
    c = _reference(mi)
    qf = features(xc, order)
    if deriv == "x":
        qf = features_grad(qf)
    kf = features(yc, order) * torch.exp(c[:, None] - y2)[..., None]
    lift = torch.exp(mi - c[:, None])
    num = lift * (qf * torch.cumsum(kf * vc[..., None], dim=1)).sum(-1)
    den = lift * (qf * torch.cumsum(kf, dim=1)).sum(-1)
    bad = mi[:, 0] - c > max_spread
    rows = _rows(bad)
    if rows is not None:
        A = _intra(xc[rows], yc[rows], mi[rows], order, deriv=deriv)
        _take(num, rows, bad, _masked_matvec(A, vc[rows]))
        _take(den, rows, bad, A.sum(-1))
    return num, den


def _intra_reverse(xc, yc, vc, mi, cc, oc, order: int, max_spread: float):
    """Within-chunk parts of ``dv_j`` and ``dy_j``: sums over queries ``i >= j`` of the chunk, ``[N, C]``."""
    y2 = yc * yc
    r = mi[:, 0]  # the largest running min in the chunk
    qf = features(xc, order) * torch.exp(mi - r[:, None])[..., None]
    Uc = torch.cumsum((cc[..., None] * qf).flip(1), dim=1).flip(1)
    Wc = torch.cumsum(((cc * oc)[..., None] * qf).flip(1), dim=1).flip(1)
    kf = features(yc, order)
    damp = torch.exp(r[:, None] - y2)[..., None]
    dkf = (features_grad(kf) - 2 * yc[..., None] * kf) * damp
    dv = ((kf * damp) * Uc).sum(-1)
    dy = vc * (dkf * Uc).sum(-1) - (dkf * Wc).sum(-1)
    bad = r - mi[:, -1] > max_spread
    rows = _rows(bad)
    if rows is not None:
        x_, y_, v_, m_, c_, o_ = xc[rows], yc[rows], vc[rows], mi[rows], cc[rows], oc[rows]
        A = _intra(x_, y_, m_, order).transpose(1, 2)
        G = _intra(x_, y_, m_, order, deriv="y").transpose(1, 2)
        _take(dv, rows, bad, _masked_matvec(A, c_, upper=True))
        _take(dy, rows, bad, v_ * _masked_matvec(G, c_, upper=True) - _masked_matvec(G, c_ * o_, upper=True))
    return dv, dy


def causal_forward(x, y, v, S, Z, m, order: int, chunk: int, max_spread: float | None = None):
    """Causal EA-t over rows. ``x, y, v [N, T]``; state ``S, Z [N, t+1], m [N]``.

    Returns ``o [N, T]``, the stabilised denominators ``den [N, T]`` (scaled by ``exp(m_i)``) and the
    final state.
    """
    N, T = x.shape
    max_spread = _max_spread(x.dtype) if max_spread is None else max_spread
    o = new_out(x, N, T)
    den = new_out(x, N, T)
    for s, e in chunks(T, chunk):
        xc, yc, vc = x[:, s:e], y[:, s:e], v[:, s:e]
        mi = torch.minimum(torch.cummin(yc * yc, dim=1).values, m[:, None])
        num, d = _intra_sums(xc, yc, vc, mi, order, None, max_spread)
        qf = features(xc, order) * torch.exp(mi - m[:, None])[..., None]
        num = num + (qf * S[:, None, :]).sum(-1)
        d = d + (qf * Z[:, None, :]).sum(-1)
        o[:, s:e] = num / d
        den[:, s:e] = d
        S, Z = _absorb(S, Z, m, yc, vc, mi[:, -1], order)
        m = mi[:, -1]
    return o, den, S, Z, m


def causal_backward(x, y, v, o, den, g, S, Z, m, order: int, chunk: int, max_spread: float | None = None):
    """Gradients ``dx, dy, dv [N, T]`` of causal EA-t (docs/math.md), from the saved ``o`` and ``den``.

    One forward re-scan (for ``dx``, needs the prefix state) and one reverse scan (for ``dv, dy``, with
    the suffix sums ``U = sum_i c_i f(x_i)``, ``W = sum_i c_i o_i f(x_i)``, ``c = g / den``).
    """
    N, T = x.shape
    max_spread = _max_spread(x.dtype) if max_spread is None else max_spread
    c = g / den
    m_all = torch.minimum(torch.cummin(y * y, dim=1).values, m[:, None])
    dx, dy, dv = (new_out(x, N, T) for _ in range(3))
    bounds = chunks(T, chunk)
    for s, e in bounds:
        xc, yc, vc = x[:, s:e], y[:, s:e], v[:, s:e]
        mi = m_all[:, s:e]
        nx, dnx = _intra_sums(xc, yc, vc, mi, order, "x", max_spread)
        dqf = features_grad(features(xc, order)) * torch.exp(mi - m[:, None])[..., None]
        nx = nx + (dqf * S[:, None, :]).sum(-1)
        dnx = dnx + (dqf * Z[:, None, :]).sum(-1)
        dx[:, s:e] = c[:, s:e] * (nx - o[:, s:e] * dnx)
        S, Z = _absorb(S, Z, m, yc, vc, mi[:, -1], order)
        m = mi[:, -1]

    # Reverse scan. Entering chunk [s, e), U and W hold the queries i >= e scaled by exp(m_i - m_{e-1})
    # (<= 1, m is non-increasing); keys j < e have y_j^2 >= m_{e-1}, so exp(m_{e-1} - y_j^2) <= 1 too.
    t1 = order + 1
    U = x.new_zeros(N, t1)
    W = x.new_zeros(N, t1)
    for s, e in reversed(bounds):
        xc, yc, vc = x[:, s:e], y[:, s:e], v[:, s:e]
        mi, cc, oc = m_all[:, s:e], c[:, s:e], o[:, s:e]
        dv_c, dy_c = _intra_reverse(xc, yc, vc, mi, cc, oc, order, max_spread)
        ref = mi[:, -1]
        kf = features(yc, order)
        damp = torch.exp(ref[:, None] - yc * yc)[..., None]
        dkf = (features_grad(kf) - 2 * yc[..., None] * kf) * damp
        dv[:, s:e] = dv_c + (kf * damp * U[:, None, :]).sum(-1)
        dy[:, s:e] = dy_c + vc * (dkf * U[:, None, :]).sum(-1) - (dkf * W[:, None, :]).sum(-1)
        if s > 0:
            new_ref = m_all[:, s - 1]
            r = torch.exp(ref - new_ref)[:, None]
            qf = features(xc, order) * torch.exp(mi - new_ref[:, None])[..., None]
            U = r * U + (cc[..., None] * qf).sum(1)
            W = r * W + ((cc * oc)[..., None] * qf).sum(1)
    return dx, dy, dv


# --------------------------------------------------------------------------------- non-causal (global)
def global_state(y, v, order: int, chunk: int):
    """Sums over all keys, scaled by ``exp(min y^2)``: ``S, Z [N, t+1]``, ``m [N]``."""
    N, T = y.shape
    m = (y * y).amin(dim=1)
    S = y.new_zeros(N, order + 1)
    Z = y.new_zeros(N, order + 1)
    for s, e in chunks(T, chunk):
        yc, vc = y[:, s:e], v[:, s:e]
        kf = features(yc, order) * torch.exp(m[:, None] - yc * yc)[..., None]
        S = S + (kf * vc[..., None]).sum(1)
        Z = Z + kf.sum(1)
    return S, Z, m


def noncausal_forward(x, y, v, order: int, chunk: int):
    N, T = x.shape
    S, Z, m = global_state(y, v, order, chunk)
    o = new_out(x, N, T)
    den = new_out(x, N, T)
    for s, e in chunks(T, chunk):
        qf = features(x[:, s:e], order)
        d = (qf * Z[:, None, :]).sum(-1)
        o[:, s:e] = (qf * S[:, None, :]).sum(-1) / d
        den[:, s:e] = d
    return o, den


def noncausal_backward(x, y, v, o, den, g, order: int, chunk: int):
    N, T = x.shape
    S, Z, m = global_state(y, v, order, chunk)
    c = g / den
    dx, dy, dv = (new_out(x, N, T) for _ in range(3))
    U = x.new_zeros(N, order + 1)
    W = x.new_zeros(N, order + 1)
    for s, e in chunks(T, chunk):
        qf = features(x[:, s:e], order)
        dqf = features_grad(qf)
        dx[:, s:e] = c[:, s:e] * ((dqf * S[:, None, :]).sum(-1) - o[:, s:e] * (dqf * Z[:, None, :]).sum(-1))
        U = U + (c[:, s:e, None] * qf).sum(1)
        W = W + ((c[:, s:e] * o[:, s:e])[..., None] * qf).sum(1)
    for s, e in chunks(T, chunk):
        yc, vc = y[:, s:e], v[:, s:e]
        kf = features(yc, order)
        damp = torch.exp(m[:, None] - yc * yc)[..., None]
        dkf = (features_grad(kf) - 2 * yc[..., None] * kf) * damp
        dv[:, s:e] = (kf * damp * U[:, None, :]).sum(-1)
        dy[:, s:e] = vc * (dkf * U[:, None, :]).sum(-1) - (dkf * W[:, None, :]).sum(-1)
    return dx, dy, dv


# ---------------------------------------------------------------------------------- every segment
def _segments(T: int, seg: list[tuple[int, int]] | None) -> list[tuple[int, int]]:
    return seg if seg is not None else [(0, T)]


def forward_rows(x, y, v, order, causal, segments, init, chunk):
    """The forward over every segment: ``o, den [N, T]`` and the final states (causal) as a flat list."""
    N, T = x.shape
    o = new_out(x, N, T)
    den = new_out(x, N, T)
    finals = []
    for idx, (b, e) in enumerate(segments):
        if causal:
            S, Z, m = init[idx]
            o[:, b:e], den[:, b:e], S, Z, m = causal_forward(
                x[:, b:e], y[:, b:e], v[:, b:e], S, Z, m, order, chunk)
            finals += [S, Z, m]
        elif e > b:
            o[:, b:e], den[:, b:e] = noncausal_forward(x[:, b:e], y[:, b:e], v[:, b:e], order, chunk)
    return o, den, finals
