"""``ElementwiseAttention``: the EA attention layer (projections, q/k normalisation, padding, GQA, prefill and
decode), and its pure-torch reference ``ElementwiseAttentionReference`` (docs/models.md)."""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor, nn

from ..api import ea_attention, ea_recurrent_step
from ..checks import check_backend, check_order
from ..naive import naive_attention
from ..state import EAState
from . import accuracy

QK_NORMS = ("rms", "rms_unbounded", None)
# qk_norm="rms" bounds every normalised channel softly at QK_BOUND: c tanh(q / c), so |sqrt(s) q| < c sqrt(s)
QK_BOUND = 2.0
# the tracker's running mean square is an exponential moving average with this weight for each new batch
TRACK_MOMENTUM = 0.05
# the tracker compares its prediction with the budget (a host sync) once it has seen CHECK_AFTER_TOKENS positions
# (a per-channel RMS from fewer is noisy, and its max over channels biased up), then every CHECK_EVERY calls
CHECK_AFTER_TOKENS = 1024
CHECK_EVERY = 50


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def padding_segments(mask: Tensor) -> tuple[Tensor, Tensor]:
    """``mask [B, T]`` (nonzero = token, one contiguous run per row: left, right or no padding) ->
    ``(cu_seqlens [3B+1] int64 on the CPU, keep [B, T] bool)``: row ``b`` becomes the three packed segments
    ``[pads before, tokens, pads after]``, so that padding never meets a token's sums (exact, not masked)."""
    if not isinstance(mask, Tensor) or mask.dim() != 2:
        raise ValueError(f"attention_mask must be a [B, T] tensor, got {getattr(mask, 'shape', type(mask).__name__)}")
    keep = mask.bool()
    B, T = keep.shape
    n = keep.sum(1)
    first = torch.where(n > 0, keep.int().argmax(1), torch.full_like(n, T))
    pos = torch.arange(T, device=keep.device)
    run = (pos >= first[:, None]) & (pos < (first + n)[:, None])
    if not bool((run == keep).all()):
        raise ValueError("attention_mask must mark one contiguous run of tokens per row (left or right padding); "
                         "pack other layouts with cu_seqlens")
    base = torch.arange(B, device=keep.device) * T
    bounds = torch.stack([base + first, base + first + n, base + T], 1).flatten()
    cu = torch.cat([bounds.new_zeros(1), bounds]).cpu().to(torch.int64)
    return cu, keep


class ElementwiseAttention(nn.Module):
    """Causal element-wise attention (EA-t) as a layer: ``x [B, T, C] -> y [B, T, C]``.

    - ``num_heads`` query heads of ``head_dim = hidden_size // num_heads`` channels; ``num_kv_heads`` (default
      ``num_heads``) key/value heads dividing it: query head ``h`` reads kv head ``h // (num_heads // num_kv_heads)``
      and the state holds one entry per kv head.
    - ``qk_norm="rms"`` (default): q and k are RMS-normalised over each head's channels (learnable per-channel
      weight, initialised to 1), then bounded softly, ``c tanh(q / c)`` with ``c = QK_BOUND = 2``. Every channel then
      stays within ``|x| = |sqrt(s) q| < 2 sqrt(s)`` whatever the weights learn, and ``scale="auto"`` picks the ``s``
      for which the *proven* error bound of EA-``order`` over that range meets ``error_budget``.
      ``"rms_unbounded"``: the RMS normalisation alone (sharper attention is possible, accuracy is not guaranteed:
      ``scale="auto"`` then assumes channel RMS up to 1.25 and the table's typical error; the tracker watches).
      ``None`` leaves the projections as they are. A float ``scale`` fixes ``s``.
    - ``forward(x, state=None, attention_mask=None, use_cache=False) -> (y, state)``: ``attention_mask [B, T']``
      (``T' >= T``, its last ``T`` columns are this call's; 1 = token, 0 = padding, left or right) is exact:
      rows are packed as separate sequences (``cu_seqlens``), padded positions give 0 and leave the state as it was.
      One token (``T == 1``) runs the recurrent step, longer inputs the chunked form, starting from ``state``;
      the returned state (``use_cache=True``) is ``EAState`` with sums ``[B, num_kv_heads, order+1, head_dim]``.
    - In training mode the layer tracks the range of ``x = sqrt(s) q`` and ``y = sqrt(s) k`` it sees (per-channel
      running RMS and max; ``track_accuracy=False`` turns it off) and warns once (:class:`EAAccuracyWarning`) when
      the predicted error leaves ``error_budget``; ``ea_ops.nn.accuracy_report(model)`` lists every layer.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        num_kv_heads: int | None = None,
        order: int = 6,
        qk_norm: str | None = "rms",
        scale: float | str = "auto",
        backend: str = "auto",
        bias: bool = False,
        *,
        head_dim: int | None = None,
        error_budget: float = accuracy.DEFAULT_BUDGET,
        norm_eps: float = 1e-6,
        track_accuracy: bool = True,
        layer_idx: int | None = None,
    ) -> None:
        super().__init__()
        hidden_size = _positive_int(hidden_size, "hidden_size")
        num_heads = _positive_int(num_heads, "num_heads")
        num_kv_heads = num_heads if num_kv_heads is None else _positive_int(num_kv_heads, "num_kv_heads")
        if num_heads % num_kv_heads:
            raise ValueError(f"num_kv_heads must divide num_heads = {num_heads}, got {num_kv_heads}")
        if head_dim is None:
            if hidden_size % num_heads:
                raise ValueError(f"hidden_size = {hidden_size} must be divisible by num_heads = {num_heads} "
                                 "(or give head_dim)")
            head_dim = hidden_size // num_heads
        head_dim = _positive_int(head_dim, "head_dim")
        self.order = check_order(order)
        if qk_norm not in QK_NORMS:
            raise ValueError(f"qk_norm must be one of {QK_NORMS}, got {qk_norm!r}")
        self.error_budget = accuracy._check_budget(error_budget)
        if isinstance(scale, str):
            if scale != "auto":
                raise ValueError(f"scale must be 'auto' or a positive float, got {scale!r}")
            bound = QK_BOUND if qk_norm == "rms" else None
            self.scale = accuracy.auto_scale(self.order, self.error_budget, bound=bound)
        elif isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale must be 'auto' or a finite float > 0, got {scale!r}")
        else:
            self.scale = float(scale)
        self.backend = check_backend(backend)
        self.hidden_size, self.num_heads, self.num_kv_heads = hidden_size, num_heads, num_kv_heads
        self.head_dim = head_dim
        self.qk_norm, self.norm_eps, self.layer_idx = qk_norm, float(norm_eps), layer_idx
        self.track_accuracy = bool(track_accuracy)
        self.q_proj = nn.Linear(hidden_size, num_heads * head_dim, bias=bias)
        self.k_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=bias)
        self.o_proj = nn.Linear(num_heads * head_dim, hidden_size, bias=bias)
        if qk_norm is not None:
            self.q_norm = nn.RMSNorm(head_dim, eps=norm_eps)
            self.k_norm = nn.RMSNorm(head_dim, eps=norm_eps)
        else:
            self.q_norm = self.k_norm = None
        # the accuracy tracker: running mean square (EMA) and max of |x|, |y| per channel; saved with the weights,
        # so that a checkpoint's report survives save and load
        for name, heads in (("x", num_heads), ("y", num_kv_heads)):
            self.register_buffer(f"_ms_{name}", torch.zeros(heads, head_dim))
            self.register_buffer(f"_max_{name}", torch.zeros(heads, head_dim))
        self.register_buffer("_updates", torch.zeros((), dtype=torch.int64))
        self._tracked_calls = 0
        self._tracked_tokens = 0
        self._next_check = 0
        self._warned = False

    def extra_repr(self) -> str:
        return (f"hidden_size={self.hidden_size}, num_heads={self.num_heads}, num_kv_heads={self.num_kv_heads}, "
                f"head_dim={self.head_dim}, order={self.order}, qk_norm={self.qk_norm!r}, scale={self.scale:.4g}, "
                f"error_budget={self.error_budget:g}, backend={self.backend!r}")

    # ------------------------------------------------------------------------------------------------ forward
    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``x [B, T, C]`` -> ``q [B, T, H, D]``, ``k, v [B, T, H_kv, D]`` (normalised as ``qk_norm`` says)."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(B, T, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(B, T, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.qk_norm == "rms":
            c = QK_BOUND
            q, k = c * torch.tanh(q / c), c * torch.tanh(k / c)
        return q, k, v

    def forward(
        self,
        x: Tensor,
        state: EAState | None = None,
        attention_mask: Tensor | None = None,
        use_cache: bool = False,
    ) -> tuple[Tensor, EAState | None]:
        """``x [B, T, C]`` -> ``(y [B, T, C], state)``; ``state`` is None unless ``use_cache``."""
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != self.hidden_size:
            got = getattr(x, "shape", type(x).__name__)
            raise ValueError(f"x must have shape [B, T, {self.hidden_size}], got {got}")
        if state is not None and not isinstance(state, EAState):
            raise TypeError(f"state must be an ea_ops.EAState or None, got {type(state).__name__}")
        B, T, _ = x.shape
        if attention_mask is not None:
            if not isinstance(attention_mask, Tensor) or attention_mask.dim() != 2 or attention_mask.shape[0] != B \
                    or attention_mask.shape[1] < T:
                raise ValueError(f"attention_mask must have shape [B, T'] with B = {B} and T' >= T = {T}, got "
                                 f"{getattr(attention_mask, 'shape', type(attention_mask).__name__)}")
            attention_mask = attention_mask[:, attention_mask.shape[1] - T:]
        q, k, v = self.project(x)
        o, new_state = self.attend(q, k, v, state, attention_mask, use_cache)
        return self.o_proj(o.reshape(B, T, self.num_heads * self.head_dim)), new_state

    def attend(self, q: Tensor, k: Tensor, v: Tensor, state: EAState | None, mask: Tensor | None,
               use_cache: bool) -> tuple[Tensor, EAState | None]:
        """EA-t over projected ``q [B, T, H, D]``, ``k, v [B, T, H_kv, D]`` with ``mask [B, T]`` or None."""
        B, T = q.shape[:2]
        if mask is not None and not torch.compiler.is_compiling() and bool(mask.bool().all()):
            mask = None  # every token real: the plain form
        if self.training and self.track_accuracy:
            self._track(q, k, mask)
        kw = {"order": self.order, "scale": self.scale}
        if T == 1:  # decode: the recurrent step, O(t D) whatever came before
            o, new = ea_recurrent_step(q[:, 0], k[:, 0], v[:, 0], state, backend=self.backend, **kw)
            if mask is not None:  # a padded step: output 0, the state as it was
                keep = mask[:, 0].bool()
                old = state if state is not None else EAState.empty(B, k.shape[2], k.shape[3], self.order,
                                                                     device=q.device, dtype=new.S.dtype)
                sel = keep[:, None, None, None]
                new = EAState(torch.where(sel, new.S, old.S), torch.where(sel, new.Z, old.Z),
                              torch.where(sel[..., 0], new.m, old.m))
                o = torch.where(keep[:, None, None], o, torch.zeros_like(o))
            return o[:, None], (new if use_cache else None)
        if mask is None:
            return ea_attention(q, k, v, causal=True, initial_state=state, output_final_state=use_cache,
                                backend=self.backend, **kw)
        cu, keep = padding_segments(mask)
        init = None
        if state is not None:  # the real segment of each row (every third, from 1) continues its row's state
            S = state.S.new_zeros((3 * B, *state.S.shape[1:]))
            m = state.m.new_full((3 * B, *state.m.shape[1:]), math.inf)
            Z = S.clone()
            S[1::3], Z[1::3], m[1::3] = state.S, state.Z, state.m
            init = EAState(S, Z, m)
        flat = [t.reshape(1, B * T, *t.shape[2:]) for t in (q, k, v)]
        o, fin = ea_attention(*flat, causal=True, initial_state=init, output_final_state=use_cache,
                              cu_seqlens=cu, backend=self.backend, **kw)
        o = o.view(B, T, *q.shape[2:])
        o = torch.where(keep[:, :, None, None], o, torch.zeros_like(o))
        if fin is not None:
            fin = EAState(fin.S[1::3].contiguous(), fin.Z[1::3].contiguous(), fin.m[1::3].contiguous())
        return o, fin

    # ------------------------------------------------------------------------------------------------ accuracy
    @torch.no_grad()
    def _track(self, q: Tensor, k: Tensor, mask: Tensor | None) -> None:
        """Fold this batch's per-channel mean square and max of ``x = sqrt(s) q``, ``y = sqrt(s) k`` into the
        tracker (O(B T H D), no host sync; in eager mode, after CHECK_AFTER_TOKENS positions and then every
        CHECK_EVERY calls, one sync to compare the prediction with the budget)."""
        r = math.sqrt(self.scale)
        w = None if mask is None else mask.bool()[:, :, None, None]
        first = self._updates == 0
        for name, t in (("x", q), ("y", k)):
            a = t.detach().float() * r
            if w is None:
                ms, mx = a.square().mean((0, 1)), a.abs().amax((0, 1))
            else:
                n = w.sum((0, 1)).clamp_min(1)
                ms = torch.where(w, a.square(), 0.0).sum((0, 1)) / n
                mx = torch.where(w, a.abs(), 0.0).amax((0, 1))
            old_ms, old_max = getattr(self, f"_ms_{name}"), getattr(self, f"_max_{name}")
            old_ms.copy_(torch.where(first, ms, old_ms + TRACK_MOMENTUM * (ms - old_ms)))
            old_max.copy_(torch.maximum(old_max, mx))
        self._updates.add_(1)
        if torch.compiler.is_compiling():
            return
        self._tracked_calls += 1
        self._tracked_tokens += q.shape[0] * q.shape[1]
        if not self._warned and self._tracked_tokens >= CHECK_AFTER_TOKENS and self._tracked_calls >= self._next_check:
            self._next_check = self._tracked_calls + CHECK_EVERY
            rep = self.accuracy(f"layer {self.layer_idx}" if self.layer_idx is not None else type(self).__name__)
            if not rep.within_budget:
                self._warned = True
                warnings.warn(
                    f"ElementwiseAttention ({rep.name}): channels of RMS {max(rep.rms_x, rep.rms_y):.3g} (max |x| "
                    f"{rep.max_x:.3g}, |y| {rep.max_y:.3g}) predict an EA-{self.order} error of "
                    f"{rep.predicted_error:.2g} of the values' spread, above error_budget={self.error_budget:g}. "
                    "Use qk_norm='rms' (bounded), a smaller scale, or a higher order "
                    "(ea_ops.nn.accuracy_report(model) lists every layer; this warning is given once per layer).",
                    accuracy.EAAccuracyWarning, stacklevel=4)

    def reset_accuracy_tracking(self) -> None:
        """Forget what the tracker has seen (and allow its warning again)."""
        for b in (self._ms_x, self._ms_y, self._max_x, self._max_y, self._updates):
            b.zero_()
        self._tracked_calls = self._tracked_tokens = self._next_check = 0
        self._warned = False

    def accuracy(self, name: str = "") -> accuracy.LayerAccuracy:
        """What the tracker saw, and the errors the table predicts for it (``nan`` before any tracked call)."""
        n = int(self._updates)
        if n == 0:
            nan = math.nan
            return accuracy.LayerAccuracy(name, self.order, self.scale, self.error_budget, 0, nan, nan, nan, nan,
                                          nan, nan)
        rms_x, rms_y = float(self._ms_x.max().sqrt()), float(self._ms_y.max().sqrt())
        G = self.num_heads // self.num_kv_heads
        pair = self._max_x.view(self.num_kv_heads, G, self.head_dim) * self._max_y[:, None, :]
        Z = 2 * float(pair.max())
        return accuracy.LayerAccuracy(
            name, self.order, self.scale, self.error_budget, n, rms_x, rms_y, float(self._max_x.max()),
            float(self._max_y.max()), *accuracy.layer_errors(self.order, max(rms_x, rms_y), Z))


class ElementwiseAttentionReference(ElementwiseAttention):
    """The same layer (same parameters, ``load_state_dict`` both ways) with its attention computed literally: each
    row's tokens sliced out by the mask, GQA by repeating k and v, EA-t by the O(T^2) float64 formula
    (``ea_ops.naive``). For tests; no state in or out (``state`` must be None; ``use_cache`` returns None)."""

    def attend(self, q: Tensor, k: Tensor, v: Tensor, state: EAState | None, mask: Tensor | None,
               use_cache: bool) -> tuple[Tensor, EAState | None]:
        if state is not None:
            raise ValueError("ElementwiseAttentionReference takes no state: run it on the whole sequence")
        G = self.num_heads // self.num_kv_heads
        k, v = k.repeat_interleave(G, dim=2), v.repeat_interleave(G, dim=2)
        o = torch.zeros_like(q)
        for b in range(q.shape[0]):
            idx = torch.arange(q.shape[1], device=q.device) if mask is None else mask[b].nonzero()[:, 0]
            if idx.numel():
                ob = naive_attention(q[b:b + 1, idx], k[b:b + 1, idx], v[b:b + 1, idx], order=self.order,
                                     causal=True, scale=self.scale)
                o[b, idx] = ob[0].to(q.dtype)
        return o, None


def rotary(x: Tensor, positions: Tensor, base: float = 10000.0) -> Tensor:
    """RoPE on ``x [B, T, H, D]`` (D even) at ``positions [T]``: channel pairs rotated by ``positions * base^(-2i/D)``.
    For the position study (docs/models.md): EA compares channels one by one, so a rotation mixes positions into
    every channel's values and EA is then not invariant to shifting all positions (softmax's dot product is)."""
    D = x.shape[-1]
    inv = base ** (-torch.arange(0, D, 2, dtype=torch.float64, device=x.device) / D)
    ang = positions.double()[:, None] * inv[None]
    cos, sin = ang.cos().to(x.dtype)[None, :, None], ang.sin().to(x.dtype)[None, :, None]
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).flatten(-2)


__all__ = ["ElementwiseAttention", "ElementwiseAttentionReference", "padding_segments", "rotary"]
