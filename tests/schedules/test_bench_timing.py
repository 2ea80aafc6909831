"""The CPU timer of ``ea-ops bench``: blocks per peer over several passes, medians, failures kept apart."""

from __future__ import annotations

import time

from schedules.bench.timing import time_cpu


def test_medians_of_known_durations_and_a_failure_kept_apart():
    calls = {"boom": 0}

    def sleep(s):
        return lambda: time.sleep(s)

    def boom():
        calls["boom"] += 1
        if calls["boom"] > 2:  # fine at warm-up and estimate, fails while sampled
            raise RuntimeError("device lost")

    short, long_, failed = time_cpu([sleep(0.002), sleep(0.02), boom], threads=1, budget_s=0.3, settle_s=0)
    assert 0.002 <= short.median_s < 0.004 and short.samples >= 3
    assert 0.02 <= long_.median_s < 0.03 and long_.samples >= 3
    assert isinstance(failed, RuntimeError) and "device lost" in str(failed)


def test_slow_calls_get_at_least_one_sample_beyond_warm_up():
    n = {"calls": 0}

    def slow():
        n["calls"] += 1
        time.sleep(0.05)

    (t,) = time_cpu([slow], threads=1, budget_s=0.01, settle_s=0)
    assert t.samples == 2 and n["calls"] == 3  # warm-up, estimate (kept: one call per sample), one round
    assert 0.05 <= t.median_s < 0.08
