"""Shared test set-up: Hypothesis profiles (HYPOTHESIS_PROFILE=ci in CI) and the gpu marker."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=20, deadline=None, derandomize=True, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=50, deadline=None)
settings.register_profile("thorough", max_examples=500, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def record_roots(tmp_path, monkeypatch):
    """Empty user and shipped record folders under ``tmp_path`` (``user/``, ``shipped/``), with the
    records module's warn-once memory cleared; returns ``tmp_path``."""
    from ea_ops import records

    monkeypatch.setenv("EA_OPS_CACHE_DIR", str(tmp_path / "user"))
    monkeypatch.setenv("EA_OPS_SHIPPED_CACHE", str(tmp_path / "shipped"))
    records._warned.clear()
    return tmp_path
