"""What gets timed: the backend under test and its peers, each as a zero-argument callable.

Peers (DESIGN.md "Measuring speed"): the same math in eager PyTorch (the torch backend), the same math
under ``torch.compile``, exact causal softmax attention (``scaled_dot_product_attention``) and a copy of
as many bytes as EA must move (the memory roofline).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

import ea_ops
from ea_ops import torch_backend
from ea_ops.features import features
from ea_ops.state import EAState

from .workloads import Workload

PEERS = ("kernel", "eager", "compiled", "sdpa", "copy")
COMPILE_BLOCK = 2048  # tokens per compiled block: bounds the compiled form's O(block * t) temporaries
LABELS = {
    "eager": "eager PyTorch (torch backend)",
    "compiled": "torch.compile (blocked cumsum form)",
    "sdpa": "SDPA exact softmax",
    "copy": "copy of the same bytes",
}


@dataclass
class Inputs:
    """Tensors of one workload. ``q, k, v``: ``[B, T, H, D]`` (``[B, H, D]`` in step mode);
    ``g``: the output cotangent (fwdbwd); ``state``: the EA state before the step; ``qh, kh, vh``: SDPA's
    ``[B, H, T, D]`` layout (step: ``qh [B, H, 1, D]`` against the cache ``kh, vh [B, H, T, D]``)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    g: torch.Tensor | None = None
    state: EAState | None = None
    sdpa: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    extra: dict = field(default_factory=dict)


def make_inputs(w: Workload, seed: int = 0, *, with_sdpa: bool = True) -> Inputs:
    """Random inputs: q, k ~ N(0, 0.5^2) (a channel scale at which EA-6 is accurate), v ~ N(0, 1)."""
    dev, dt = torch.device(w.device), w.torch_dtype
    gen = torch.Generator(device=dev).manual_seed(seed)

    def rnd(*shape, std=1.0):
        return (torch.randn(*shape, generator=gen, device=dev, dtype=torch.float32) * std).to(dt)

    if w.mode == "step":
        q, k, v = rnd(w.B, w.H, w.D, std=0.5), rnd(w.B, w.H, w.D, std=0.5), rnd(w.B, w.H, w.D)
        # The state after a short prefix: its values do not change the step's cost, whatever the context.
        pre = [rnd(w.B, min(w.T, 64), w.H, w.D, std=s) for s in (0.5, 0.5, 1.0)]
        _, state = ea_ops.ea_attention(*pre, order=w.order, output_final_state=True, backend="torch")
        sdpa = None
        if with_sdpa:
            sdpa = (rnd(w.B, w.H, 1, w.D, std=0.5), rnd(w.B, w.H, w.T, w.D, std=0.5), rnd(w.B, w.H, w.T, w.D))
        return Inputs(q, k, v, state=state, sdpa=sdpa)
    shape = (w.B, w.T, w.H, w.D)
    q, k, v = rnd(*shape, std=0.5), rnd(*shape, std=0.5), rnd(*shape)
    g = rnd(*shape) if w.mode == "fwdbwd" else None
    sdpa = tuple(t.transpose(1, 2).contiguous() for t in (q, k, v)) if with_sdpa else None
    if w.mode == "fwdbwd":
        q, k, v = (t.requires_grad_(True) for t in (q, k, v))
        if sdpa is not None:
            sdpa = tuple(t.requires_grad_(True) for t in sdpa)
    return Inputs(q, k, v, g=g, sdpa=sdpa)


# --------------------------------------------------------------------------------------------- EA calls
def ea_call(w: Workload, x: Inputs, backend: str) -> Callable[[], tuple]:
    """``backend`` through the public API: returns ``(o,)`` / ``(o, dq, dk, dv)`` / ``(o, S, Z, m)``."""
    if w.mode == "step":
        def step():
            o, st = ea_ops.ea_recurrent_step(x.q, x.k, x.v, x.state, order=w.order, backend=backend)
            return o, st.S, st.Z, st.m
        return step
    if w.mode == "fwd":
        def fwd():
            with torch.no_grad():
                return (ea_ops.ea_attention(x.q, x.k, x.v, order=w.order, backend=backend)[0],)
        return fwd

    def fwdbwd():
        o, _ = ea_ops.ea_attention(x.q, x.k, x.v, order=w.order, backend=backend)
        return (o.detach(), *torch.autograd.grad(o, (x.q, x.k, x.v), x.g))
    return fwdbwd


def reference_call(w: Workload, x: Inputs, dtype: torch.dtype) -> Callable[[], tuple]:
    """The torch backend on the same inputs upcast to ``dtype`` (float64, or float32 for large workloads)."""
    if w.mode == "step":
        st = x.state.to(dtype)

        def step():
            o, s = ea_ops.ea_recurrent_step(x.q.to(dtype), x.k.to(dtype), x.v.to(dtype), st,
                                            order=w.order, backend="torch")
            return o, s.S, s.Z, s.m
        return step
    up = Inputs(*(t.detach().to(dtype).requires_grad_(t.requires_grad) for t in (x.q, x.k, x.v)),
                g=None if x.g is None else x.g.to(dtype))
    return ea_call(w, up, "torch")


# ------------------------------------------------------------------------- the compiled formulation
def _block(x, y, v, S, Z, m, order: int):
    """EA-t over one block of keys and queries with a carried state (the straightforward formulation).

    ``x, y, v [B, C, H, D]`` float32 (``x, y`` already scaled); ``S, Z [B, H, D, t+1]``, ``m [B, H, D]``.
    The sums are stabilised by one offset per block (the running minimum of ``y^2`` at the block's end)
    rather than per position: the same as the torch backend for well-scaled inputs, cheaper, and a plain
    ``cumsum`` that ``torch.compile`` fuses.
    """
    y2 = y * y
    mb = torch.minimum(m, y2.amin(1))
    kf = features(y, order) * torch.exp(mb[:, None] - y2)[..., None]
    r = torch.exp(mb - m)[..., None]
    Sc = torch.cumsum(kf * v[..., None], 1) + (r * S)[:, None]
    Zc = torch.cumsum(kf, 1) + (r * Z)[:, None]
    qf = features(x, order)
    return (qf * Sc).sum(-1) / (qf * Zc).sum(-1), Sc[:, -1], Zc[:, -1], mb


def blocked_attention(q, k, v, *, order: int, scale: float = 1.0, block_fn=_block, block: int = COMPILE_BLOCK):
    """Causal EA-t ``[B, T, H, D] -> [B, T, H, D]`` as a loop over blocks of ``block_fn``."""
    B, T, H, D = q.shape
    r = math.sqrt(scale)
    x, y, vv = q.float() * r, k.float() * r, v.float()
    S = x.new_zeros(B, H, D, order + 1)
    Z = x.new_zeros(B, H, D, order + 1)
    m = x.new_full((B, H, D), math.inf)
    outs = []
    for s in range(0, T, block):
        o, S, Z, m = block_fn(x[:, s:s + block], y[:, s:s + block], vv[:, s:s + block], S, Z, m, order)
        outs.append(o)
    return torch.cat(outs, 1).to(q.dtype)


def _step_tensors(q, k, v, S, Z, m, order: int):
    o, st = torch_backend.recurrent_step(q, k, v, EAState(S, Z, m), order=order, scale=1.0)
    return o, st.S, st.Z, st.m


def compiled_call(w: Workload, x: Inputs) -> Callable[[], tuple]:
    """The same math under ``torch.compile`` (compiles lazily, on the first call; may raise)."""
    if w.mode == "step":
        fn = torch.compile(_step_tensors)
        st = x.state
        return lambda: fn(x.q, x.k, x.v, st.S, st.Z, st.m, w.order)
    block_fn = torch.compile(_block)

    def run():
        return blocked_attention(x.q, x.k, x.v, order=w.order, block_fn=block_fn)

    if w.mode == "fwd":
        def fwd():
            with torch.no_grad():
                return (run(),)
        return fwd

    def fwdbwd():
        o = run()
        return (o.detach(), *torch.autograd.grad(o, (x.q, x.k, x.v), x.g))
    return fwdbwd


# ------------------------------------------------------------------------------------ SDPA and copy
def sdpa_call(w: Workload, x: Inputs) -> Callable[[], tuple]:
    """Exact softmax attention in SDPA's ``[B, H, T, D]`` layout (layout change not timed)."""
    qh, kh, vh = x.sdpa
    if w.mode == "step":
        def step():
            with torch.no_grad():
                return (F.scaled_dot_product_attention(qh, kh, vh),)
        return step
    if w.mode == "fwd":
        def fwd():
            with torch.no_grad():
                return (F.scaled_dot_product_attention(qh, kh, vh, is_causal=True),)
        return fwd
    gh = x.g.transpose(1, 2).contiguous()

    def fwdbwd():
        o = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True)
        return (o.detach(), *torch.autograd.grad(o, (qh, kh, vh), gh))
    return fwdbwd


def copy_call(nbytes: int, device: str) -> Callable[[], tuple]:
    """Copy ``nbytes / 2`` bytes: the reads plus the writes make ``nbytes`` of traffic."""
    n = max(1, nbytes // 2)
    src = torch.empty(n, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    return lambda: (dst.copy_(src),)
