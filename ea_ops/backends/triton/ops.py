"""PyTorch integration of the Triton kernels: ``torch.library`` custom ops with fake implementations and a
registered autograd formula, so ``torch.compile`` holds them without graph breaks (the step's gradient is the
causal backward at ``T = 1`` from the step's input state).

``ea_ops_triton::forward(q, k, v, S0, Z0, M0, order, causal, scale, offsets, want_state)`` returns
``(o, S, Z, M)``: the final state when ``causal and want_state`` (else three empty float32 tensors; custom-op
outputs must not alias). ``offsets`` is ``cu_seqlens`` as a list (empty: one sequence per batch entry).
The backward saves only ``q, k, v`` and the initial state: the kernels recompute everything else. The
backward op has no derivative of its own; under ``create_graph=True`` the gradients are the torch backend's
(``common.graphed_grads``), so second derivatives work.
The configuration of each call comes from ``ea_ops.backends.triton.configs.choose`` (tuned record or default).
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from ..common import KERNEL_DTYPES, define_ops, float32_state, no_state, segments_of
from . import configs, launch
from .target import fingerprint, interpreting


def _config(kernel: str, q: Tensor, *, causal: bool, order: int, n_seqs: int, rows: int) -> dict:
    HD = q.shape[-1] * q.shape[-2]
    fp = fingerprint(q.device) if q.device.type == "cuda" or interpreting() else None
    return configs.choose(kernel, causal=causal, order=order, dtype=KERNEL_DTYPES[q.dtype], HD=HD, n_seqs=n_seqs,
                          rows=rows, fp=fp)


def _on_device(t: Tensor):
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def forward_impl(q: Tensor, k: Tensor, v: Tensor, S0: Tensor, Z0: Tensor, M0: Tensor, order: int, causal: bool,
                 scale: float, offsets: list[int], want_state: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    q, k, v = (t.contiguous() for t in (q, k, v))
    B, T, H, D = q.shape
    segments = segments_of(offsets)
    n_seqs = B if segments is None else len(segments)
    if q.numel() == 0 or n_seqs == 0:
        o = torch.empty_like(q)
        if causal and want_state:
            return (o, *float32_state(S0, Z0, M0, copy=True))
        return (o, *no_state(q))
    cfg = _config("forward", q, causal=causal, order=order, n_seqs=n_seqs, rows=B * T)
    state = float32_state(S0, Z0, M0, copy=False) if causal else None
    with _on_device(q):
        o, final = launch.forward(q, k, v, state, order=order, causal=causal, scale=scale, segments=segments,
                                  want_state=causal and want_state, config=cfg)
    return (o, *(final if final is not None else no_state(q)))


def backward_impl(q: Tensor, k: Tensor, v: Tensor, g: Tensor, S0: Tensor, Z0: Tensor, M0: Tensor, order: int,
                  causal: bool, scale: float, offsets: list[int]) -> tuple[Tensor, Tensor, Tensor]:
    q, k, v = (t.contiguous() for t in (q, k, v))
    g = g.to(q.dtype).contiguous()
    B, T, H, D = q.shape
    segments = segments_of(offsets)
    n_seqs = B if segments is None else len(segments)
    if q.numel() == 0 or n_seqs == 0:
        return tuple(torch.zeros_like(q) for _ in range(3))
    cfg = _config("backward", q, causal=causal, order=order, n_seqs=n_seqs, rows=B * T)
    state = float32_state(S0, Z0, M0, copy=False) if causal else None
    with _on_device(q):
        dq, dk, dv = launch.backward(q, k, v, g, state, order=order, causal=causal, scale=scale,
                                     segments=segments, config=cfg)
    return dq, dk, dv


def step_impl(q: Tensor, k: Tensor, v: Tensor, S0: Tensor, Z0: Tensor, M0: Tensor, order: int,
              scale: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    q, k, v = (t.contiguous() for t in (q, k, v))
    B, H, D = q.shape
    if q.numel() == 0:
        return (torch.empty_like(q), *float32_state(S0, Z0, M0, copy=True))
    cfg = _config("step", q, causal=True, order=order, n_seqs=B, rows=B)
    with _on_device(q):
        o, new = launch.step(q, k, v, float32_state(S0, Z0, M0, copy=False), order=order, scale=scale, config=cfg)
    return (o, *new)


# ------------------------------------------------------------------------------------------ custom ops
forward_op, backward_op, step_op = define_ops("ea_ops_triton", forward_impl, backward_impl, step_impl)
