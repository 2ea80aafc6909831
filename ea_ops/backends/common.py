"""What the compiled backends (TVM, Triton) share, once: the state and sequence inputs of their custom ops,
the names of the scan variants, the lane threshold of GPU schedules, NaN-poisoned buffers for tests, and the
refusal of second derivatives.

``cu_seqlens`` reaches a backend as a list of ``(begin, end)`` pairs (``ea_ops.checks.check_cu_seqlens``); a
custom op takes it as the flat ``N+1`` offsets (``offsets_of``); the kernels walk pairs again
(``segments_of``). States enter as three float32 tensors ``S, Z [n, H, t+1, D]``, ``m [n, H, D]``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from ..checks import needs_grad
from ..host_pages import advise_huge
from ..state import EAState

# Variants of a causal scan: one sequential scan per channel ("scan"), or T split into chunks whose sums are
# combined by a prefix over chunk states ("chunked"). Records and configs name them so.
SCAN, CHUNKED = "scan", "chunked"
VARIANTS = (SCAN, CHUNKED)
# Independent (channel, chunk) scans a GPU needs in flight to hide memory latency (docs/design.md section 8 "Measuring
# speed"): below it the untuned default splits T into chunks.
LANES_TARGET = 1 << 17
# The input dtypes the compiled kernels take, and their names in records and kernel builds (states: float32).
KERNEL_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}

_POISON = False


def offsets_of(segments: list[tuple[int, int]] | None) -> list[int]:
    """``(begin, end)`` pairs -> the ``N+1`` offsets a custom op takes (``[]``: one sequence per batch row)."""
    if segments is None:
        return []
    return [segments[0][0]] + [e for _, e in segments]


def segments_of(offsets: list[int], T: int | None = None) -> list[tuple[int, int]] | None:
    """Offsets -> ``(begin, end)`` pairs; ``[]`` gives ``[(0, T)]`` when ``T`` is given, else None."""
    if offsets:
        return list(zip(offsets[:-1], offsets[1:]))
    return None if T is None else [(0, T)]


def op_state_inputs(q: Tensor, order: int, causal: bool, initial_state: EAState | None,
                    cu_seqlens: list[tuple[int, int]] | None) -> tuple[list[int], Tensor, Tensor, Tensor]:
    """What a compiled backend's custom op takes besides ``q, k, v``: ``(offsets, S0, Z0, m0)``.

    The state is ``initial_state`` or the empty one (one row per sequence), or three empty tensors when
    non-causal (custom-op inputs are tensors, never None).
    """
    B, _, H, D = q.shape
    offsets = offsets_of(cu_seqlens)
    if not causal:
        return (offsets, *(q.new_empty(0, dtype=torch.float32) for _ in range(3)))
    n = B if cu_seqlens is None else len(cu_seqlens)
    st = initial_state or EAState.empty(n, H, D, order, device=q.device)
    return offsets, st.S, st.Z, st.m


def run_attention(ops, q: Tensor, k: Tensor, v: Tensor, *, order: int, causal: bool, scale: float,
                  initial_state: EAState | None, output_final_state: bool,
                  cu_seqlens: list[tuple[int, int]] | None, out: Tensor | None = None) -> tuple[Tensor, EAState | None]:
    """A backend's ``attention`` (the dispatch protocol) through its ops module (``define_ops``).

    Under ``torch.compile`` the call is the custom op ``ops.forward_op``. In eager mode it is the same
    ``ops.forward_impl``, called directly when nothing needs a gradient, else through ``eager_forward`` (an
    ``autograd.Function`` with the custom op's autograd formula): the first call of any ``torch.library``
    custom op imports ``torch._dynamo``, about 0.8 s of a new process's first call once its kernels are cached
    (docs/measurements.md section 9), and every call pays the op's dispatch. ``out`` (validated, no gradients;
    only for backends whose ``forward_impl`` takes it) is written by the direct call; traced, the caller copies.
    """
    offsets, S0, Z0, M0 = op_state_inputs(q, order, causal, initial_state, cu_seqlens)
    want = bool(causal and output_final_state)
    args = (q, k, v, S0, Z0, M0, order, causal, float(scale), offsets, want)
    if torch.compiler.is_compiling():
        o, S, Z, M = ops.forward_op(*args)
    elif needs_grad(q, k, v):
        o, S, Z, M = eager_forward(ops).apply(*args)
    else:
        o, S, Z, M = ops.forward_impl(*args, **({} if out is None else {"out": out}))
    return (o, EAState(S, Z, M)) if want else (o, None)


_EAGER: dict[str, type] = {}


def eager_forward(ops) -> type:
    """The ``autograd.Function`` of ``ops.forward_impl`` with ``ops.backward_impl`` as its gradient: what the
    custom op ``ops.forward_op`` computes and differentiates, without the custom op (``run_attention``)."""
    fn = _EAGER.get(ops.__name__)
    if fn is not None:
        return fn

    class EagerForward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v, S0, Z0, M0, order, causal, scale, offsets, want):
            out = ops.forward_impl(q, k, v, S0, Z0, M0, order, causal, scale, offsets, want)
            _save_forward(ctx, (q, k, v, S0, Z0, M0, order, causal, scale, offsets, want), out)
            return out

        @staticmethod
        def backward(ctx, go, *_state_grads):
            return forward_grads(ctx, go, ops.backward_impl)

    EagerForward.__name__ = EagerForward.__qualname__ = f"EagerForward[{ops.__name__}]"
    _EAGER[ops.__name__] = EagerForward
    return EagerForward


def _save_forward(ctx, inputs, output) -> None:
    q, k, v, S0, Z0, M0, order, causal, scale, offsets, _want = inputs
    ctx.save_for_backward(q, k, v, S0, Z0, M0)
    ctx.meta = (order, causal, scale, offsets)
    ctx.mark_non_differentiable(*output[1:])


def forward_grads(ctx, go: Tensor, backward: Callable) -> tuple:
    """The forward's gradients in ``q, k, v`` (None for the rest): ``backward`` (the kernels' backward, as the
    custom op or its impl), or ``graphed_grads`` under ``create_graph=True``."""
    q, k, v, S0, Z0, M0 = ctx.saved_tensors
    if wants_graphed_grads():
        order, causal, scale, offsets = ctx.meta
        state = EAState(S0, Z0, M0) if causal else None
        return (*graphed_grads(q, k, v, go, state, order=order, causal=causal, scale=scale, offsets=offsets),
                *(None,) * 8)
    return (*backward(q, k, v, go, S0, Z0, M0, *ctx.meta), *(None,) * 8)


def run_step(ops, q: Tensor, k: Tensor, v: Tensor, state: EAState, *, order: int,
             scale: float) -> tuple[Tensor, EAState]:
    """A backend's ``recurrent_step`` through its ops module (``ops.step_op`` of ``define_ops``).

    Decode calls the step once per layer per token, and the custom op's dispatch costs about 10 us of a
    35 us TVM step; so with nothing to differentiate and outside ``torch.compile`` it calls ``ops.step_impl``
    (what the op runs) directly.
    """
    args = (q, k, v, state.S, state.Z, state.m, order, float(scale))
    direct = not torch.compiler.is_compiling() and not needs_grad(q, k, v)
    o, S, Z, M = ops.step_impl(*args) if direct else ops.step_op(*args)
    return o, EAState(S, Z, M)


def float32_state(S0: Tensor, Z0: Tensor, M0: Tensor, *, copy: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Contiguous float32 state tensors; ``copy`` (never the caller's memory) for kernels that update them
    in place. (``Tensor.to(memory_format=...)`` without a copy returns a strided float32 tensor as it is.)"""
    out = []
    for t in (S0, Z0, M0):
        c = t.to(torch.float32).contiguous()
        out.append(c.clone() if copy and c.data_ptr() == t.data_ptr() else c)
    return tuple(out)


@contextlib.contextmanager
def poison_outputs() -> Iterator[None]:
    """Within the block, every output and scratch buffer of the compiled backends starts as NaN, so a test
    sees any element a kernel forgot to write."""
    global _POISON
    old, _POISON = _POISON, True
    try:
        yield
    finally:
        _POISON = old


def poisoning() -> bool:
    """Whether ``poison_outputs`` is active (for buffers that are reused rather than allocated)."""
    return _POISON


def new_buffer(shape, dtype: torch.dtype, device) -> Tensor:
    """A contiguous output or scratch buffer (NaN under ``poison_outputs``); a large CPU one on huge pages
    (``host_pages``)."""
    buf = torch.empty(shape, dtype=dtype, device=device)
    advise_huge(buf)
    return buf.fill_(math.nan) if _POISON else buf


def refuse_double_backward(op: str) -> Callable:
    """An autograd formula for the backward custom op ``op``, which has no derivative of its own. It is reached
    only when the backward op itself was put on a graph (``torch.compile``'s joint graph under a double
    backward): ``create_graph=True`` in eager mode differentiates ``graphed_grads`` instead."""

    def refuse(ctx, *grads):
        raise RuntimeError(
            f"double backward is not supported by the compiled ea-ops backends here ({op}, the gradient of their "
            "kernels, has no derivative of its own); backend='torch' computes second derivatives")

    return refuse


def wants_graphed_grads() -> bool:
    """A backward asked for gradients that are themselves differentiable (``create_graph=True``), outside a
    traced graph."""
    return torch.is_grad_enabled() and not torch.compiler.is_compiling()


def graphed_grads(q: Tensor, k: Tensor, v: Tensor, go: Tensor, state: EAState | None, *, order: int,
                  causal: bool, scale: float, offsets: list[int], step: bool = False):
    """``dq, dk, dv`` of ``sum(go * o)`` as differentiable functions of ``q, k, v`` (for second derivatives).

    The compiled kernels' backward has no derivative of its own, so under ``create_graph=True`` the gradient is
    the torch backend's, whose second derivatives are tested against ``gradgradcheck`` in float64: slower, but
    ``backend="auto"`` (which takes a compiled backend) computes gradient penalties and Hessian products as the
    torch backend does. ``step``: ``q, k, v [B, H, D]`` of one recurrent step from ``state``.
    """
    from .torch import ops as torch_ops

    wrt = [t for t in (q, k, v) if t.requires_grad]
    if not wrt:
        return None, None, None
    if step:
        o, _ = torch_ops.recurrent_step(q, k, v, state, order=order, scale=scale)
    else:
        o, _ = torch_ops.attention(q, k, v, order=order, causal=causal, scale=scale, initial_state=state,
                                   output_final_state=False, cu_seqlens=segments_of(offsets))
    found = iter(torch.autograd.grad(o, wrt, go.to(o.dtype), create_graph=True, allow_unused=True))
    return tuple(next(found) if t.requires_grad else None for t in (q, k, v))


def no_state(q: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Three distinct empty float32 tensors: a custom op's 'no state' (its outputs must not alias)."""
    return tuple(q.new_empty(0, dtype=torch.float32) for _ in range(3))


def define_ops(ns: str, forward_impl: Callable, backward_impl: Callable, step_impl: Callable):
    """The three ``torch.library`` custom ops of a compiled backend, with fake implementations and autograd:

    - ``ns::forward(q, k, v, S0, Z0, M0, order, causal, scale, offsets, want_state) -> (o, S, Z, M)``: the final
      state when ``causal and want_state``, else three empty tensors. Its gradient is ``ns::backward``, or
      ``graphed_grads`` (the torch backend's, differentiable) under ``create_graph=True``.
    - ``ns::backward(q, k, v, g, S0, Z0, M0, order, causal, scale, offsets) -> (dq, dk, dv)``; it has no
      derivative of its own (``refuse_double_backward``).
    - ``ns::step(q_t, k_t, v_t, S0, Z0, M0, order, scale) -> (o_t, S, Z, M)``; its gradient is the causal
      ``ns::backward`` at ``T = 1`` from the step's input state.

    States are data: they get no gradient. Returns ``(forward_op, backward_op, step_op)``.
    """

    @torch.library.custom_op(f"{ns}::forward", mutates_args=())
    def forward_op(q: Tensor, k: Tensor, v: Tensor, S0: Tensor, Z0: Tensor, M0: Tensor, order: int, causal: bool,
                   scale: float, offsets: list[int], want_state: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return forward_impl(q, k, v, S0, Z0, M0, order, causal, scale, offsets, want_state)

    @forward_op.register_fake
    def _(q, k, v, S0, Z0, M0, order, causal, scale, offsets, want_state):
        o = torch.empty_like(q, memory_format=torch.contiguous_format)
        if causal and want_state:
            return (o, *(t.new_empty(t.shape, dtype=torch.float32) for t in (S0, Z0, M0)))
        return (o, *no_state(q))

    @torch.library.custom_op(f"{ns}::backward", mutates_args=())
    def backward_op(q: Tensor, k: Tensor, v: Tensor, g: Tensor, S0: Tensor, Z0: Tensor, M0: Tensor, order: int,
                    causal: bool, scale: float, offsets: list[int]) -> tuple[Tensor, Tensor, Tensor]:
        return backward_impl(q, k, v, g, S0, Z0, M0, order, causal, scale, offsets)

    @backward_op.register_fake
    def _(q, k, v, g, S0, Z0, M0, order, causal, scale, offsets):
        return tuple(torch.empty_like(q, memory_format=torch.contiguous_format) for _ in range(3))

    @torch.library.custom_op(f"{ns}::step", mutates_args=())
    def step_op(q: Tensor, k: Tensor, v: Tensor, S0: Tensor, Z0: Tensor, M0: Tensor, order: int,
                scale: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return step_impl(q, k, v, S0, Z0, M0, order, scale)

    @step_op.register_fake
    def _(q, k, v, S0, Z0, M0, order, scale):
        return (torch.empty_like(q, memory_format=torch.contiguous_format),
                *(t.new_empty(t.shape, dtype=torch.float32) for t in (S0, Z0, M0)))

    def forward_backward(ctx, go, *_state_grads):
        return forward_grads(ctx, go, backward_op)

    def step_setup(ctx, inputs, output):
        q, k, v, S0, Z0, M0, order, scale = inputs
        ctx.save_for_backward(q, k, v, S0, Z0, M0)
        ctx.meta = (order, scale)
        ctx.mark_non_differentiable(*output[1:])

    def step_backward(ctx, go, *_state_grads):
        q, k, v, S0, Z0, M0 = ctx.saved_tensors
        order, scale = ctx.meta
        if wants_graphed_grads():
            return (*graphed_grads(q, k, v, go, EAState(S0, Z0, M0), order=order, causal=True, scale=scale,
                                   offsets=[], step=True), *(None,) * 5)
        grads = backward_op(*(t.unsqueeze(1) for t in (q, k, v, go)), S0, Z0, M0, order, True, scale, [])
        return (*(t.squeeze(1) for t in grads), *(None,) * 5)

    forward_op.register_autograd(forward_backward, setup_context=_save_forward)
    step_op.register_autograd(step_backward, setup_context=step_setup)
    backward_op.register_autograd(refuse_double_backward(f"{ns}::backward"))
    return forward_op, backward_op, step_op
