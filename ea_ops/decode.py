"""Decoding with a state updated in place: ``EADecoder`` checks its state once and, on its first step, picks the
backend and kernel once, so that later steps cost little more than the kernel (docs/design.md section 4)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from . import checks, dispatch, gqa
from .api import ea_recurrent_step
from .state import EAState

_STATE_DTYPES = (torch.float32, torch.float64)


@dataclass(frozen=True)
class _Plan:
    """The fast path for inputs of one shape, dtype and device: ``step(q, k, v) -> o`` updates the state."""

    shape: torch.Size
    kv_shape: torch.Size
    dtype: torch.dtype
    device: torch.device
    step: Callable[[Tensor, Tensor, Tensor], Tensor]


class EADecoder:
    """Causal EA-t decoding over a preallocated ``state`` that every ``step`` updates in place.

    ``state``: an ``EAState`` whose ``S, Z [B, H_kv, t+1, D]`` and ``m [B, H_kv, D]`` are contiguous, separate,
    need no grad, and are float32 (float64 for float64 inputs, torch backend). ``step(q_t, k_t, v_t)`` with
    ``q_t [B, H, D]`` and ``k_t, v_t [B, H_kv, D]`` (``H_kv`` dividing ``H``: grouped-query attention; equal
    otherwise) returns ``o_t [B, H, D]`` and writes the new state into ``state``: bit for bit what
    ``ea_recurrent_step(q_t, k_t, v_t, state, order, scale, backend)`` returns, without a new state per token.

    The backend (``"auto"`` too) and its kernel, tuned record included, are chosen on the first step for each
    input dtype and device, then kept: a decoder made later sees records written since. Steps that need
    gradients, or run under ``torch.compile``, call ``ea_recurrent_step`` (on a copy of the state when
    gradients are needed: autograd keeps a step's input state for its backward) and copy the result back.
    """

    def __init__(self, state: EAState, *, order: int = 6, scale: float = 1.0, backend: str = "auto") -> None:
        self.order = checks.check_order(order)
        self.scale = checks.check_scale(scale)
        self.backend = checks.check_backend(backend)
        self._state = check_inplace_state(state, "state", order=self.order)
        self._plan: _Plan | None = None

    @property
    def state(self) -> EAState:
        """The state given to the constructor (the same tensors), as of the last step."""
        return self._state

    def reset(self) -> None:
        """Back to the state before any token (zero sums, ``m = +inf``), in place."""
        self._state.S.zero_()
        self._state.Z.zero_()
        self._state.m.fill_(math.inf)

    def step(self, q_t: Tensor, k_t: Tensor, v_t: Tensor) -> Tensor:
        """One token: ``q_t [B, H, D]``, ``k_t, v_t [B, H_kv, D]`` -> ``o_t [B, H, D]``; the state is updated in
        place."""
        p = self._plan
        if (p is not None and type(q_t) is Tensor and type(k_t) is Tensor and type(v_t) is Tensor
                and q_t.shape == p.shape and k_t.shape == p.kv_shape and v_t.shape == p.kv_shape
                and q_t.dtype == p.dtype and k_t.dtype == p.dtype and v_t.dtype == p.dtype
                and q_t.device == p.device and k_t.device == p.device and v_t.device == p.device
                and not (torch.is_grad_enabled() and (q_t.requires_grad or k_t.requires_grad or v_t.requires_grad))
                and not torch.compiler.is_compiling()):
            if not (q_t.is_contiguous() and k_t.is_contiguous() and v_t.is_contiguous()):
                q_t, k_t, v_t = q_t.contiguous(), k_t.contiguous(), v_t.contiguous()
            return p.step(q_t, k_t, v_t)
        return self._checked_step(q_t, k_t, v_t)

    def _checked_step(self, q_t: Tensor, k_t: Tensor, v_t: Tensor) -> Tensor:
        """A step through ``ea_recurrent_step`` (which validates everything), its new state copied into ours;
        then, where the fast path may run, its plan for inputs like these."""
        checks.check_qkv(q_t, k_t, v_t, rank=3, names=("q_t", "k_t", "v_t"))
        st = self._state
        if k_t.shape != st.m.shape:
            Bs, _, Ds = st.m.shape
            name, layout, got = (("q_t", "H", q_t) if (q_t.shape[0], q_t.shape[2]) != (Bs, Ds)
                                 else ("k_t", "H_kv", k_t))
            raise ValueError(f"{name} must have shape [B, {layout}, D] = {list(st.m.shape)} (the decoder's state), "
                             f"got {list(got.shape)}")
        grads = checks.needs_grad(q_t, k_t, v_t)
        o, new = ea_recurrent_step(q_t, k_t, v_t, st.clone() if grads else st, order=self.order,
                                   scale=self.scale, backend=self.backend)
        _copy_state(st, new)
        if not grads and not torch.compiler.is_compiling() and st.m.numel() > 0:
            self._plan = self._make_plan(q_t, k_t)
        return o

    def _make_plan(self, q_t: Tensor, k_t: Tensor) -> _Plan:
        mod = dispatch.resolve(self.backend, q_t, causal=True, order=self.order, needs_grad=False)
        st, order, scale = self._state, self.order, self.scale
        groups = q_t.shape[1] // st.m.shape[1]
        make = getattr(mod, "stepper", None)  # optional in the dispatch protocol: a backend's in-place step
        if make is not None and groups == 1:
            step = make(st, order=order, scale=scale, dtype=q_t.dtype)
        else:  # grouped heads: the kernel's heads are the query heads' (gqa), its state folded back
            def step(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
                o, new = mod.recurrent_step(q, gqa.broadcast(k, groups, 1), gqa.broadcast(v, groups, 1),
                                            gqa.broadcast_state(st, groups), order=order, scale=scale)
                _copy_state(st, gqa.fold_state(new, groups))
                return o
        return _Plan(q_t.shape, k_t.shape, q_t.dtype, q_t.device, step)


def _copy_state(dst: EAState, src: EAState) -> None:
    for d, s in ((dst.S, src.S), (dst.Z, src.Z), (dst.m, src.m)):
        if s is not d:
            d.copy_(s)


def check_inplace_state(state: object, name: str, *, order: int) -> EAState:
    """``state`` as an in-place decoder takes it (``EADecoder``); errors name ``name`` and the field."""
    if not isinstance(state, EAState):
        raise TypeError(f"{name} must be an ea_ops.EAState, got {type(state).__name__}")
    fields = {f: getattr(state, f) for f in ("S", "Z", "m")}
    for f, t in fields.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}.{f} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in _STATE_DTYPES:
            raise TypeError(f"{name}.{f} must be float32 (float64 for float64 inputs), got {t.dtype}")
    S = fields["S"]
    if S.dim() != 4:
        raise ValueError(f"{name}.S must have shape [B, H, order+1, D], got {list(S.shape)}")
    B, H, _, D = S.shape
    checks.check_state(state, name, batch=B, heads=H, dim=D, order=order, q=S.new_empty(0), q_name=f"{name}.S")
    for f, t in fields.items():
        if not t.is_contiguous():
            raise ValueError(f"{name}.{f} must be contiguous to be updated in place, got strides {t.stride()} "
                             "(pass a contiguous copy)")
        if t.requires_grad:
            raise ValueError(f"{name}.{f} requires grad: a decoder's state is data updated in place "
                             "(pass it detached)")
    spans = {f: (t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()) for f, t in fields.items() if t.numel()}
    names = list(spans)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if spans[a][0] < spans[b][1] and spans[b][0] < spans[a][1]:
                raise ValueError(f"{name}.{a} and {name}.{b} share memory: an in-place state needs three separate "
                                 "tensors")
    return state
