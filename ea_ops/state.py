"""The recurrent state of causal EA: float32 sums with a per-channel stabilising offset."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class EAState:
    """Prefix sums of EA-t for every channel, stored scaled by ``exp(m)``.

    With ``y = sqrt(scale) * k`` and the symmetric features ``f_n(y) = (sqrt(2) y)^n / sqrt(n!)``
    (``f_n(x) f_n(y) = (2xy)^n / n!``), after keys ``j`` of one channel:

    - ``S[b, h, n, d] = sum_j exp(m - y_j^2) f_n(y_j) v_j``  shape ``[B, H, t+1, D]``
    - ``Z[b, h, n, d] = sum_j exp(m - y_j^2) f_n(y_j)``      shape ``[B, H, t+1, D]``
    - ``m[b, h, d]    = min_j y_j^2`` (``+inf`` before any key) shape ``[B, H, D]``

    Every stored term has ``exp(m - y_j^2) <= 1``, so keys far from zero never underflow the sums to 0/0.
    The sums are float32 (float64 when the inputs were float64). States are data, not autograd leaves:
    gradients flow to ``q, k, v`` only.
    """

    S: torch.Tensor
    Z: torch.Tensor
    m: torch.Tensor

    @property
    def order(self) -> int:
        return self.S.shape[2] - 1

    @classmethod
    def empty(
        cls,
        batch: int,
        heads: int,
        dim: int,
        order: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> EAState:
        """The state before any token: zero sums, ``m = +inf``."""
        S = torch.zeros(batch, heads, order + 1, dim, device=device, dtype=dtype)
        m = torch.full((batch, heads, dim), float("inf"), device=device, dtype=dtype)
        return cls(S, S.clone(), m)

    def to(self, *args, **kwargs) -> EAState:
        """``Tensor.to`` on each field (device, dtype, ``non_blocking``...)."""
        return EAState(self.S.to(*args, **kwargs), self.Z.to(*args, **kwargs), self.m.to(*args, **kwargs))

    def clone(self) -> EAState:
        return EAState(self.S.clone(), self.Z.clone(), self.m.clone())

    def index_select(self, index: torch.Tensor) -> EAState:
        """The states of the batch rows ``index`` (an int tensor ``[N]``, repeats allowed): batch selection
        and beam-search reordering. A new state; ``self`` is unchanged."""
        if not isinstance(index, torch.Tensor):
            raise TypeError(f"index must be a torch.Tensor, got {type(index).__name__}")
        if index.dtype not in (torch.int32, torch.int64) or index.dim() != 1:
            raise ValueError(f"index must be a 1-d int32 or int64 tensor, got {index.dtype} of shape "
                             f"{tuple(index.shape)}")
        index = index.to(self.S.device)
        return EAState(*(t.index_select(0, index) for t in (self.S, self.Z, self.m)))

    @classmethod
    def cat(cls, states: Sequence[EAState]) -> EAState:
        """The states of several batches as one, in order along the batch (``[B1 + B2 + ..., H, t+1, D]``):
        all of one order, head and channel count, dtype and device."""
        states = list(states)
        if not states:
            raise ValueError("states must hold at least one EAState")
        for i, st in enumerate(states):
            if not isinstance(st, EAState):
                raise TypeError(f"states[{i}] must be an ea_ops.EAState, got {type(st).__name__}")
            first = states[0]
            if st.S.shape[1:] != first.S.shape[1:] or st.m.shape[1:] != first.m.shape[1:]:
                raise ValueError(f"states[{i}] has sums {list(st.S.shape)}, states[0] {list(first.S.shape)}: "
                                 "only the batch may differ")
            if st.S.dtype != first.S.dtype or st.S.device != first.S.device:
                raise ValueError(f"states[{i}] is {st.S.dtype} on {st.S.device}, states[0] {first.S.dtype} on "
                                 f"{first.S.device}")
        return cls(*(torch.cat([getattr(st, f) for st in states]) for f in ("S", "Z", "m")))

    def copy_(self, src: EAState) -> EAState:
        """Write ``src`` into this state's tensors, in place (their addresses stay: a state captured by a CUDA
        graph or held by ``EADecoder``); ``src`` of the same shapes. Returns ``self``."""
        if not isinstance(src, EAState):
            raise TypeError(f"src must be an ea_ops.EAState, got {type(src).__name__}")
        for f in ("S", "Z", "m"):
            dst, s = getattr(self, f), getattr(src, f)
            if dst.shape != s.shape:
                raise ValueError(f"src.{f} must have shape {list(dst.shape)}, got {list(s.shape)}")
        for f in ("S", "Z", "m"):
            getattr(self, f).copy_(getattr(src, f))
        return self
