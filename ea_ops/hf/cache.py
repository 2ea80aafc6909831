"""``EACache``: a transformers ``Cache`` holding one ``EAState`` per layer (O(t D) per layer, whatever the
context length), with the batch operations ``generate`` uses (beam search, batch selection, repetition)."""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache

from ..state import EAState


class EACacheLayer:
    """One layer's state: ``state`` (``EAState`` with sums ``[B, H_kv, t+1, D]``, or None before any token) and the
    number of positions it has seen (padding included, as a KV cache counts them)."""

    is_compileable = False  # states are replaced by each call, not written in place (EADecoder does that)
    is_sliding = False
    is_croppable = False
    supports_early_init = False
    is_initialized = False

    def __init__(self) -> None:
        self.state: EAState | None = None
        self.seen = 0

    def __repr__(self) -> str:
        shape = None if self.state is None else tuple(self.state.S.shape)
        return f"EACacheLayer(seen={self.seen}, S={shape})"

    @property
    def batch_size(self) -> int:
        return -1 if self.state is None else self.state.S.shape[0]

    def get_seq_length(self) -> int:
        return self.seen

    def get_max_length(self) -> int:
        return -1  # no limit: the state does not grow

    def reset(self) -> None:
        self.state, self.seen = None, 0

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.state is not None:
            self.state = self.state.index_select(beam_idx)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.state is not None:
            indices = torch.as_tensor(indices)
            if indices.dtype == torch.bool:  # a mask of the rows to keep, as a KV cache's indexing takes it
                indices = indices.nonzero()[:, 0]
            self.state = self.state.index_select(indices.to(torch.int64))

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.state is not None:
            idx = torch.arange(self.state.S.shape[0], device=self.state.S.device).repeat_interleave(repeats)
            self.state = self.state.index_select(idx)

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("an EA state cannot forget tokens (no crop: assisted decoding is not supported)")

    def offload(self) -> None:
        if self.state is not None:
            self.state = self.state.to("cpu", non_blocking=True)

    def prefetch(self) -> None:
        pass


class EACache(Cache):
    """The state of every ``ElementwiseAttention`` layer of a model, for ``generate`` and manual decoding.

    ``EACache(num_layers)``; ``get_state(i)`` / ``update(state, i, num_tokens)`` read and replace layer ``i``'s
    ``EAState``; ``get_seq_length()`` is the number of positions seen. ``reorder_cache(beam_idx)`` (beam search),
    ``batch_select_indices(indices)`` and ``batch_repeat_interleave(repeats)`` select along the batch.
    """

    def __init__(self, num_layers: int | None = None, config: object = None) -> None:
        if num_layers is None:
            num_layers = getattr(config, "num_hidden_layers", None)
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"num_layers must be a positive int (or a config with num_hidden_layers), "
                             f"got {num_layers!r}")
        super().__init__(layers=[EACacheLayer() for _ in range(num_layers)])

    def get_state(self, layer_idx: int) -> EAState | None:
        """Layer ``layer_idx``'s state (None before its first token)."""
        return self.layers[layer_idx].state

    def update(self, state: EAState, layer_idx: int, num_tokens: int) -> EAState:  # type: ignore[override]
        """Replace layer ``layer_idx``'s state by ``state``, after ``num_tokens`` more positions."""
        if not isinstance(state, EAState):
            raise TypeError(f"state must be an ea_ops.EAState, got {type(state).__name__}")
        layer = self.layers[layer_idx]
        layer.state = state
        layer.seen += int(num_tokens)
        return state

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.layers[layer_idx].seen

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.get_seq_length(layer_idx) + query_length, 0

    @property
    def is_compileable(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"EACache(layers={self.layers})"
