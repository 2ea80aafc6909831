"""``backend="torch"``: the dispatch interface of ``ea_ops.dispatch`` over the torch backend (any device).

The reference every compiled kernel is tested against; never preferred by ``auto`` where a compiled
backend can run the call.
"""

from __future__ import annotations

import torch

from .ops import attention, recurrent_step

__all__ = ["EXTRA", "NAME", "attention", "explain", "prefers", "recurrent_step", "supports",
           "unavailable_reason"]

NAME = "torch"
EXTRA = None


def unavailable_reason() -> str | None:
    return None


def supports(q: torch.Tensor, *, causal: bool, order: int, needs_grad: bool) -> str | None:
    return None


def prefers(q: torch.Tensor, order: int) -> bool:
    return False


def explain(q: torch.Tensor, *, order: int, causal: bool, needs_grad: bool) -> dict:
    """The chunk length of the chunked scan for this call (``kernels.chunk_size``; a step has none)."""
    from .kernels import chunk_size

    if q.dim() == 3:
        return {"algorithm": "one recurrent step in torch"}
    B, T, H, D = q.shape
    return {"algorithm": "chunked scan in torch (the reference)", "chunk": chunk_size(B * H * D, T)}
