"""PyTorch integration of the TVM kernels: zero-copy calls through DLPack, and ``torch.library`` custom ops.

Tensors go to the compiled functions as they are (``tvm_ffi`` takes torch tensors through DLPack without
copying); only non-contiguous inputs are made contiguous first (the kernels assume the compact layout of
their buffer shapes), and outputs are always allocated contiguous. The kernels update the state buffers in
place, so the caller's initial state is copied once. ``cu_seqlens`` runs the kernel once per sequence on
views of the packed tensors (batch size 1, so every view is contiguous). ``common.poison_outputs()`` makes every
output and scratch buffer start as NaN, so a test sees any element a kernel forgot to write.

``ea_ops_tvm::forward``, ``ea_ops_tvm::backward`` and ``ea_ops_tvm::step`` are custom ops with fake
implementations and registered autograd formulas, so ``torch.compile`` can hold them without graph breaks
(the step's gradient is the causal backward at ``T = 1``). The backward op has
no derivative of its own: its autograd formula refuses second derivatives with a clear error.
"""

from __future__ import annotations

import math
import os
import threading

import torch
from torch import Tensor

from ..common import float32_state, new_buffer, poisoning, refuse_double_backward, segments_of
from . import build

_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def kernel_dtype(dtype: torch.dtype) -> str:
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise TypeError(f"the TVM backend takes float32, bfloat16 or float16 tensors, got {dtype}") from None


def _arg(t: Tensor) -> Tensor:
    """A tensor as the kernels take it: bfloat16 as its int16 bits (a view, no copy)."""
    return t.view(torch.int16) if t.dtype == torch.bfloat16 else t


def set_threads_once() -> None:
    """TVM's CPU thread pool reads TVM_NUM_THREADS when it starts; without it TVM takes half the
    hardware threads (1 on a 2-core machine). Match torch's intra-op thread count unless the user chose."""
    os.environ.setdefault("TVM_NUM_THREADS", str(torch.get_num_threads()))


_scratch = threading.local()


def backward_scratch(B: int, T: int, H: int, D: int, device) -> list[Tensor]:
    """``C, CO, MM [B, T, H, D]`` float32 for the causal backward, reused across calls in this thread.

    Fresh multi-megabyte allocations are fresh pages: at T = 4096 the page faults cost more than the
    kernel. Keeps the largest buffer used so far per device (3 B T H D floats).
    """
    n = B * T * H * D
    key = str(device)
    buf = getattr(_scratch, "bufs", {}).get(key)
    if buf is None or buf.numel() < 3 * n:
        buf = torch.empty(3 * n, device=device, dtype=torch.float32)
        _scratch.bufs = {**getattr(_scratch, "bufs", {}), key: buf}
    if poisoning():
        buf.fill_(math.nan)
    return [buf[i * n:(i + 1) * n].view(B, T, H, D) for i in range(3)]


def _empty_state(n: int, H: int, t1: int, D: int, device) -> tuple[Tensor, Tensor, Tensor]:
    S = torch.zeros(n, H, t1, D, device=device, dtype=torch.float32)
    return S, S.clone(), torch.full((n, H, D), math.inf, device=device, dtype=torch.float32)


def _views(offsets: list[int], T: int, B: int):
    """``(time slice, state slice)`` per sequence: the whole batch, or one sequence per segment."""
    if not offsets:
        return [(slice(0, T), slice(0, B))]
    return [(slice(b, e), slice(i, i + 1)) for i, (b, e) in enumerate(segments_of(offsets, T))]


def forward_impl(q: Tensor, k: Tensor, v: Tensor, S0: Tensor, Z0: Tensor, M0: Tensor, order: int,
                 causal: bool, scale: float, offsets: list[int]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``o`` and the final state (causal; empty tensors otherwise). ``q, k, v [B, T, H, D]``."""
    set_threads_once()
    q, k, v = (t.contiguous() for t in (q, k, v))
    B, T, H, D = q.shape
    o = new_buffer(q.shape, q.dtype, q.device)
    r = math.sqrt(scale)
    if causal:
        S, Z, M = float32_state(S0, Z0, M0, copy=True)
    else:  # no state: three distinct empty outputs (custom-op returns must not alias)
        S, Z, M = (q.new_empty(0, dtype=torch.float32) for _ in range(3))
    if o.numel() == 0:  # no token or no channel (the kernels cannot be built for H or D = 0)
        return o, S, Z, M
    comp = build.kernel_for("forward", causal, order, kernel_dtype(q.dtype), H, D, T)
    for ts, ss in _views(offsets, T, B):
        if ts.stop == ts.start:
            continue
        if causal:
            st = (S[ss], Z[ss], M[ss])
        else:
            st = _empty_state(ss.stop - ss.start, H, order + 1, D, q.device)
        comp.fn(*(_arg(t[:, ts]) for t in (q, k, v, o)), *st, r)
    return o, S, Z, M


def backward_impl(q: Tensor, k: Tensor, v: Tensor, g: Tensor, S0: Tensor, Z0: Tensor, M0: Tensor, order: int,
                  causal: bool, scale: float, offsets: list[int]) -> tuple[Tensor, Tensor, Tensor]:
    """``dq, dk, dv`` (in the input dtype) of ``sum(g * o)``; the state gets no gradient."""
    set_threads_once()
    q, k, v = (t.contiguous() for t in (q, k, v))
    g = g.to(q.dtype).contiguous()
    B, T, H, D = q.shape
    t1 = order + 1
    dq, dk, dv = (new_buffer(q.shape, q.dtype, q.device) for _ in range(3))
    if dq.numel() == 0:
        return dq, dk, dv
    r = math.sqrt(scale)
    comp = build.kernel_for("backward", causal, order, kernel_dtype(q.dtype), H, D, T)
    f32 = dict(device=q.device, dtype=torch.float32)
    if causal:
        S, Z, M = float32_state(S0, Z0, M0, copy=True)
        scratch = backward_scratch(B, T, H, D, q.device)  # C, CO, MM
    for ts, ss in _views(offsets, T, B):
        n = ss.stop - ss.start
        if ts.stop == ts.start:
            continue
        U = torch.zeros(n, H, t1, D, **f32)
        W = torch.zeros_like(U)
        seq = tuple(_arg(t[:, ts]) for t in (q, k, v, g))
        grads = tuple(_arg(t[:, ts]) for t in (dq, dk, dv))
        if causal:
            MN = torch.full((n, H, D), -math.inf, **f32)
            comp.fn(*seq, S[ss], Z[ss], M[ss], *(c[:, ts] for c in scratch), U, W, MN, *grads, r)
        else:
            comp.fn(*seq, *_empty_state(n, H, t1, D, q.device), U, W, *grads, r)
    return dq, dk, dv


def step_impl(q: Tensor, k: Tensor, v: Tensor, S0: Tensor, Z0: Tensor, M0: Tensor, order: int,
              scale: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One token ``[B, H, D]``: the causal forward kernel at ``T = 1`` (its own records and cache slot)."""
    set_threads_once()
    q, k, v = (t.contiguous() for t in (q, k, v))
    B, H, D = q.shape
    o = new_buffer(q.shape, q.dtype, q.device)
    S, Z, M = float32_state(S0, Z0, M0, copy=True)
    if o.numel() == 0:
        return o, S, Z, M
    comp = build.kernel_for("step", True, order, kernel_dtype(q.dtype), H, D, 1)
    comp.fn(*(_arg(t.unsqueeze(1)) for t in (q, k, v, o)), S, Z, M, math.sqrt(scale))
    return o, S, Z, M


# ------------------------------------------------------------------------------------------ custom ops
@torch.library.custom_op("ea_ops_tvm::forward", mutates_args=())
def forward_op(q: Tensor, k: Tensor, v: Tensor, S0: Tensor, Z0: Tensor, M0: Tensor, order: int, causal: bool,
               scale: float, offsets: list[int]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return forward_impl(q, k, v, S0, Z0, M0, order, causal, scale, offsets)


@forward_op.register_fake
def _forward_fake(q, k, v, S0, Z0, M0, order, causal, scale, offsets):
    if causal:
        st = (S0.new_empty(S0.shape, dtype=torch.float32), Z0.new_empty(Z0.shape, dtype=torch.float32),
              M0.new_empty(M0.shape, dtype=torch.float32))
    else:
        st = tuple(q.new_empty(0, dtype=torch.float32) for _ in range(3))
    return (torch.empty_like(q, memory_format=torch.contiguous_format), *st)


@torch.library.custom_op("ea_ops_tvm::backward", mutates_args=())
def backward_op(q: Tensor, k: Tensor, v: Tensor, g: Tensor, S0: Tensor, Z0: Tensor, M0: Tensor, order: int,
                causal: bool, scale: float, offsets: list[int]) -> tuple[Tensor, Tensor, Tensor]:
    return backward_impl(q, k, v, g, S0, Z0, M0, order, causal, scale, offsets)


@backward_op.register_fake
def _backward_fake(q, k, v, g, S0, Z0, M0, order, causal, scale, offsets):
    return tuple(torch.empty_like(q, memory_format=torch.contiguous_format) for _ in range(3))


@torch.library.custom_op("ea_ops_tvm::step", mutates_args=())
def step_op(q: Tensor, k: Tensor, v: Tensor, S0: Tensor, Z0: Tensor, M0: Tensor, order: int,
            scale: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return step_impl(q, k, v, S0, Z0, M0, order, scale)


@step_op.register_fake
def _step_fake(q, k, v, S0, Z0, M0, order, scale):
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            *(t.new_empty(t.shape, dtype=torch.float32) for t in (S0, Z0, M0)))


def _setup_context(ctx, inputs, output):
    q, k, v, S0, Z0, M0, order, causal, scale, offsets = inputs
    ctx.save_for_backward(q, k, v, S0, Z0, M0)
    ctx.meta = (order, causal, scale, offsets)
    ctx.mark_non_differentiable(*output[1:])


def _backward(ctx, go, *_state_grads):
    q, k, v, S0, Z0, M0 = ctx.saved_tensors
    dq, dk, dv = backward_op(q, k, v, go, S0, Z0, M0, *ctx.meta)
    return dq, dk, dv, None, None, None, None, None, None, None


forward_op.register_autograd(_backward, setup_context=_setup_context)


def _step_setup_context(ctx, inputs, output):
    q, k, v, S0, Z0, M0, order, scale = inputs
    ctx.save_for_backward(q, k, v, S0, Z0, M0)
    ctx.meta = (order, scale)
    ctx.mark_non_differentiable(*output[1:])


def _step_backward(ctx, go, *_state_grads):
    """The causal backward at ``T = 1`` from the step's input state (which gets no gradient)."""
    q, k, v, S0, Z0, M0 = ctx.saved_tensors
    order, scale = ctx.meta
    grads = backward_op(*(t.unsqueeze(1) for t in (q, k, v, go)), S0, Z0, M0, order, True, scale, [])
    return (*(t.squeeze(1) for t in grads), None, None, None, None, None)


step_op.register_autograd(_step_backward, setup_context=_step_setup_context)


backward_op.register_autograd(refuse_double_backward("ea_ops_tvm::backward"))
