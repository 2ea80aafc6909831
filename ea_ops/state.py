"""The recurrent state of causal EA: float32 sums with a per-channel stabilising offset."""

from __future__ import annotations

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
        return EAState(self.S.to(*args, **kwargs), self.Z.to(*args, **kwargs), self.m.to(*args, **kwargs))

    def clone(self) -> EAState:
        return EAState(self.S.clone(), self.Z.clone(), self.m.clone())
