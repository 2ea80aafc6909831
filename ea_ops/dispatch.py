"""Backend registry and the choice ``backend="auto"`` makes. Backends are imported lazily, so ``import ea_ops``
needs only torch.

A backend module defines:
    NAME, EXTRA                                   its name and the pip extra that provides it (or None)
    unavailable_reason() -> str | None            None when it can run in this process
    supports(q, *, causal, order, needs_grad) -> str | None   None when it handles this call
    prefers(q, order) -> bool                     whether "auto" should pick it for such tensors
    attention(q, k, v, *, order, causal, scale, initial_state, output_final_state, cu_seqlens)
    recurrent_step(q, k, v, state, *, order, scale)
    explain(q, *, order, causal, needs_grad) -> dict   (optional) the schedule a call would get, and why
    stepper(state, *, order, scale, dtype) -> step    (optional) ``step(q_t, k_t, v_t) -> o_t`` updating the
                                                  caller's state in place (``ea_ops.EADecoder``)
    WRITES_OUT = True                             (optional) ``attention`` takes ``out=`` and writes it; for the
                                                  others ``ea_attention`` copies the output into ``out``
Inputs reach a backend validated; ``cu_seqlens`` arrives as a list of ``(begin, end)`` pairs.

``auto`` takes the first of ``AUTO_ORDER`` that is installed, prefers the tensors and supports the call: Triton
on CUDA, TVM on any CPU (tuned record, transferred record or default schedule: ``ea_ops.explain_backend``
says which), torch where neither can run the call. ``EA_OPS_BACKEND`` (one of ``BACKENDS``) replaces
``auto`` for every call that asks for it; an explicit ``backend=`` argument is never overridden.

Under ``torch.compile`` the choice is made once per traced call outside the graph (as
``torch.compiler.assume_constant_result`` marks a function): it imports modules and reads files, which Dynamo
cannot trace.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from types import ModuleType

import torch

from .errors import BackendUnavailableError

BACKEND_MODULES = {
    "torch": "ea_ops.backends.torch.backend",
    "tvm": "ea_ops.backends.tvm.backend",
    "triton": "ea_ops.backends.triton.backend",
}
AUTO_ORDER = ("triton", "tvm", "torch")
ENV_BACKEND = "EA_OPS_BACKEND"


_LOADED: dict[str, ModuleType] = {}


def load(name: str) -> ModuleType:
    """The backend module; raises BackendUnavailableError naming the extra when it cannot run.

    A usable module is cached, so repeated calls skip the import machinery.
    """
    if name in _LOADED:
        return _LOADED[name]
    try:
        mod = importlib.import_module(BACKEND_MODULES[name])
    except ImportError as exc:
        raise BackendUnavailableError(
            f"backend={name!r} is not available: {exc}. Install it with: pip install 'ea-ops[{name}]'"
        ) from exc
    reason = mod.unavailable_reason()
    if reason is not None:
        extra = f" (pip install 'ea-ops[{mod.EXTRA}]')" if mod.EXTRA else ""
        raise BackendUnavailableError(f"backend={name!r} is not available: {reason}{extra}")
    _LOADED[name] = mod
    return mod


def available() -> dict[str, str | None]:
    """``{name: None if usable else why not}`` for every known backend."""
    out = {}
    for name in BACKEND_MODULES:
        try:
            load(name)
            out[name] = None
        except BackendUnavailableError as exc:
            out[name] = str(exc)
    return out


def env_backend() -> str | None:
    """``EA_OPS_BACKEND`` when set (and not ``auto``); ValueError naming the variable for an unknown value."""
    value = os.environ.get(ENV_BACKEND)
    if not value or value == "auto":
        return None
    if value not in BACKEND_MODULES:
        raise ValueError(f"{ENV_BACKEND} must be one of {('auto', *BACKEND_MODULES)}, got {value!r}")
    return value


@dataclass
class Choice:
    """What dispatch decided for one call: the backend, how it was asked for, and why each other was passed."""

    backend: str
    requested: str  # the backend= argument
    via: str  # "argument", "EA_OPS_BACKEND" or "auto"
    passed: dict[str, str] = field(default_factory=dict)  # backend -> why auto did not take it


def choose(backend: str, q: torch.Tensor, *, causal: bool, order: int, needs_grad: bool) -> Choice:
    """The backend a call runs on (see the module docstring); BackendUnavailableError when the named one cannot."""
    requested = backend
    via = "argument"
    if backend == "auto":
        env = env_backend()
        if env is not None:
            backend, via = env, ENV_BACKEND
    if backend != "auto":
        where = f"backend={backend!r}" if via == "argument" else f"{ENV_BACKEND}={backend!r}"
        try:
            mod = load(backend)
        except BackendUnavailableError as exc:
            if via == "argument":
                raise
            raise BackendUnavailableError(f"{where}: {exc}") from exc
        why = mod.supports(q, causal=causal, order=order, needs_grad=needs_grad)
        if why is not None:
            raise BackendUnavailableError(f"{where} cannot run this call: {why}")
        return Choice(backend, requested, via)
    passed: dict[str, str] = {}
    for name in AUTO_ORDER:
        try:
            mod = load(name)
        except BackendUnavailableError as exc:
            passed[name] = str(exc)
            continue
        if name == "torch":
            return Choice(name, requested, "auto", passed)
        why = mod.supports(q, causal=causal, order=order, needs_grad=needs_grad)
        if why is not None:
            passed[name] = f"cannot run this call: {why}"
            continue
        if not mod.prefers(q, order):
            passed[name] = f"not used by auto for {q.device.type} {str(q.dtype).removeprefix('torch.')} tensors"
            continue
        return Choice(name, requested, "auto", passed)
    raise AssertionError("unreachable: the torch backend is always available")


class _Probe:
    """What dispatch reads of ``q`` (device, dtype, shape), as plain values: the argument of the choice made
    outside a traced graph."""

    def __init__(self, device_type: str, dtype: torch.dtype, shape: tuple[int, ...]):
        self.device = torch.device(device_type)
        self.dtype = dtype
        self.shape = torch.Size(shape)

    def dim(self) -> int:
        return len(self.shape)

    def numel(self) -> int:
        return self.shape.numel()


def _choose_traced(backend: str, device_type: str, dtype: torch.dtype, shape: tuple[int, ...], causal: bool,
                   order: int, needs_grad: bool) -> str:
    return choose(backend, _Probe(device_type, dtype, shape), causal=causal, order=order,
                  needs_grad=needs_grad).backend


# What ``torch.compiler.assume_constant_result`` does, without importing ``torch._dynamo`` (and sympy) on
# ``import ea_ops``; tests/ea_ops/test_compile.py fails if Dynamo stops honouring it.
_choose_traced._dynamo_marked_constant = True  # type: ignore[attr-defined]


# Choices made, by everything ``choose`` reads of a call: a decode step asks once per layer per token, and
# walking the backends costs ~4 us. Bounded: cleared when full (shapes vary without end in some programs).
_CHOSEN: dict[tuple, ModuleType] = {}
_CHOSEN_MAX = 512


def resolve(backend: str, q: torch.Tensor, *, causal: bool, order: int, needs_grad: bool) -> ModuleType:
    """The backend module for this call (``choose``), also from inside ``torch.compile``."""
    if torch.compiler.is_compiling():
        # Sizes may be symbolic in a graph, and only constants cross into the choice: it sees every size as 1,
        # so the backends' size limits (int32 indexing, launch grids) are not checked for traced calls.
        name = _choose_traced(backend, q.device.type, q.dtype, (1,) * q.dim(), causal, order, needs_grad)
        return _LOADED[name]
    key = (backend, os.environ.get(ENV_BACKEND), q.device, q.dtype, q.shape, causal, order, needs_grad)
    mod = _CHOSEN.get(key)
    if mod is None:
        mod = load(choose(backend, q, causal=causal, order=order, needs_grad=needs_grad).backend)
        if len(_CHOSEN) >= _CHOSEN_MAX:
            _CHOSEN.clear()
        _CHOSEN[key] = mod
    return mod
