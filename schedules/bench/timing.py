"""Timers: ``torch.utils.benchmark`` on CPU, ``triton.testing.do_bench`` on CUDA; medians after warm-up."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

FAST_CALL_S = 0.05  # below this, let blocked_autorange choose how many calls make one sample


@dataclass
class Timing:
    median_s: float
    samples: int
    timer: str


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def estimate(fn: Callable[[], object], device: str) -> float:
    """Seconds of one call (after the caller's warm-up)."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def time_cpu(fn: Callable[[], object], *, threads: int, min_run_s: float, budget_s: float) -> Timing:
    """Median on CPU with ``threads`` threads: one warm-up call, then samples for about ``budget_s``.

    Fast calls: ``blocked_autorange`` (samples of many calls each, at least ``min_run_s`` in all). Slow
    calls: one call per sample, as many as fit in ``budget_s`` (at least 1, at most 7).
    """
    from torch.utils import benchmark

    fn()  # warm-up
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
    first = timer.timeit(1).median
    if first < FAST_CALL_S:
        m = timer.blocked_autorange(min_run_time=min_run_s)
        return Timing(m.median, len(m.times), "torch.utils.benchmark")
    samples = [first]
    more = min(6, int(budget_s / first) - 1)
    samples += [timer.timeit(1).median for _ in range(max(0, more))]
    return Timing(statistics.median(samples), len(samples), "torch.utils.benchmark")


def time_cuda(fn: Callable[[], object]) -> Timing:
    """Median of ``triton.testing.do_bench`` (its own warm-up and L2 flush)."""
    from triton.testing import do_bench  # lazily: triton is an optional extra

    ms = do_bench(fn, warmup=25, rep=100, return_mode="median")
    return Timing(ms / 1e3, 0, "triton.testing.do_bench")


def measure(fn: Callable[[], object], *, device: str, threads: int, min_run_s: float, budget_s: float) -> Timing:
    if device.startswith("cuda"):
        return time_cuda(fn)
    return time_cpu(fn, threads=threads, min_run_s=min_run_s, budget_s=budget_s)
