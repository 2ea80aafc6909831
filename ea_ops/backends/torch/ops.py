"""The torch backend's autograd Function and entry points: ``[B, T, H, D]`` in, rows to ``kernels``, out.

``EAFunction`` runs ``kernels.forward_rows`` and the explicit backward (``kernels.causal_backward`` /
``noncausal_backward``); double backward differentiates a re-run of the forward. Functions of ``kernels`` are
looked up on the module at each call, so tests can force chunk lengths or poison outputs there.
"""

from __future__ import annotations

import math

import torch

from ...features import features
from ...state import EAState
from . import kernels as K


class EAFunction(torch.autograd.Function):
    """EA-t on rows ``[N, T]`` (already scaled ``x, y``), per segment, with the explicit backward.

    Saves only ``x, y, v, o, den`` (``O(N T)``) and the initial states; everything else is recomputed.
    Double backward (``create_graph=True``) differentiates a re-run of the forward with autograd instead:
    the explicit formulas use the saved ``o`` and ``den`` as constants, so their own derivative would be wrong.
    """

    @staticmethod
    def forward(ctx, x, y, v, order, causal, segments, init, chunk):
        o, den, flat = K.forward_rows(x, y, v, order, causal, segments, init, chunk)
        ctx.save_for_backward(x, y, v, o, den)
        ctx.meta = (order, causal, segments, init, chunk)
        ctx.mark_non_differentiable(*flat)
        return (o, *flat)

    @staticmethod
    def backward(ctx, go, *_):
        x, y, v, o, den = ctx.saved_tensors
        order, causal, segments, init, chunk = ctx.meta
        if torch.is_grad_enabled():  # create_graph=True: grads that are themselves differentiable
            o_again = K.forward_rows(x, y, v, order, causal, segments, init, chunk)[0]
            return (*torch.autograd.grad(o_again, (x, y, v), go, create_graph=True, allow_unused=True),
                    None, None, None, None, None)
        dx, dy, dv = torch.zeros_like(x), torch.zeros_like(y), torch.zeros_like(v)
        go = go.contiguous()
        for idx, (b, e) in enumerate(segments):
            if e == b:
                continue
            args = (x[:, b:e], y[:, b:e], v[:, b:e], o[:, b:e], den[:, b:e], go[:, b:e])
            if causal:
                grads = K.causal_backward(*args, *init[idx], order, chunk)
            else:
                grads = K.noncausal_backward(*args, order, chunk)
            dx[:, b:e], dy[:, b:e], dv[:, b:e] = grads
        return dx, dy, dv, None, None, None, None, None


def attention(q, k, v, *, order, causal, scale, initial_state, output_final_state, cu_seqlens,
              chunk: int | None = None):
    """Validated inputs ``[B, T, H, D]`` -> ``(o, final_state)``. ``cu_seqlens``: list of ``(begin, end)``."""
    B, T, H, D = q.shape
    cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
    r = math.sqrt(scale)
    x = K.to_rows(q, cdt) * r
    y = K.to_rows(k, cdt) * r
    vr = K.to_rows(v, cdt)
    if cu_seqlens is None:
        segments, n_state = None, B
    else:
        segments, n_state = cu_seqlens, len(cu_seqlens)
    rows = (B if segments is None else 1) * H * D
    init = []
    if causal:
        st = initial_state or EAState.empty(n_state, H, D, order, device=q.device, dtype=cdt)
        if segments is None:
            init = [K.state_to_rows(st)]
        else:
            init = [K.state_to_rows(EAState(st.S[i:i + 1], st.Z[i:i + 1], st.m[i:i + 1]))
                    for i in range(n_state)]
    segs = K._segments(T, segments)
    chunk = chunk or K.chunk_size(rows, T)
    o, *flat = EAFunction.apply(x, y, vr, order, causal, segs, init, chunk)
    out = K.from_rows(o, B, H, D).to(q.dtype)
    if not output_final_state:
        return out, None
    finals = [K.state_from_rows(*flat[3 * i:3 * i + 3], 1 if segments else B, H, D) for i in range(len(segs))]
    if len(finals) == 1:
        return out, finals[0]
    return out, EAState(*(torch.cat([getattr(f, n) for f in finals]) for n in ("S", "Z", "m")))


def recurrent_step(q, k, v, state, *, order, scale):
    """One token ``[B, H, D]`` -> ``(o [B, H, D], new state)``.

    ``o`` is differentiable in this token's ``q, k, v``; the states are data (as on every backend): the
    input state is not differentiated and the new one is returned detached.
    """
    cdt = state.S.dtype
    S0, Z0, m0 = (t.detach() for t in (state.S, state.Z, state.m))
    r = math.sqrt(scale)
    x, y, vv = q.to(cdt) * r, k.to(cdt) * r, v.to(cdt)
    y2 = y * y
    m_new = torch.minimum(m0, y2)
    kf = features(y, order) * torch.exp(m_new - y2)[..., None]  # [B, H, D, t+1]
    decay = torch.exp(m_new - m0)[:, :, None, :]
    S = decay * S0 + (kf * vv[..., None]).transpose(-1, -2)
    Z = decay * Z0 + kf.transpose(-1, -2)
    qf = features(x, order).transpose(-1, -2)  # [B, H, t+1, D]
    o = (qf * S).sum(2) / (qf * Z).sum(2)
    return o.to(q.dtype), EAState(S.detach(), Z.detach(), m_new.detach())
