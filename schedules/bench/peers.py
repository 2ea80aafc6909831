"""What gets timed: the backend under test and its peers, each as a zero-argument callable.

Peers (docs/design.md section 8): the same backend untuned (``default``), the same math in eager PyTorch
(the torch backend), under ``torch.compile``, and as the straightforward unstabilised cumsum form; exact
causal softmax attention (``scaled_dot_product_attention``, and FlashAttention where installed); and a copy
of as many bytes as EA must move (the memory roofline). For the step also the same backend through
``ea_ops.EADecoder`` (``inplace``) and its compiled kernel alone on preallocated buffers (``kernel_only``).
A peer that cannot run here raises ``Unavailable``.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

import ea_ops
from ea_ops import dispatch
from ea_ops.features import features
from ea_ops.state import EAState

from .timing import Scoped
from .workloads import Workload

TORCH = dispatch.load("torch")  # the reference backend's module (the dispatch protocol), always present
PEERS = ("kernel", "default", "out", "inplace", "kernel_only", "eager", "compiled", "cumsum", "sdpa", "flash_attn",
         "copy")
STANDARD = ("eager", "compiled", "sdpa", "copy")  # without --peers and a preset's own
COMPILE_BLOCK = 2048  # tokens per compiled block: bounds the compiled form's O(block * t) temporaries
LABELS = {
    "default": "same backend, untuned default",
    "out": "same backend, out= (preallocated output)",
    "inplace": "EADecoder.step (state in place)",
    "kernel_only": "compiled kernel alone (preallocated)",
    "eager": "eager PyTorch (torch backend)",
    "compiled": "torch.compile (blocked cumsum form)",
    "cumsum": "eager cumsum form (unstabilised)",
    "sdpa": "SDPA exact softmax",
    "flash_attn": "flash_attn exact softmax",
    "copy": "copy of the same bytes",
}


class Unavailable(Exception):
    """A peer that cannot run here; the message says why (reported in its row, never fatal)."""


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
    """Random inputs: q, k ~ N(0, 0.5^2) (a channel scale at which EA-6 is accurate), v ~ N(0, 1).
    ``with_sdpa``: also the softmax peers' tensors (a KV cache of ``T`` in step mode)."""
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


def out_call(w: Workload, x: Inputs, backend: str) -> Callable[[], tuple]:
    """The forward writing into one preallocated output (``ea_attention(out=)``): no fresh output pages."""
    if w.mode != "fwd":
        raise Unavailable("out= takes forward calls without gradients (fwd mode)")
    o = torch.empty_like(x.q)

    def fwd():
        with torch.no_grad():
            return (ea_ops.ea_attention(x.q, x.k, x.v, order=w.order, backend=backend, out=o)[0],)
    return fwd


def inplace_call(w: Workload, x: Inputs, backend: str) -> Callable[[], tuple]:
    """The step through ``ea_ops.EADecoder`` on a copy of the state, which every call updates in place: its
    first call is one step from ``x.state``, as the kernel's."""
    if w.mode != "step":
        raise Unavailable("an in-place decoder runs the recurrent step only")
    dec = ea_ops.EADecoder(x.state.clone(), order=w.order, backend=backend)

    def step():
        o = dec.step(x.q, x.k, x.v)
        return o, dec.state.S, dec.state.Z, dec.state.m
    return step


def kernel_only_call(w: Workload, x: Inputs, backend: str) -> Callable[[], tuple]:
    """The step's compiled function alone, on preallocated inputs, output and a copy of the state (updated
    in place): what a call through the API costs at the least."""
    if w.mode != "step":
        raise Unavailable("the kernel alone is timed for the recurrent step only")
    if backend != "tvm":
        raise Unavailable(f"the kernel alone is timed for the TVM backend only, not {backend}")
    from ea_ops.backends.tvm import build, ops

    st = x.state.clone()
    o = torch.empty_like(x.q)
    fn = build.kernel_for("step", True, w.order, w.dtype, w.H, w.D, 1).fn
    args = ops.step_args(*(t.contiguous() for t in (x.q, x.k, x.v)), o, st.S, st.Z, st.m, 1.0)

    def kernel():
        fn(*args)
        return o, st.S, st.Z, st.m
    return kernel


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


# --------------------------------------------------------------------------- the untuned backend
_KERNELS = {"fwd": ("forward",), "fwdbwd": ("forward", "backward"), "step": ("step",)}


def _fmt_config(cfg: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in cfg.items())


@contextlib.contextmanager
def _records_hidden(folder: str) -> Iterator[None]:
    """Within the block the record folders (``EA_OPS_CACHE_DIR``, ``EA_OPS_SHIPPED_CACHE``) are an empty
    ``folder``: what a machine without records runs. Compiled kernels stay cached per configuration in the
    process; the compiled-kernel cache on disk, which lives under ``EA_OPS_CACHE_DIR`` too, is off meanwhile
    (it would fill ``folder``)."""
    keys = ("EA_OPS_CACHE_DIR", "EA_OPS_SHIPPED_CACHE", "EA_OPS_KERNEL_CACHE")
    before = {k: os.environ.get(k) for k in keys}
    os.environ.update({**dict.fromkeys(keys[:2], folder), "EA_OPS_KERNEL_CACHE": "0"})
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


_EMPTY: list[str] = []


def _empty_folder() -> str:
    """A folder of this process's own (``mkdtemp``: mode 0700), empty, removed at exit."""
    if not _EMPTY:
        _EMPTY.append(tempfile.mkdtemp(prefix="ea-ops-bench-no-records-"))
        atexit.register(os.rmdir, _EMPTY[0])
    return _EMPTY[0]


def _tvm_untuned(w: Workload) -> tuple[Callable[[], contextlib.AbstractContextManager], str]:
    from ea_ops.backends.tvm import build
    from ea_ops.backends.tvm.schedule import default_cpu_config

    folder = _empty_folder()
    notes, same, sources = [], True, set()
    for kernel in _KERNELS[w.mode]:
        T = 1 if kernel == "step" else w.T
        mine = build.kernel_for(kernel, True, w.order, w.dtype, w.H, w.D, T)  # built by the gate: cached
        default = default_cpu_config(kernel, w.H, w.D)
        same, sources = same and mine.config == default, sources | {mine.source}
        notes.append(f"{kernel} {_fmt_config(default)}" + ("" if mine.config == default else
                                                           f" (kernel: {_fmt_config(mine.config)})"))
    note = "records hidden: " + "; ".join(notes)
    if same:
        why = "no record applies" if sources == {"default"} else "the record chose it"
        note += f"; {why}: the kernel's schedule too (their ratio is noise)"
    return lambda: _records_hidden(folder), note


def _triton_untuned(w: Workload) -> tuple[Callable[[], contextlib.AbstractContextManager], str]:
    from ea_ops.backends.triton import configs
    from ea_ops.backends.triton.target import fingerprint, interpreting

    rows = w.B if w.mode == "step" else w.B * w.T
    fp = fingerprint(w.device) if w.device.startswith("cuda") or interpreting() else None
    given, notes, same = {}, [], True
    for kernel in _KERNELS[w.mode]:
        shape = dict(causal=True, HD=w.H * w.D, n_seqs=w.B, rows=rows)
        given[kernel] = configs.default(kernel, **shape)
        mine = configs.choose(kernel, order=w.order, dtype=w.dtype, fp=fp, **shape)
        same = same and mine == given[kernel]
        notes.append(f"{kernel} {_fmt_config(given[kernel])}" + ("" if mine == given[kernel] else
                                                                  f" (kernel: {_fmt_config(mine)})"))

    def forced() -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        for kernel, cfg in given.items():
            stack.enter_context(configs.forced(cfg, kernel))
        return stack

    note = "forced: " + "; ".join(notes)
    if same:
        note += "; no record applies or it chose the default: the kernel's config too (their ratio is noise)"
    return forced, note


def default_call(w: Workload, x: Inputs, backend: str) -> tuple[Scoped, str]:
    """``backend`` with its untuned default configuration (TVM: the default schedule, records hidden; Triton:
    the default config, forced), through the public API as the kernel; and a note naming the configuration."""
    if backend == "tvm":
        untuned, note = _tvm_untuned(w)
    elif backend == "triton":
        untuned, note = _triton_untuned(w)
    else:
        raise Unavailable(f"the {backend} backend has no tuned configuration")
    return Scoped(ea_call(w, x, backend), untuned), note


# ------------------------------------------------------------------------------ the cumsum formulation
def cumsum_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, order: int,
                     scale: float = 1.0) -> torch.Tensor:
    """Causal EA-t ``[B, T, H, D]``, the straightforward eager form in float32: prefix sums of the features by
    ``cumsum`` over all of ``T``, not stabilised (``exp(-y^2)`` underflows once |k| > ~10; fine for the bench's
    N(0, 0.5^2) keys), with ``[B, T, H, D, t+1]`` temporaries."""
    r = math.sqrt(scale)
    x, y, vv = q.float() * r, k.float() * r, v.float()
    kf = features(y, order) * torch.exp(-y * y)[..., None]
    qf = features(x, order)
    o = (qf * torch.cumsum(kf * vv[..., None], 1)).sum(-1) / (qf * torch.cumsum(kf, 1)).sum(-1)
    return o.to(q.dtype)


def cumsum_call(w: Workload, x: Inputs) -> Callable[[], tuple]:
    if w.mode == "step":
        raise Unavailable("the cumsum form sums over a whole sequence: it has no step")
    if w.mode == "fwd":
        def fwd():
            with torch.no_grad():
                return (cumsum_attention(x.q, x.k, x.v, order=w.order),)
        return fwd

    def fwdbwd():
        o = cumsum_attention(x.q, x.k, x.v, order=w.order)
        return (o.detach(), *torch.autograd.grad(o, (x.q, x.k, x.v), x.g))
    return fwdbwd


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
    o, st = TORCH.recurrent_step(q, k, v, EAState(S, Z, m), order=order, scale=1.0)
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


def flash_attn_call(w: Workload, x: Inputs) -> Callable[[], tuple]:
    """FlashAttention's causal ``flash_attn_func`` in its ``[B, T, H, D]`` layout (step: one query against the
    KV cache, copied to that layout untimed); Unavailable where it is not installed or cannot run."""
    try:
        from flash_attn import flash_attn_func
    except ImportError:
        raise Unavailable("flash_attn is not installed") from None
    if not w.device.startswith("cuda"):
        raise Unavailable("flash_attn runs on CUDA only")
    if w.dtype not in ("float16", "bfloat16"):
        raise Unavailable(f"flash_attn takes float16 or bfloat16, not {w.dtype}")
    if w.mode == "step":
        q1, kc, vc = (t.transpose(1, 2).contiguous() for t in x.sdpa)

        def step():
            with torch.no_grad():
                return (flash_attn_func(q1, kc, vc),)
        return step
    if w.mode == "fwd":
        def fwd():
            with torch.no_grad():
                return (flash_attn_func(x.q, x.k, x.v, causal=True),)
        return fwd

    def fwdbwd():
        o = flash_attn_func(x.q, x.k, x.v, causal=True)
        return (o.detach(), *torch.autograd.grad(o, (x.q, x.k, x.v), x.g))
    return fwdbwd


def copy_call(nbytes: int, device: str) -> Callable[[], tuple]:
    """Copy ``nbytes / 2`` bytes: the reads plus the writes make ``nbytes`` of traffic."""
    n = max(1, nbytes // 2)
    src = torch.empty(n, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    return lambda: (dst.copy_(src),)
