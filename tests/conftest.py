"""Shared test set-up: Hypothesis profiles (HYPOTHESIS_PROFILE=ci in CI), the gpu marker, and a user cache
folder of the session's own."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest
import torch
from hypothesis import HealthCheck, settings

# Tests never write into the real ~/.cache/ea-ops (records, compiled kernels): the whole session, and every
# child process it starts (they inherit os.environ), uses one temporary user cache. A child pytest keeps its
# parent's (the marker says it is a test session's folder).
_SESSION_CACHE_MARK = "EA_OPS_TEST_SESSION_CACHE"
if os.environ.get(_SESSION_CACHE_MARK) != "1" or not os.environ.get("EA_OPS_CACHE_DIR"):
    _session_cache = tempfile.mkdtemp(prefix="ea-ops-test-cache-")
    atexit.register(shutil.rmtree, _session_cache, True)
    os.environ["EA_OPS_CACHE_DIR"] = _session_cache
    os.environ[_SESSION_CACHE_MARK] = "1"

settings.register_profile(
    "ci", max_examples=20, deadline=None, derandomize=True, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=50, deadline=None)
settings.register_profile("thorough", max_examples=500, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.hookimpl(trylast=True)  # after -k / -m deselection: start only the children that will be waited for
def pytest_collection_modifyitems(config, items):
    if not config.option.collectonly:
        _interpreter_runs_in_the_background(items)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _interpreter_runs_in_the_background(items) -> None:
    """The Triton interpreter's child runs (tests/ea_ops/test_triton_interp.py) start now, beside the rest of
    the suite, and their tests move to the end, where they wait for them."""
    mine = [it for it in items if it.path.name == "test_triton_interp.py"]
    if not mine:
        return
    items[:] = [it for it in items if it.path.name != "test_triton_interp.py"] + mine
    mine[0].module.start([it.callspec.params["module"] for it in mine])


def pytest_sessionfinish(session, exitstatus):
    for item in getattr(session, "items", []):
        if item.path.name == "test_triton_interp.py":
            item.module.stop()
            return


@pytest.fixture
def record_roots(tmp_path, monkeypatch):
    """Empty user and shipped record folders under ``tmp_path`` (``user/``, ``shipped/``), with the
    records module's warn-once memory cleared; returns ``tmp_path``."""
    from ea_ops import records

    monkeypatch.setenv("EA_OPS_CACHE_DIR", str(tmp_path / "user"))
    monkeypatch.setenv("EA_OPS_SHIPPED_CACHE", str(tmp_path / "shipped"))
    records._warned.clear()
    return tmp_path
