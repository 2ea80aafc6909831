"""PyTorch integration of the TVM kernels: zero-copy calls through DLPack, and ``torch.library`` custom ops.

Tensors go to the compiled functions as they are (``tvm_ffi`` takes torch tensors through DLPack without
copying); only non-contiguous inputs are made contiguous first (the kernels assume the compact layout of
their buffer shapes), and outputs are always allocated contiguous. The kernels update the state buffers in
place, so the caller's initial state is copied once. ``cu_seqlens`` runs the kernel once per sequence on
views of the packed tensors (batch size 1, so every view is contiguous). ``common.poison_outputs()`` makes every
output and scratch buffer start as NaN, so a test sees any element a kernel forgot to write.

CUDA tensors run the CUDA kernels of their GPU's arch (``build.kernel_for(..., target="sm_90")``: a loaded pack's
or built here), launched on torch's current stream of the tensors' device (``cuda_device.launch``); the chunked
causal forward gets its chunk-state scratch ``SC, ZC, MC`` here (``args.table``).

``ea_ops_tvm::forward``, ``ea_ops_tvm::backward`` and ``ea_ops_tvm::step`` are the custom ops of
``common.define_ops`` (fake implementations and autograd), so ``torch.compile`` holds them without graph breaks.
"""

from __future__ import annotations

import math
import os
import threading

import torch
from torch import Tensor

from ...records import mean_length
from ..common import CHUNKED, KERNEL_DTYPES, define_ops, float32_state, new_buffer, no_state, poisoning, segments_of
from . import build, cuda_device


def kernel_dtype(dtype: torch.dtype) -> str:
    try:
        return KERNEL_DTYPES[dtype]
    except KeyError:
        raise TypeError(f"the TVM backend takes float32, bfloat16 or float16 tensors, got {dtype}") from None


def _arg(t: Tensor) -> Tensor:
    """A tensor as the kernels take it: bfloat16 as its int16 bits (a view, no copy)."""
    return t.view(torch.int16) if t.dtype == torch.bfloat16 else t


def target_of(t: Tensor) -> str:
    """``"cpu"`` or the CUDA arch of ``t``'s GPU: the kernels' target (``cuda_device.target_of``)."""
    return "cpu" if t.device.type == "cpu" else cuda_device.target_of(t.device)


def run(comp, device: torch.device, args: tuple) -> None:
    """One kernel call: directly on a CPU, on the current stream of ``device``'s GPU otherwise."""
    if device.type == "cpu":
        comp.fn(*args)
    else:
        cuda_device.launch(comp.fn, device, args)


def chunk_scratch(comp, target: str, n: int, H: int, T: int, t1: int, D: int, device) -> tuple[Tensor, ...]:
    """``SC, ZC [n, H, NC, t+1, D]`` and ``MC [n, H, NC, D]`` float32, ``NC = ceil(T / chunk)``: the chunked CUDA
    forward's chunk states (written before they are read), or nothing for every other kernel."""
    if target == "cpu" or comp.config.get("variant") != CHUNKED:
        return ()
    nc = -(-T // int(comp.config["chunk"]))
    return (new_buffer((n, H, nc, t1, D), torch.float32, device), new_buffer((n, H, nc, t1, D), torch.float32, device),
            new_buffer((n, H, nc, D), torch.float32, device))


def set_threads_once() -> None:
    """TVM's CPU thread pool reads TVM_NUM_THREADS when it starts; without it TVM takes half the
    hardware threads (1 on a 2-core machine). Match torch's intra-op thread count unless the user chose."""
    os.environ.setdefault("TVM_NUM_THREADS", str(torch.get_num_threads()))


_scratch = threading.local()


def backward_scratch(B: int, T: int, H: int, D: int, device) -> list[Tensor]:
    """``C, CO, MM [B, T, H, D]`` float32 for the causal backward, reused across calls in this thread.

    Fresh multi-megabyte allocations are fresh pages: at T = 4096 the page faults cost more than the
    kernel. Keeps the largest buffer used so far per device (3 B T H D floats). On a GPU, fresh buffers from
    torch's caching allocator (stream-ordered: a kept one could be in use by a kernel on another stream).
    """
    n = B * T * H * D
    if torch.device(device).type != "cpu":  # kept buffers would be shared across streams; the allocator is cheap
        return [new_buffer((B, T, H, D), torch.float32, device) for _ in range(3)]
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


def _record_length(T: int, offsets: list[int]) -> int:
    """The length records are looked up by: ``T``, or with ``cu_seqlens`` the mean sequence length (each
    sequence runs as its own launch; ``records.t_bucket``, docs/design.md section 5)."""
    return mean_length(T, len(offsets) - 1) if offsets else T


def forward_impl(q: Tensor, k: Tensor, v: Tensor, S0: Tensor, Z0: Tensor, M0: Tensor, order: int,
                 causal: bool, scale: float, offsets: list[int],
                 want_state: bool = True, out: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``o`` and the final state (``causal and want_state``; empty tensors otherwise). ``q, k, v [B, T, H, D]``.

    The causal kernel updates a state in any case (a copy of the initial one). ``out``: a contiguous buffer
    like ``q`` to write ``o`` into (``checks.check_out``), instead of a new one."""
    set_threads_once()
    q, k, v = (t.contiguous() for t in (q, k, v))
    B, T, H, D = q.shape
    o = new_buffer(q.shape, q.dtype, q.device) if out is None else out
    r = math.sqrt(scale)
    if causal:
        S, Z, M = float32_state(S0, Z0, M0, copy=True)
    else:
        S, Z, M = no_state(q)
    if o.numel() == 0:  # no token or no channel (the kernels cannot be built for H or D = 0)
        return (o, S, Z, M) if causal and want_state else (o, *no_state(q))
    target = target_of(q)
    comp = build.kernel_for("forward", causal, order, kernel_dtype(q.dtype), H, D, _record_length(T, offsets),
                            target=target, channels=(1 if offsets else B) * H * D)
    for ts, ss in _views(offsets, T, B):
        if ts.stop == ts.start:
            continue
        n = ss.stop - ss.start
        if causal:
            st = (S[ss], Z[ss], M[ss])
        else:
            st = _empty_state(n, H, order + 1, D, q.device)
        chunks = chunk_scratch(comp, target, n, H, ts.stop - ts.start, order + 1, D, q.device)
        run(comp, q.device, (*(_arg(t[:, ts]) for t in (q, k, v, o)), *st, *chunks, r))
    return (o, S, Z, M) if causal and want_state else (o, *no_state(q))


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
    comp = build.kernel_for("backward", causal, order, kernel_dtype(q.dtype), H, D, _record_length(T, offsets),
                            target=target_of(q), channels=(1 if offsets else B) * H * D)
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
            run(comp, q.device, (*seq, S[ss], Z[ss], M[ss], *(c[:, ts] for c in scratch), U, W, MN, *grads, r))
        else:
            run(comp, q.device, (*seq, *_empty_state(n, H, t1, D, q.device), U, W, *grads, r))
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
    target = target_of(q)
    comp = build.kernel_for("step", True, order, kernel_dtype(q.dtype), H, D, 1, target=target, channels=B * H * D)
    run(comp, q.device, step_args(q, k, v, o, S, Z, M, scale, cuda=target != "cpu"))
    return o, S, Z, M


def step_args(q: Tensor, k: Tensor, v: Tensor, o: Tensor, S: Tensor, Z: Tensor, M: Tensor, scale: float,
              cuda: bool = False) -> tuple:
    """The step kernel's arguments: ``q, k, v, o [B, H, D]`` (contiguous; the CPU kernel takes them as they are,
    the CUDA one, the causal forward at T = 1, as ``[B, 1, H, D]`` views), the float32 state
    ``S, Z [B, H, t+1, D]``, ``M [B, H, D]`` (contiguous; updated in place), ``sqrt(scale)``."""
    seq = (q, k, v, o) if not cuda else (t.unsqueeze(1) for t in (q, k, v, o))
    return (*(_arg(t) for t in seq), S, Z, M, math.sqrt(scale))


def stepper(S: Tensor, Z: Tensor, M: Tensor, *, order: int, scale: float, dtype: torch.dtype):
    """``step(q, k, v) -> o``: one token ``[B, H, D]`` of ``dtype`` (validated, contiguous, nothing to
    differentiate, not under ``torch.compile``) that updates the float32 state ``S, Z, M`` in place.

    The kernel is chosen (records read) and built once, here; a call is an output allocation and the kernel.
    """
    set_threads_once()
    B, H, _, D = S.shape
    if S.device.type == "cuda":
        return _cuda_stepper(S, Z, M, order=order, scale=scale, dtype=dtype)
    fn = build.kernel_for("step", True, order, kernel_dtype(dtype), H, D, 1).fn
    r = math.sqrt(scale)
    shape, dev = (B, H, D), S.device

    # empty_like of the (contiguous) input: 0.7 us against torch.empty's 1.0 us, a third of what a step
    # adds to its kernel at B = 1.
    def step(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        o = new_buffer(shape, dtype, dev) if poisoning() else torch.empty_like(q)
        fn(q, k, v, o, S, Z, M, r)
        return o

    def step_bf16(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        o = new_buffer(shape, dtype, dev) if poisoning() else torch.empty_like(q)
        fn(*(_arg(t) for t in (q, k, v, o)), S, Z, M, r)
        return o

    return step_bf16 if dtype == torch.bfloat16 else step


def _cuda_stepper(S: Tensor, Z: Tensor, M: Tensor, *, order: int, scale: float, dtype: torch.dtype):
    """``stepper`` on a GPU: the same kernel as ``step_impl``, chosen once, on the current stream at each call."""
    B, H, _, D = S.shape
    dev = S.device
    comp = build.kernel_for("step", True, order, kernel_dtype(dtype), H, D, 1, target=target_of(S), channels=B * H * D)

    def step(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        o = new_buffer((B, H, D), dtype, dev) if poisoning() else torch.empty_like(q)
        run(comp, dev, step_args(q, k, v, o, S, Z, M, scale, cuda=True))
        return o

    return step


# ------------------------------------------------------------------------------------------ custom ops
forward_op, backward_op, step_op = define_ops("ea_ops_tvm", forward_impl, backward_impl, step_impl)
