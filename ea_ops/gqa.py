"""Grouped-query attention: ``k, v`` (and the state) with ``H_kv`` heads read by ``H = G H_kv`` query heads,
query head ``h`` reading kv head ``h // G``.

The kernels take one head per query head, so the operators broadcast here (a first form; the state a caller holds
stays ``[B, H_kv, t+1, D]``): the sums of a kv head depend on its keys and values alone, so the ``G`` query heads
of a group build the same state, and head ``j G`` of the broadcast result is kv head ``j``'s.
"""

from __future__ import annotations

from torch import Tensor

from .state import EAState


def broadcast(t: Tensor, groups: int, dim: int) -> Tensor:
    """``t`` with each head along ``dim`` repeated ``groups`` times (differentiable: gradients sum per group)."""
    return t if groups == 1 else t.repeat_interleave(groups, dim=dim)


def broadcast_state(state: EAState | None, groups: int) -> EAState | None:
    """A ``[B, H_kv, ...]`` state as the ``[B, H, ...]`` one of its query heads."""
    if state is None or groups == 1:
        return state
    return EAState(*(broadcast(t, groups, 1) for t in (state.S, state.Z, state.m)))


def fold_state(state: EAState | None, groups: int) -> EAState | None:
    """A ``[B, H, ...]`` state of query heads back to its ``[B, H_kv, ...]`` kv heads (head ``j G`` of each)."""
    if state is None or groups == 1:
        return state
    return EAState(*(t[:, ::groups].contiguous() for t in (state.S, state.Z, state.m)))
