"""Benchmark suite set-up (``make bench``): the device, two CPU threads, and a summary printed at the end."""

from __future__ import annotations

import pytest
import torch

SUMMARY: list[str] = []


def pytest_configure(config):
    torch.set_num_threads(2)  # the bench's CPU setting (ea-ops bench --threads 2)


@pytest.fixture(scope="session")
def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def summary() -> list[str]:
    """Lines appended here are printed after the benchmark tables."""
    return SUMMARY


def pytest_terminal_summary(terminalreporter):
    if SUMMARY:
        terminalreporter.section("ea-ops benchmark summary")
        for line in SUMMARY:
            terminalreporter.write_line(line)
