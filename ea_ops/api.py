"""The public operators (docs/math.md section 7): validate, then dispatch to a backend."""

from __future__ import annotations

import torch

from . import call_log, checks, dispatch, gqa
from .exact import exact_attention
from .state import EAState


def ea_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    order: int = 6,
    causal: bool = True,
    scale: float = 1.0,
    initial_state: EAState | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    backend: str = "auto",
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, EAState | None]:
    """Element-wise attention with the even Taylor order ``order`` (EA-t).

    Args:
        q, k, v: ``[B, T, H, D]``, one float dtype and device (float64 on the torch backend only); ``k, v`` may
            have ``H_kv`` heads dividing ``H`` (grouped-query attention: query head ``h`` reads kv head
            ``h // (H / H_kv)``), and the state then has ``H_kv`` heads.
        order: even Taylor order t of ``exp(2 x y)``.
        causal: prefix sums (``j <= i``) or full sums.
        scale: ``s`` in ``exp(-s (q - k)^2)``.
        initial_state: ``EAState`` with sums ``[B, H_kv, t+1, D]`` (``[N, ...]`` with ``cu_seqlens``); causal only.
        output_final_state: also return the state after the last token; causal only.
        cu_seqlens: ``[N+1]`` int offsets of N sequences packed along T (batch size 1).
        backend: "auto", "torch", "tvm" or "triton".
        out: a contiguous tensor like ``q`` to write ``o`` into (no gradients): for long prefills, whose fresh
            output pages cost more than the kernel (README "Long sequences"). The TVM kernels write it directly,
            the other backends copy into it.

    Returns:
        ``(o, final_state)``: ``o`` like ``q`` (``out`` when given); ``final_state`` is None unless
        ``output_final_state``.
    """
    H_kv = checks.check_qkv(q, k, v, rank=4)
    order = checks.check_order(order)
    causal = checks.check_flag(causal, "causal")
    scale = checks.check_scale(scale)
    output_final_state = checks.check_flag(output_final_state, "output_final_state")
    backend = checks.check_backend(backend)
    B, T, H, D = q.shape
    segments = None
    if cu_seqlens is not None:
        segments = checks.check_cu_seqlens(cu_seqlens, q)
    if not causal and initial_state is not None:
        raise ValueError("initial_state needs causal=True (non-causal EA has no running state)")
    if not causal and output_final_state:
        raise ValueError("output_final_state needs causal=True (non-causal EA has no running state)")
    if initial_state is not None:
        n_state = B if segments is None else len(segments)
        checks.check_state(initial_state, "initial_state", batch=n_state, heads=H_kv, dim=D, order=order, q=q)
    if q.dtype == torch.float64 and backend not in ("auto", "torch"):
        raise TypeError(f"float64 inputs run on the torch backend only, got backend={backend!r}")
    needs_grad = checks.needs_grad(q, k, v)
    if out is not None:
        out = checks.check_out(out, q, k, v, grad=needs_grad)
    call_log.note("forward", q, order=order, causal=causal, needs_grad=needs_grad, segments=segments)
    mod = dispatch.resolve(backend, q, causal=causal, order=order, needs_grad=needs_grad)
    G = H // H_kv if H_kv else 1
    k, v = gqa.broadcast(k, G, 2), gqa.broadcast(v, G, 2)
    if B * H * D == 0:  # no channel to compute: nothing reaches a kernel
        n_state = B if segments is None else len(segments)
        final = _final_state(initial_state, n_state, H_kv, D, order, q) if output_final_state else None
        return _into(out, _empty_output(q, k, v)), final
    # A backend that writes ``out`` itself says so (TVM); the others' output is copied into it.
    given = {"out": out} if out is not None and getattr(mod, "WRITES_OUT", False) else {}
    o, final = mod.attention(
        q, k, v, order=order, causal=causal, scale=scale, initial_state=gqa.broadcast_state(initial_state, G),
        output_final_state=output_final_state, cu_seqlens=segments, **given,
    )
    return _into(out, o), gqa.fold_state(final, G)


def _into(out: torch.Tensor | None, o: torch.Tensor) -> torch.Tensor:
    """``o``, or ``out`` holding it."""
    if out is None or o is out:
        return o
    return out.copy_(o)


def ea_recurrent_step(
    q_t: torch.Tensor,
    k_t: torch.Tensor,
    v_t: torch.Tensor,
    state: EAState | None,
    order: int = 6,
    scale: float = 1.0,
    backend: str = "auto",
) -> tuple[torch.Tensor, EAState]:
    """One decoding step of causal EA-t: ``q_t, k_t, v_t [B, H, D]`` -> ``(o_t [B, H, D], new_state)``.

    ``k_t, v_t`` may have ``H_kv`` heads dividing ``H`` (grouped-query attention); the state has ``H_kv``.

    ``state=None`` starts from the empty state. Cost O(t D) per token, whatever came before. The input state is
    never written: every call allocates the new one. ``ea_ops.EADecoder`` is the same step, bit for bit, with
    the state updated in place and the backend and kernel chosen once (an opt-in, for serving).
    """
    H_kv = checks.check_qkv(q_t, k_t, v_t, rank=3, names=("q_t", "k_t", "v_t"))
    order = checks.check_order(order)
    scale = checks.check_scale(scale)
    backend = checks.check_backend(backend)
    B, H, D = q_t.shape
    if state is not None:
        checks.check_state(state, "state", batch=B, heads=H_kv, dim=D, order=order, q=q_t, q_name="q_t")
    if q_t.dtype == torch.float64 and backend not in ("auto", "torch"):
        raise TypeError(f"float64 inputs run on the torch backend only, got backend={backend!r}")
    call_log.note("step", q_t, order=order, causal=True, needs_grad=False)  # a step runs the step kernel only
    mod = dispatch.resolve(backend, q_t, causal=True, order=order, needs_grad=checks.needs_grad(q_t, k_t, v_t))
    G = H // H_kv if H_kv else 1
    k_t, v_t = gqa.broadcast(k_t, G, 1), gqa.broadcast(v_t, G, 1)
    if B * H * D == 0:
        return _empty_output(q_t, k_t, v_t), _final_state(state, B, H_kv, D, order, q_t)
    if state is None:
        state = EAState.empty(B, H_kv, D, order, device=q_t.device, dtype=checks.state_dtype(q_t.dtype))
    o, new = mod.recurrent_step(q_t, k_t, v_t, gqa.broadcast_state(state, G), order=order, scale=scale)
    return o, gqa.fold_state(new, G)


def _empty_output(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The output of a call with no channel (``B*H*D == 0``): empty like ``q``, and on the autograd graph of
    all three inputs so that ``backward()`` works and gives empty gradients."""
    return (q + k + v) * 0


def _final_state(state: EAState | None, n: int, H: int, D: int, order: int, q: torch.Tensor) -> EAState:
    """The state after no token: a copy of ``state``, or the empty state."""
    if state is not None:
        return state.clone()
    return EAState.empty(n, H, D, order, device=q.device, dtype=checks.state_dtype(q.dtype))


def ea_attention_exact(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True, scale: float = 1.0
) -> torch.Tensor:
    """Exact EA, ``exp(-s (q_i - k_j)^2)`` weights, O(T^2): ``[B, T, H, D] -> [B, T, H, D]`` (``k, v`` may have
    fewer heads, as in ``ea_attention``)."""
    H_kv = checks.check_qkv(q, k, v, rank=4)
    causal = checks.check_flag(causal, "causal")
    scale = checks.check_scale(scale)
    G = q.shape[2] // H_kv if H_kv else 1
    return exact_attention(q, gqa.broadcast(k, G, 2), gqa.broadcast(v, G, 2), causal=causal, scale=scale)
