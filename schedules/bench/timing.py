"""Timers: ``torch.utils.benchmark`` on CPU, ``triton.testing.do_bench`` on CUDA; medians after warm-up.

On CPU the peers of one workload are timed in blocks, one block per peer and pass, several passes, with a
pause before each block: see ``time_cpu``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

BLOCK_S = 0.02  # a fast call is repeated within one sample until the sample takes about this long
PASSES = 3
MAX_SAMPLES_PER_BLOCK = 10
SETTLE_S = 0.2
TIMER_MIN_CALLS = 100
CPU_TIMER = "torch.utils.benchmark.Timer (>= 100 calls per sample) or time.perf_counter (slower calls)"
CUDA_TIMER = "triton.testing.do_bench"


@dataclass
class Timing:
    median_s: float
    samples: int
    timer: str


def _sampler(fn: Callable[[], object], number: int, threads: int, clock: Callable[[], float]) -> Callable[[], float]:
    """Seconds per call over ``number`` calls. Many calls: ``torch.utils.benchmark.Timer.timeit`` (its own
    warm-up is ``max(number // 100, 2)`` calls, negligible here). Few calls: ``time.perf_counter`` around
    them, because ``Timer.timeit`` would add two warm-up calls to every sample and triple a slow call's cost.
    """
    if number >= TIMER_MIN_CALLS:
        from torch.utils import benchmark

        timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads, timer=clock)
        return lambda: timer.timeit(number).median

    def sample() -> float:
        t0 = clock()
        for _ in range(number):
            fn()
        return (clock() - t0) / number
    return sample


def time_cpu(fns: list[Callable[[], object]], *, threads: int, budget_s: float, settle_s: float = SETTLE_S,
             clock: Callable[[], float] = time.perf_counter,
             sleep: Callable[[float], object] = time.sleep) -> list[Timing | Exception]:
    """Medians of ``fns`` with ``threads`` threads, for about ``budget_s`` in all (at least one sample each).

    Each callable is timed in blocks of back-to-back samples (its steady state), one block per pass over
    the callables, ``PASSES`` passes (one for a call slower than its share of the budget), so load that comes
    and goes hits every peer alike. Before each block: a pause of ``settle_s`` (thread pools of another
    runtime, e.g. TVM's or OpenMP's, spin for a while after their last task and would slow this one) and
    one warm-up call. A sample is ``number`` calls with ``number * estimate ~ BLOCK_S``. A callable that
    raises gets its exception back instead of a timing. ``clock`` and ``sleep`` are the time source and the
    pause (tests pass a simulated clock, so the logic is checked without wall-clock bounds).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _time_cpu(fns, threads, budget_s, settle_s, clock, sleep)
    finally:
        torch.set_num_threads(before)


@dataclass
class _Live:
    sample: Callable[[], float]
    number: int
    est: float
    samples: list[float]


def _time_cpu(fns, threads: int, budget_s: float, settle_s: float, clock, sleep) -> list[Timing | Exception]:
    live: dict[int, _Live] = {}
    out: list[Timing | Exception | None] = [None] * len(fns)
    for i, fn in enumerate(fns):
        try:
            sleep(settle_s)
            fn()
            est = _sampler(fn, 1, threads, clock)()
        except Exception as exc:  # reported per peer, never fatal to the others
            out[i] = exc
            continue
        number = max(1, int(BLOCK_S / max(est, 1e-9)))
        live[i] = _Live(_sampler(fn, number, threads, clock), number, est, [est] if number == 1 else [])
    share = budget_s / max(1, len(live))
    for p in range(PASSES):
        for i, lv in list(live.items()):
            slow = lv.est * PASSES > share
            if p > 0 and slow:
                continue
            per_sample = lv.number * lv.est
            k = max(1, min(MAX_SAMPLES_PER_BLOCK, int(share / (1 if slow else PASSES) / per_sample)))
            try:
                if p > 0:
                    sleep(settle_s)
                    lv.sample()  # warm-up after the pause
                lv.samples += [lv.sample() for _ in range(k)]
            except Exception as exc:
                out[i] = exc
                del live[i]
    for i, lv in live.items():
        out[i] = Timing(statistics.median(lv.samples), len(lv.samples), CPU_TIMER)
    return out  # type: ignore[return-value]


def time_cuda(fns: list[Callable[[], object]]) -> list[Timing | Exception]:
    """Medians of ``triton.testing.do_bench`` (its own warm-up, repetitions and L2 flush), one after another."""
    from triton.testing import do_bench  # lazily: triton is an optional extra

    out: list[Timing | Exception] = []
    for fn in fns:
        try:
            out.append(Timing(do_bench(fn, warmup=25, rep=100, return_mode="median") / 1e3, 0,
                              CUDA_TIMER))
        except Exception as exc:
            out.append(exc)
    return out


def measure(fns: list[Callable[[], object]], *, device: str, threads: int, budget_s: float,
            settle_s: float = SETTLE_S) -> list[Timing | Exception]:
    if device.startswith("cuda"):
        return time_cuda(fns)
    return time_cpu(fns, threads=threads, budget_s=budget_s, settle_s=settle_s)
