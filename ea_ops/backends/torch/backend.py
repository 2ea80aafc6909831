"""``backend="torch"``: the dispatch interface of ``ea_ops.dispatch`` over the torch backend (any device).

The reference every compiled kernel is tested against; never preferred by ``auto`` where a compiled
backend can run the call.
"""

from __future__ import annotations

import torch

from .ops import attention, recurrent_step

__all__ = ["EXTRA", "NAME", "attention", "prefers", "recurrent_step", "supports", "unavailable_reason"]

NAME = "torch"
EXTRA = None


def unavailable_reason() -> str | None:
    return None


def supports(q: torch.Tensor, *, causal: bool, order: int, needs_grad: bool) -> str | None:
    return None


def prefers(q: torch.Tensor, order: int) -> bool:
    return False
