"""The timers of ``ea-ops bench``. CPU: blocks per peer over several passes, medians, warm-up after each pause,
the budget, failures kept apart, scopes entered per block. CUDA, without a GPU by injection: do_bench when
Triton is there, else CUDA events with an L2 flush before each call. Run on a simulated clock (``clock=`` /
``sleep=``), so nothing here depends on how loaded the machine is.

Durations are powers of two, so the simulated times add up exactly and a median equals its duration exactly.
"""

from __future__ import annotations

import sys

import pytest

from schedules.bench import timing
from schedules.bench.timing import BLOCK_S, MAX_SAMPLES_PER_BLOCK, PASSES, TIMER_MIN_CALLS, time_cpu

SETTLE = 2.0**-3


class FakeTime:
    """A clock that moves only while a simulated call runs (by its duration) or during ``sleep``."""

    def __init__(self):
        self.now = 0.0
        self.sleeps: list[float] = []
        self.ops: list[Op] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s
        for op in self.ops:  # after a pause the first call is cold (idle thread pools, cold caches)
            op.cold = True

    def op(self, duration: float, *, cold_factor: float = 1.0, fail_after: int | None = None) -> Op:
        op = Op(self, duration, cold_factor, fail_after)
        self.ops.append(op)
        return op

    def time(self, fns, budget_s: float):
        return time_cpu(fns, threads=1, budget_s=budget_s, settle_s=SETTLE, clock=self.clock, sleep=self.sleep)


class Op:
    def __init__(self, ft: FakeTime, duration: float, cold_factor: float, fail_after: int | None):
        self.ft, self.duration, self.cold_factor, self.fail_after = ft, duration, cold_factor, fail_after
        self.calls, self.busy, self.cold = 0, 0.0, True

    def __call__(self) -> None:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("device lost")
        d = self.duration * (self.cold_factor if self.cold else 1.0)
        self.cold = False
        self.ft.now += d
        self.busy += d


def test_medians_are_the_durations_on_both_samplers_and_a_failure_is_kept_apart():
    ft = FakeTime()
    fast = ft.op(2.0**-14)  # BLOCK_S / d > TIMER_MIN_CALLS: torch.utils.benchmark.Timer with the fake clock
    short = ft.op(2.0**-9)  # a few calls per sample: the perf_counter-style loop
    long_ = ft.op(2.0**-6)
    boom = ft.op(2.0**-9, fail_after=2)  # fine at warm-up and estimate, fails while sampled
    assert BLOCK_S / fast.duration >= TIMER_MIN_CALLS > BLOCK_S / short.duration
    got = ft.time([fast, short, long_, boom], budget_s=0.3)
    for op, t in zip((fast, short, long_), got[:3]):
        assert t.median_s == op.duration and t.samples >= PASSES and t.timer == timing.CPU_TIMER
    assert isinstance(got[3], RuntimeError) and "device lost" in str(got[3])


def test_a_warm_up_after_every_pause_keeps_cold_calls_out_of_the_samples():
    # A budget of one sample's length (about BLOCK_S) over PASSES blocks gives one sample per block; the first
    # call after each pause is 1000x slower: a block without its warm-up call would make two of the three
    # samples cold, and the median with them.
    ft = FakeTime()
    op = ft.op(2.0**-10, cold_factor=1000.0)
    (t,) = ft.time([op], budget_s=BLOCK_S)
    assert t.samples == PASSES
    assert t.median_s == op.duration
    assert ft.sleeps == [SETTLE] * PASSES  # a pause before each block


def test_slow_calls_get_one_block_of_one_sample_beyond_warm_up():
    ft = FakeTime()
    op = ft.op(2.0**-4)  # slower than its share of the budget
    (t,) = ft.time([op], budget_s=0.01)
    assert t.samples == 2 and op.calls == 3  # warm-up, estimate (kept: one call per sample), one sample
    assert t.median_s == op.duration
    assert ft.sleeps == [SETTLE]  # no second pass


@pytest.mark.parametrize("budget_s", [0.2, 0.4, 0.8])  # below the cap on samples per block
def test_the_budget_is_shared_by_the_peers(budget_s):
    # Per peer and block, the samples fill its share of the budget up to less than one sample (<= BLOCK_S),
    # and each block after the first adds one warm-up sample: within n * PASSES * BLOCK_S of the budget.
    ft = FakeTime()
    ops = [ft.op(2.0**-11), ft.op(2.0**-12)]
    got = ft.time(ops, budget_s=budget_s)
    busy = sum(op.busy for op in ops)
    assert abs(busy - budget_s) <= len(ops) * PASSES * BLOCK_S
    assert all(PASSES <= t.samples < PASSES * MAX_SAMPLES_PER_BLOCK for t in got)


def test_samples_per_block_are_capped_and_a_tiny_budget_still_gives_one_sample():
    ft = FakeTime()
    (big,) = ft.time([ft.op(2.0**-10)], budget_s=1000.0)
    (tiny,) = ft.time([ft.op(2.0**-10)], budget_s=1e-6)
    assert big.samples == PASSES * MAX_SAMPLES_PER_BLOCK
    assert tiny.samples == 1 and tiny.median_s == 2.0**-10


class Counting:
    """A scope that counts how often it is entered and whether a call ran inside it."""

    def __init__(self):
        self.entered, self.inside = 0, False

    def __call__(self):
        import contextlib

        @contextlib.contextmanager
        def scope():
            self.entered, self.inside = self.entered + 1, True
            try:
                yield
            finally:
                self.inside = False
        return scope()


def test_a_scoped_peer_is_timed_inside_its_scope_entered_per_block_not_per_call():
    ft = FakeTime()
    op, sc = ft.op(2.0**-12), Counting()
    outside = []

    def fn():
        outside.append(not sc.inside)
        op()

    (t,) = ft.time([timing.Scoped(fn, sc)], budget_s=0.2)
    assert t.median_s == op.duration and not any(outside)
    assert op.calls > 100 and sc.entered == 1 + PASSES  # the estimate, then one block per pass
    timing.Scoped(fn, sc)()  # called directly (the gate), it enters the scope itself
    assert sc.entered == 2 + PASSES and not outside[-1]


def test_cuda_timer_is_do_bench_when_triton_is_there_else_cuda_events(monkeypatch):
    calls = []

    def do_bench(fn, *, warmup, rep, return_mode):
        calls.append((warmup, rep, return_mode))
        fn()
        return 2.5  # ms

    median_s, name = timing.cuda_timer(do_bench)
    assert name == timing.CUDA_TIMER and median_s(lambda: None) == 2.5e-3
    assert calls == [(timing.CUDA_WARMUP_MS, timing.CUDA_REP_MS, "median")]
    assert timing.cuda_timer(None) == (timing.events_median, timing.CUDA_EVENTS_TIMER)
    monkeypatch.setitem(sys.modules, "triton.testing", None)  # as if triton were not installed
    assert timing.find_do_bench() is None
    sc = Counting()
    got = timing.time_cuda([lambda: None, timing.Scoped(lambda: None, sc), lambda: 1 / 0], do_bench=do_bench)
    assert [g.median_s for g in got[:2]] == [2.5e-3, 2.5e-3] and got[0].timer == timing.CUDA_TIMER
    assert sc.entered == 1 and isinstance(got[2], ZeroDivisionError)


def test_cuda_events_median_flushes_before_every_call_and_bounds_the_calls():
    ft = FakeTime()
    op = ft.op(2.0**-10, cold_factor=8.0)  # seconds; the first call is cold (not in the median)
    flushes: list[int] = []

    class Event:
        def record(self):
            self.t = ft.now

        def elapsed_time(self, end):
            return (end.t - self.t) * 1e3  # ms, as torch.cuda.Event

    med = timing.events_median(op, event=Event, synchronize=lambda: None, flush=lambda: flushes.append(op.calls))
    assert med == op.duration
    assert flushes == list(range(op.calls))  # one flush before each call
    tiny = ft.op(2.0**-30)
    timing.events_median(tiny, event=Event, synchronize=lambda: None, flush=lambda: None)
    assert tiny.calls == 1 + 2 * timing.MAX_EVENT_CALLS
