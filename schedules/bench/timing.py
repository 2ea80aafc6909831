"""Timers, one per device: ``torch.utils.benchmark`` on CPU; on CUDA ``triton.testing.do_bench`` when Triton is
installed, else CUDA events. Medians after warm-up.

On CPU the peers of one workload are timed in blocks, one block per peer and pass, several passes, with a
pause before each block: see ``time_cpu``.
"""

from __future__ import annotations

import contextlib
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
CUDA_EVENTS_TIMER = "torch.cuda.Event (triton not installed)"
CUDA_WARMUP_MS, CUDA_REP_MS = 25, 100
L2_FLUSH_BYTES = 256 << 20  # larger than any GPU's L2, as do_bench's flush: every call starts cold
MAX_EVENT_CALLS = 1000  # per phase: the estimate leaves out the flush, which would dominate tiny calls


@dataclass(frozen=True)
class Scoped:
    """A callable that must run inside ``scope()`` (a setting such as hidden records). Called, it enters the
    scope itself; the timers enter it once around each block of calls, so its cost is not timed."""

    fn: Callable[[], object]
    scope: Callable[[], contextlib.AbstractContextManager]

    def __call__(self) -> object:
        with self.scope():
            return self.fn()


def _split(fn: Callable[[], object]) -> tuple[Callable[[], object], Callable[[], contextlib.AbstractContextManager]]:
    return (fn.fn, fn.scope) if isinstance(fn, Scoped) else (fn, contextlib.nullcontext)


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
    raises gets its exception back instead of a timing. A ``Scoped`` callable runs inside its scope, entered
    around each block. ``clock`` and ``sleep`` are the time source and the pause (tests pass a simulated
    clock, so the logic is checked without wall-clock bounds).
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
    fns, scopes = zip(*map(_split, fns)) if fns else ((), ())
    for i, fn in enumerate(fns):
        try:
            sleep(settle_s)
            with scopes[i]():
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
                with scopes[i]():
                    if p > 0:
                        lv.sample()  # warm-up after the pause
                    lv.samples += [lv.sample() for _ in range(k)]
            except Exception as exc:
                out[i] = exc
                del live[i]
    for i, lv in live.items():
        out[i] = Timing(statistics.median(lv.samples), len(lv.samples), CPU_TIMER)
    return out  # type: ignore[return-value]


def find_do_bench() -> Callable | None:
    """``triton.testing.do_bench``, or None without Triton (an optional extra)."""
    try:
        from triton.testing import do_bench
    except ImportError:
        return None
    return do_bench


def events_median(fn: Callable[[], object], *, warmup_ms: float = CUDA_WARMUP_MS, rep_ms: float = CUDA_REP_MS,
                  event: Callable[..., object] | None = None, synchronize: Callable[[], object] | None = None,
                  flush: Callable[[], object] | None = None) -> float:
    """Median seconds per call between CUDA events, each call after an L2 flush (``do_bench``'s method).

    ``event``, ``synchronize`` and ``flush`` default to ``torch.cuda``'s (tests pass fakes)."""
    event = event or (lambda: torch.cuda.Event(enable_timing=True))
    synchronize = synchronize or torch.cuda.synchronize
    if flush is None:
        cache = torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device="cuda")
        flush = cache.zero_

    def one() -> float:
        flush()
        start, end = event(), event()
        start.record()
        fn()
        end.record()
        synchronize()
        return start.elapsed_time(end)  # ms

    est = max(one(), 1e-3)
    calls = lambda ms: min(MAX_EVENT_CALLS, max(1, int(ms / est)))  # noqa: E731
    for _ in range(calls(warmup_ms)):
        one()
    return statistics.median([one() for _ in range(calls(rep_ms))]) / 1e3


def cuda_timer(do_bench: Callable | None) -> tuple[Callable[[Callable[[], object]], float], str]:
    """``(seconds_per_call(fn), name)``: ``do_bench``'s median when given (Triton), else ``events_median``."""
    if do_bench is None:
        return events_median, CUDA_EVENTS_TIMER

    def median_s(fn: Callable[[], object]) -> float:
        return do_bench(fn, warmup=CUDA_WARMUP_MS, rep=CUDA_REP_MS, return_mode="median") / 1e3
    return median_s, CUDA_TIMER


def timer_name(device: str) -> str:
    """The timer ``measure`` uses on ``device``."""
    return cuda_timer(find_do_bench())[1] if device.startswith("cuda") else CPU_TIMER


def time_cuda(fns: list[Callable[[], object]], *, do_bench: Callable | None = None) -> list[Timing | Exception]:
    """Medians of one CUDA timer (its own warm-up, repetitions and L2 flush), one callable after another."""
    median_s, name = cuda_timer(do_bench or find_do_bench())
    out: list[Timing | Exception] = []
    for fn in fns:
        inner, scope = _split(fn)
        try:
            with scope():
                out.append(Timing(median_s(inner), 0, name))
        except Exception as exc:
            out.append(exc)
    return out


def measure(fns: list[Callable[[], object]], *, device: str, threads: int, budget_s: float,
            settle_s: float = SETTLE_S) -> list[Timing | Exception]:
    if device.startswith("cuda"):
        return time_cuda(fns)
    return time_cpu(fns, threads=threads, budget_s=budget_s, settle_s=settle_s)
