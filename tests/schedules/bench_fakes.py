"""Fake backends for the bench tests: modules that dispatch loads in place of a real backend."""

from __future__ import annotations

import sys
import types

from ea_ops import dispatch

torch_backend = dispatch.load("torch")  # the dispatch protocol's module of the reference backend

# One thread: the tiny test shapes gain nothing from two, and on a loaded machine a second OpenMP thread
# waiting for a descheduled one makes every small op 10-100x slower.
FAST = ["--threads", "1", "--budget-s", "0.1", "--settle-s", "0", "--no-progress"]


def install(monkeypatch, name: str = "tvm", *, attention=None, recurrent_step=None, unavailable=None) -> None:
    """Make ``backend=name`` load a module whose calls are ``attention`` / ``recurrent_step`` (default: the
    torch backend's, i.e. a correct kernel)."""
    mod = types.ModuleType(f"tests_fake_backend_{name}")
    mod.NAME, mod.EXTRA = name, None
    mod.unavailable_reason = lambda: unavailable
    mod.supports = lambda q, **kw: None
    mod.prefers = lambda q, order: False
    mod.attention = attention or torch_backend.attention
    mod.recurrent_step = recurrent_step or torch_backend.recurrent_step
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setitem(dispatch.BACKEND_MODULES, name, mod.__name__)
    if hasattr(dispatch, "_LOADED"):
        # dispatch caches loaded modules: a fresh cache for this test, the real one restored afterwards
        monkeypatch.setattr(dispatch, "_LOADED", {k: v for k, v in dispatch._LOADED.items() if k != name})
    monkeypatch.setattr(dispatch, "_CHOSEN", {})  # and its choices, which name the real module
