"""What the compiled backends (TVM, Triton) share, once: the state and sequence inputs of their custom ops,
the names of the scan variants, the lane threshold of GPU schedules, NaN-poisoned buffers for tests, and the
refusal of second derivatives.

``cu_seqlens`` reaches a backend as a list of ``(begin, end)`` pairs (``ea_ops.checks.check_cu_seqlens``); a
custom op takes it as the flat ``N+1`` offsets (``offsets_of``); the kernels walk pairs again
(``segments_of``). States enter as three float32 tensors ``S, Z [n, H, t+1, D]``, ``m [n, H, D]``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from ..state import EAState

# Variants of a causal scan: one sequential scan per channel ("scan"), or T split into chunks whose sums are
# combined by a prefix over chunk states ("chunked"). Records and configs name them so.
SCAN, CHUNKED = "scan", "chunked"
VARIANTS = (SCAN, CHUNKED)
# Independent (channel, chunk) scans a GPU needs in flight to hide memory latency (DESIGN.md "Measuring
# speed"): below it the untuned default splits T into chunks.
LANES_TARGET = 1 << 17

_POISON = False


def offsets_of(segments: list[tuple[int, int]] | None) -> list[int]:
    """``(begin, end)`` pairs -> the ``N+1`` offsets a custom op takes (``[]``: one sequence per batch row)."""
    if segments is None:
        return []
    return [segments[0][0]] + [e for _, e in segments]


def segments_of(offsets: list[int], T: int | None = None) -> list[tuple[int, int]] | None:
    """Offsets -> ``(begin, end)`` pairs; ``[]`` gives ``[(0, T)]`` when ``T`` is given, else None."""
    if offsets:
        return list(zip(offsets[:-1], offsets[1:]))
    return None if T is None else [(0, T)]


def op_state_inputs(q: Tensor, order: int, causal: bool, initial_state: EAState | None,
                    cu_seqlens: list[tuple[int, int]] | None) -> tuple[list[int], Tensor, Tensor, Tensor]:
    """What a compiled backend's custom op takes besides ``q, k, v``: ``(offsets, S0, Z0, m0)``.

    The state is ``initial_state`` or the empty one (one row per sequence), or three empty tensors when
    non-causal (custom-op inputs are tensors, never None).
    """
    B, _, H, D = q.shape
    offsets = offsets_of(cu_seqlens)
    if not causal:
        return (offsets, *(q.new_empty(0, dtype=torch.float32) for _ in range(3)))
    n = B if cu_seqlens is None else len(cu_seqlens)
    st = initial_state or EAState.empty(n, H, D, order, device=q.device)
    return offsets, st.S, st.Z, st.m


def float32_state(S0: Tensor, Z0: Tensor, M0: Tensor, *, copy: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Contiguous float32 state tensors; ``copy`` (never the caller's memory) for kernels that update them
    in place. (``Tensor.to(memory_format=...)`` without a copy returns a strided float32 tensor as it is.)"""
    out = []
    for t in (S0, Z0, M0):
        c = t.to(torch.float32).contiguous()
        out.append(c.clone() if copy and c.data_ptr() == t.data_ptr() else c)
    return tuple(out)


@contextlib.contextmanager
def poison_outputs() -> Iterator[None]:
    """Within the block, every output and scratch buffer of the compiled backends starts as NaN, so a test
    sees any element a kernel forgot to write."""
    global _POISON
    old, _POISON = _POISON, True
    try:
        yield
    finally:
        _POISON = old


def poisoning() -> bool:
    """Whether ``poison_outputs`` is active (for buffers that are reused rather than allocated)."""
    return _POISON


def new_buffer(shape, dtype: torch.dtype, device) -> Tensor:
    """A contiguous output or scratch buffer (NaN under ``poison_outputs``)."""
    if _POISON:
        return torch.full(shape, math.nan, dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def refuse_double_backward(op: str) -> Callable:
    """An autograd formula for the backward custom op ``op``, which has no derivative of its own: asking for
    one (``create_graph=True``, then a backward through the gradients; ``gradgradcheck``) raises."""

    def refuse(ctx, *grads):
        raise RuntimeError(
            f"double backward is not supported by the compiled ea-ops backends ({op}, the gradient of their "
            "kernels, has no derivative of its own); backend='torch' computes second derivatives")

    return refuse
