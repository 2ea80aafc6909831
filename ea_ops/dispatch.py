"""Backend registry. Backends are modules imported lazily, so ``import ea_ops`` needs only torch.

A backend module defines:
    NAME, EXTRA                                   its name and the pip extra that provides it (or None)
    unavailable_reason() -> str | None            None when it can run in this process
    supports(q, *, causal, order, needs_grad) -> str | None   None when it handles this call
    prefers(q, order) -> bool                     whether "auto" should pick it for such tensors
    attention(q, k, v, *, order, causal, scale, initial_state, output_final_state, cu_seqlens)
    recurrent_step(q, k, v, state, *, order, scale)
Inputs reach a backend validated; ``cu_seqlens`` arrives as a list of ``(begin, end)`` pairs.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch

from .errors import BackendUnavailableError

BACKEND_MODULES = {
    "torch": "ea_ops.backends.torch.backend",
    "tvm": "ea_ops.backends.tvm.backend",
    "triton": "ea_ops.backends.triton.backend",
}
AUTO_ORDER = ("triton", "tvm", "torch")


_LOADED: dict[str, ModuleType] = {}


def load(name: str) -> ModuleType:
    """The backend module; raises BackendUnavailableError naming the extra when it cannot run.

    A usable module is cached, so repeated calls (and torch.compile, which cannot trace importlib) skip the
    import machinery.
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


def resolve(backend: str, q: torch.Tensor, *, causal: bool, order: int, needs_grad: bool) -> ModuleType:
    if backend != "auto":
        mod = load(backend)
        why = mod.supports(q, causal=causal, order=order, needs_grad=needs_grad)
        if why is not None:
            raise BackendUnavailableError(f"backend={backend!r} cannot run this call: {why}")
        return mod
    for name in AUTO_ORDER:
        try:
            mod = load(name)
        except BackendUnavailableError:
            continue
        if name == "torch" or (
            mod.prefers(q, order)
            and mod.supports(q, causal=causal, order=order, needs_grad=needs_grad) is None
        ):
            return mod
    raise AssertionError("unreachable: the torch backend is always available")
