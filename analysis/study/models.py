"""The compared models: one tiny causal LM shape, with its token mixer swapped.

``TinyLM``: token embedding + previous-token embedding (a one-step token shift, position-free) + learned
absolute position embedding, then ``layers`` pre-norm blocks (mixer, MLP 2x), a final norm and an untied head.
Every mixer has the same four ``hidden x hidden`` projections (q, k, v, out; no bias), so parameter counts match
to within EA's q/k-norm weights (``2 * head_dim`` per layer). Mixers:

- ``softmax``: causal scaled-dot-product attention;
- ``linear``: linear attention with ``elu + 1`` features (Katharopoulos et al. 2020);
- ``ea-exact``: exact EA, ``ea_ops.nn.ElementwiseAttention`` with its attention computed exactly (O(T^2));
- ``ea-<t>``: EA-t, the library's layer as shipped (``ea_ops.nn.ElementwiseAttention``).

A ``-rms`` suffix means ``qk_norm="rms"`` (bounded, ``scale="auto"``: the layer's default); without it q and k
are left as projected (``qk_norm=None``) at the paper's scale ``s = 1``. ``ea-exact-rms`` uses the scale EA-6
picks under ``"rms"``, so it is what ``ea-6-rms`` approximates.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ea_ops.nn import ElementwiseAttention
from ea_ops.nn import accuracy as _accuracy
from ea_ops.nn.layer import QK_BOUND


@dataclass(frozen=True)
class ModelSpec:
    """``kind`` in {"softmax", "linear", "exact", "taylor"}; ``order`` for "taylor"; EA's q/k norm and scale."""

    kind: str
    order: int | None = None
    qk_norm: str | None = None
    scale: float | str = 1.0


def _parse(name: str) -> ModelSpec:
    if name in ("softmax", "linear"):
        return ModelSpec(name)
    m = re.fullmatch(r"ea-(exact|\d+)(-rms)?", name)
    if m is None:
        raise ValueError(f"model name must be softmax, linear or ea-<exact|even order>[-rms], got {name!r}")
    norm = "rms" if m.group(2) else None
    if m.group(1) == "exact":
        scale = _accuracy.auto_scale(6, _accuracy.DEFAULT_BUDGET, bound=QK_BOUND) if norm else 1.0
        return ModelSpec("exact", None, norm, scale)
    return ModelSpec("taylor", int(m.group(1)), norm, "auto" if norm else 1.0)


MODELS: dict[str, ModelSpec] = {n: _parse(n) for n in (
    "softmax", "linear", "ea-exact", "ea-exact-rms", *[f"ea-{t}{s}" for t in (2, 4, 6, 8, 16) for s in ("", "-rms")])}


def model_spec(name: str) -> ModelSpec:
    """The spec of a model name (any ``ea-<even t>[-rms]`` is accepted, not only the listed ones)."""
    return MODELS[name] if name in MODELS else _parse(name)


# ---------------------------------------------------------------------------------------------- exact EA
def exact_ea(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """Causal exact EA, ``[B, T, H, D] -> [B, T, H, D]``; the same numbers as ``ea_ops.ea_attention_exact``
    (tested), in fewer operations: short sequences as one masked ``[B, H, D, T, T]`` softmax (at T = 32 faster to
    train than the fused form below, measured here), longer ones as softmax attention with one
    2-channel head per EA channel, ``-s (q_i - k_j)^2 = (q_i, 1) . (2 s k_j, -s k_j^2) - s q_i^2`` (the last term
    cancels per row), which SDPA fuses in O(T) memory (2.7x faster than the library's blocked reference at T 64-128).
    """
    B, T, H, D = q.shape
    if T <= EXPLICIT_MAX_T:
        qq, kk, vv = (t.permute(0, 2, 3, 1) for t in (q, k, v))  # [B, H, D, T]
        logits = -scale * (qq[..., :, None] - kk[..., None, :]) ** 2
        later = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
        o = (torch.softmax(logits.masked_fill(later, float("-inf")), -1) @ vv[..., None])[..., 0]
        return o.permute(0, 3, 1, 2)

    def rows(t: Tensor) -> Tensor:
        return t.permute(0, 2, 3, 1).reshape(B, H * D, T, 1)

    qq, kk, vv = rows(q), rows(k), rows(v)
    qp = torch.cat([qq, torch.ones_like(qq)], -1)
    kp = torch.cat([2 * scale * kk, -scale * kk * kk], -1)
    o = F.scaled_dot_product_attention(qp, kp, vv, is_causal=True, scale=1.0)
    return o.reshape(B, H, D, T).permute(0, 3, 1, 2)


# the explicit form up to T = 32; beyond it the fused one: a training step of the study's model at T 64, B 32 took
# 325 ms explicit against 163 ms fused (2026-12-01, 2 vCPUs); at T 32 both about 60 ms
EXPLICIT_MAX_T = 32


class ExactElementwiseAttention(ElementwiseAttention):
    """The library's layer (projections, q/k norm) with exact EA in place of EA-t; no recurrent state."""

    def attend(self, q, k, v, state, mask, use_cache):
        if state is not None or mask is not None or use_cache:
            raise ValueError("ExactElementwiseAttention takes no state, mask or cache (decode with EAMixer.step)")
        return exact_ea(q, k, v, self.scale), None


# ---------------------------------------------------------------------------------------------- mixers
class _QKVO(nn.Module):
    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(hidden, hidden, bias=False) for _ in range(4))

    def qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        B, T, _ = x.shape
        return tuple(p(x).view(B, T, self.heads, self.head_dim).transpose(1, 2)  # [B, H, T, D]
                     for p in (self.q_proj, self.k_proj, self.v_proj))

    def out(self, o: Tensor) -> Tensor:  # [B, H, T, D] -> [B, T, C]
        B, H, T, D = o.shape
        return self.o_proj(o.transpose(1, 2).reshape(B, T, H * D))


class SoftmaxMixer(_QKVO):
    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv(x)
        return self.out(F.scaled_dot_product_attention(q, k, v, is_causal=True))

    def step(self, x: Tensor, cache):  # x [B, 1, C]; cache: (K, V) [B, H, t, D], a KV cache
        q, k, v = self.qkv(x)
        if cache is not None:
            k, v = torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2)
        return self.out(F.scaled_dot_product_attention(q, k, v)), (k, v)


class LinearMixer(_QKVO):
    """``o_i = phi(q_i) . sum_j phi(k_j) v_j^T / phi(q_i) . sum_j phi(k_j)``, ``phi = elu + 1``."""

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv(x)
        q, k = F.elu(q) + 1, F.elu(k) + 1
        a = (q @ k.transpose(-1, -2)).tril()  # [B, H, T, T]: the quadratic form is cheapest at these lengths
        return self.out((a @ v) / a.sum(-1, keepdim=True))

    def step(self, x: Tensor, cache):  # cache: (S [B, H, D, D], z [B, H, D]), O(D^2) whatever the context
        q, k, v = self.qkv(x)
        q, k = F.elu(q[:, :, 0]) + 1, F.elu(k[:, :, 0]) + 1
        S = k[..., :, None] * v[:, :, 0, None, :]
        z = k
        if cache is not None:
            S, z = cache[0] + S, cache[1] + z
        o = (q[..., None, :] @ S)[..., 0, :] / (q * z).sum(-1, keepdim=True)
        return self.out(o[:, :, None]), (S, z)


class EAMixer(nn.Module):
    """``ea_ops.nn.ElementwiseAttention`` (EA-t) or ``ExactElementwiseAttention`` as a mixer."""

    def __init__(self, hidden: int, heads: int, spec: ModelSpec, backend: str) -> None:
        super().__init__()
        cls = ExactElementwiseAttention if spec.kind == "exact" else ElementwiseAttention
        self.attn = cls(hidden, heads, order=spec.order or 2, qk_norm=spec.qk_norm, scale=spec.scale,
                        backend=backend, track_accuracy=False)
        self.exact = spec.kind == "exact"

    def forward(self, x: Tensor) -> Tensor:
        return self.attn(x)[0]

    def step(self, x: Tensor, cache):
        if not self.exact:  # the layer's decode: the recurrent step from its EAState
            return self.attn(x, state=cache, use_cache=True)
        q, k, v = self.attn.project(x)  # exact EA needs every past key: a KV cache, O(t) per token
        if cache is not None:
            k, v = torch.cat([cache[0], k], 1), torch.cat([cache[1], v], 1)
        w = torch.softmax(-self.attn.scale * (q - k) ** 2, dim=1)  # [B, t, H, D] over the keys
        o = (w * v).sum(1, keepdim=True)
        B = x.shape[0]
        return self.attn.o_proj(o.reshape(B, 1, -1)), (k, v)


def make_mixer(name: str, hidden: int, heads: int, backend: str) -> nn.Module:
    spec = model_spec(name)
    if spec.kind == "softmax":
        return SoftmaxMixer(hidden, heads)
    if spec.kind == "linear":
        return LinearMixer(hidden, heads)
    return EAMixer(hidden, heads, spec, backend)


# ---------------------------------------------------------------------------------------------- the model
class Block(nn.Module):
    def __init__(self, mixer: nn.Module, hidden: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.mixer = mixer
        self.mlp = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.GELU(), nn.Linear(2 * hidden, hidden))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.mixer(self.ln1(x))
        return x + self.mlp(self.ln2(x))

    def step(self, x: Tensor, cache):
        y, cache = self.mixer.step(self.ln1(x), cache)
        x = x + y
        return x + self.mlp(self.ln2(x)), cache


class TinyLM(nn.Module):
    """``tokens [B, T]`` int64 -> ``logits [B, T, vocab]`` (see the module docstring)."""

    def __init__(self, model: str, vocab: int, hidden: int, heads: int, layers: int, max_len: int,
                 backend: str = "auto") -> None:
        super().__init__()
        self.name, self.max_len = model, max_len
        self.emb, self.prev_emb = nn.Embedding(vocab, hidden), nn.Embedding(vocab + 1, hidden)  # +1: "no token"
        self.pos = nn.Embedding(max_len, hidden)
        self.blocks = nn.ModuleList(Block(make_mixer(model, hidden, heads, backend), hidden) for _ in range(layers))
        self.ln_f, self.head = nn.LayerNorm(hidden), nn.Linear(hidden, vocab, bias=False)
        self.start = vocab  # the previous-token id at position 0

    def embed(self, tokens: Tensor, prev: Tensor, positions: Tensor) -> Tensor:
        return self.emb(tokens) + self.prev_emb(prev) + self.pos(positions)

    def forward(self, tokens: Tensor) -> Tensor:
        B, T = tokens.shape
        if T > self.max_len:
            raise ValueError(f"tokens has {T} positions, more than max_len = {self.max_len}")
        prev = torch.cat([tokens.new_full((B, 1), self.start), tokens[:, :-1]], 1)
        x = self.embed(tokens, prev, torch.arange(T, device=tokens.device))
        for b in self.blocks:
            x = b(x)
        return self.head(self.ln_f(x))

    @torch.no_grad()
    def step(self, token: Tensor, prev: Tensor, position: int, caches: list) -> tuple[Tensor, list]:
        """One decode step: ``token, prev [B]`` -> ``logits [B, vocab]`` and the updated per-layer caches."""
        x = self.embed(token[:, None], prev[:, None], torch.full((1,), position % self.max_len,
                                                                  device=token.device))
        new = []
        for b, c in zip(self.blocks, caches):
            x, c = b.step(x, c)
            new.append(c)
        return self.head(self.ln_f(x))[:, 0], new


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def max_len_for(seq_len: int) -> int:
    """Position table size: the next power of two (the decode benchmark wraps positions past it)."""
    return 1 << max(0, math.ceil(math.log2(seq_len)))
