"""Input validation for the public operators: every bad input names the argument and what was expected."""

from __future__ import annotations

import math
import numbers

import torch

from .state import EAState

MAX_ORDER = 32
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
BACKENDS = ("auto", "torch", "tvm", "triton")


def check_order(order: object, *, allow_odd: bool = False) -> int:
    if isinstance(order, bool) or not isinstance(order, numbers.Integral):
        raise TypeError(f"order must be an int, got {type(order).__name__}")
    order = int(order)
    if order < 0:
        raise ValueError(f"order must be a non-negative even int, got {order}")
    if order % 2 and not allow_odd:
        raise ValueError(
            f"order must be even (odd Taylor orders give negative attention weights), got {order}"
        )
    if order > MAX_ORDER:
        raise ValueError(f"order must be at most {MAX_ORDER}, got {order}")
    return order


def check_scale(scale: object) -> float:
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a real number, got {type(scale).__name__}")
    scale = float(scale)
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a finite number > 0, got {scale}")
    return scale


def check_flag(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def check_backend(backend: object) -> str:
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, got {type(backend).__name__}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def check_qkv(q: object, k: object, v: object, rank: int, names: tuple[str, str, str] = ("q", "k", "v")) -> int:
    """q, k, v: tensors with ``rank`` dims, one float dtype, one device; ``k, v`` of one shape, that of ``q``
    but for their heads ``H_kv``, which divide ``q``'s ``H`` (grouped-query attention). Returns ``H_kv``.

    ``names`` are the caller's parameter names (the step's are ``q_t, k_t, v_t``), so messages name them.
    """
    layout = "[B, T, H, D]" if rank == 4 else "[B, H, D]"
    qn = names[0]
    for name, t in zip(names, (q, k, v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != rank:
            raise ValueError(f"{name} must have shape {layout} ({rank} dims), got shape {tuple(t.shape)}")
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(
                f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}"
            )
    hd = rank - 2  # the heads' dim
    H, H_kv = q.shape[hd], k.shape[hd]
    for name, t in zip(names[1:], (k, v)):
        same = t.shape[:hd] == q.shape[:hd] and t.shape[hd + 1:] == q.shape[hd + 1:]
        if not same or (name == names[2] and t.shape != k.shape):
            raise ValueError(f"{name} must have the shape of {qn} {tuple(q.shape)}, or of it with fewer heads "
                             f"dividing H = {H} (grouped-query attention; {names[1]} and {names[2]} alike), "
                             f"got {tuple(t.shape)}")
        if t.dtype != q.dtype:
            raise TypeError(f"{name} must have the dtype of {qn} ({q.dtype}), got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name} must be on the device of {qn} ({q.device}), got {t.device}")
    if H_kv != H and (H_kv == 0 or H % H_kv):
        raise ValueError(f"{names[1]} and {names[2]} must have a number of heads dividing {qn}'s H = {H} "
                         f"(grouped-query attention: query head h reads kv head h // (H / H_kv)), got {H_kv}")
    return H_kv


def needs_grad(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether a call on ``q, k, v`` builds an autograd graph (grad mode on, an input requiring grad)."""
    return torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)


def _span(t: torch.Tensor) -> tuple[int, int]:
    """The bytes ``[first, last)`` a tensor's elements occupy (its strides' extent)."""
    start = t.data_ptr()
    extent = sum((n - 1) * abs(st) for n, st in zip(t.shape, t.stride(), strict=True)) + 1
    return start, start + extent * t.element_size()


def check_out(out: object, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, grad: bool) -> torch.Tensor:
    """``out=`` of ``ea_attention``: a contiguous tensor like ``q`` that shares no memory with ``q, k, v``, for
    a call that builds no autograd graph (``grad``: whether it would)."""
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"out must be a torch.Tensor, got {type(out).__name__}")
    if out.shape != q.shape:
        raise ValueError(f"out must have the shape of q {tuple(q.shape)}, got {tuple(out.shape)}")
    if out.dtype != q.dtype or out.device != q.device:
        raise ValueError(f"out must be {q.dtype} on {q.device} like q, got {out.dtype} on {out.device}")
    if not out.is_contiguous():
        raise ValueError("out must be contiguous")
    if grad or out.requires_grad:
        raise ValueError("out= takes calls without gradients (torch.no_grad(), or inputs that do not require "
                         "grad): autograd cannot differentiate into a buffer the call writes")
    if out.numel() and not torch.compiler.is_compiling():  # addresses are not traceable
        lo, hi = _span(out)
        for name, t in (("q", q), ("k", k), ("v", v)):
            a, b = _span(t)
            if t.numel() and a < hi and lo < b:
                raise ValueError(f"out must not share memory with {name}")
    return out


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """Sums accumulate in float32; float64 inputs (references, gradcheck) keep float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_state(state: object, name: str, *, batch: int, heads: int, dim: int, order: int,
                q: torch.Tensor, q_name: str = "q") -> EAState:
    if not isinstance(state, EAState):
        raise TypeError(f"{name} must be an ea_ops.EAState, got {type(state).__name__}")
    want = (batch, heads, order + 1, dim)
    for field in ("S", "Z"):
        t = getattr(state, field)
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}.{field} must be a torch.Tensor, got {type(t).__name__}")
        if tuple(t.shape) != want:
            got_order = t.shape[2] - 1 if t.dim() == 4 else "?"
            raise ValueError(
                f"{name}.{field} must have shape [B, H, order+1, D] = {list(want)} for order={order}, "
                f"got {list(t.shape)} (order {got_order})"
            )
    if not isinstance(state.m, torch.Tensor) or tuple(state.m.shape) != (batch, heads, dim):
        shape = list(state.m.shape) if isinstance(state.m, torch.Tensor) else type(state.m).__name__
        raise ValueError(f"{name}.m must have shape [B, H, D] = {[batch, heads, dim]}, got {shape}")
    want_dtype = state_dtype(q.dtype)
    for field in ("S", "Z", "m"):
        t = getattr(state, field)
        if t.dtype != want_dtype:
            raise TypeError(f"{name}.{field} must be {want_dtype} for {q.dtype} inputs, got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name}.{field} must be on the device of {q_name} ({q.device}), got {t.device}")
    return state


def check_cu_seqlens(cu_seqlens: object, q: torch.Tensor) -> list[tuple[int, int]]:
    """Validated ``[N+1]`` offsets as a list of ``(begin, end)`` pairs."""
    if not isinstance(cu_seqlens, torch.Tensor):
        raise TypeError(f"cu_seqlens must be a torch.Tensor, got {type(cu_seqlens).__name__}")
    if cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"cu_seqlens must be int32 or int64, got {cu_seqlens.dtype}")
    # the offsets are read on the host: the CPU or q's own device (a meta tensor has no values to read)
    if cu_seqlens.device.type == "meta" or (cu_seqlens.device.type != "cpu" and cu_seqlens.device != q.device):
        raise ValueError(f"cu_seqlens must be on the CPU or on the device of q ({q.device}), "
                         f"got {cu_seqlens.device}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens must have shape [N+1] with N >= 1, got {tuple(cu_seqlens.shape)}")
    if q.shape[0] != 1:
        raise ValueError(f"cu_seqlens needs batch size 1 (sequences packed along T), got q batch {q.shape[0]}")
    offsets = [int(x) for x in cu_seqlens.tolist()]
    T = q.shape[1]
    if offsets[0] != 0 or offsets[-1] != T:
        raise ValueError(f"cu_seqlens must start at 0 and end at T={T}, got {offsets[0]}..{offsets[-1]}")
    if any(b < a for a, b in zip(offsets, offsets[1:])):
        raise ValueError("cu_seqlens must be non-decreasing")
    return list(zip(offsets[:-1], offsets[1:]))


_LAYOUTS = {4: "B,T,H,D", 3: "B,H,D"}
_WORDS = {4: "four", 3: "three"}


def parse_shape(text: str, *, option: str = "--shape", ranks: tuple[int, ...] = (4,),
                allow_zero: bool = False) -> tuple[int, ...]:
    """A command line's ``"B,T,H,D"`` (or ``"B,H,D"`` where ``ranks`` has 3) as ints; ValueError naming
    ``option`` otherwise. Sizes are positive, or non-negative with ``allow_zero``."""
    try:
        dims = tuple(int(p.strip()) for p in text.split(","))
    except ValueError:
        dims = ()
    low = 0 if allow_zero else 1
    if len(dims) not in ranks or any(d < low for d in dims):
        kind = "non-negative" if allow_zero else "positive"
        forms = " or ".join(f"{_WORDS[r]} {kind} ints {_LAYOUTS[r]}" for r in ranks)
        raise ValueError(f"{option} must be {forms}, got {text!r}")
    return dims
