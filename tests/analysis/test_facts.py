"""the facts of docs/math.md section 6, re-derived (the report prints the same checks with their verdicts)."""

import pytest
import torch

from analysis import facts
from analysis.bounds import worst_case_error


def test_smallest_orders_of_the_worst_case_bound():
    # docs/math.md: a=0.5 -> 4 (1e-2), 6 (1e-4); a=1 -> 8 (1e-2), 10 (1e-3); a=2 -> 30 (1e-2)
    for (a, eps), t in facts.SPEC_ORDERS.items():
        assert facts.smallest_order(a, eps) == t
        assert worst_case_error(t, a, a) <= eps < worst_case_error(t - 2, a, a)


def test_float_thresholds():
    by_claim = {f["claim"][:20]: f for f in facts.float_thresholds()}
    assert all(f["verdict"] in ("confirmed", "differs") for f in by_claim.values())
    # exp(-y^2) underflows to zero where the dtype's smallest subnormal / 2 lies
    y = torch.tensor([4.10, 4.20], dtype=torch.float16)
    assert torch.exp(-(y * y)).tolist()[0] > 0 and torch.exp(-(y * y)).tolist()[1] == 0
    y = torch.tensor([10.15, 10.25], dtype=torch.float32)
    assert torch.exp(-(y * y))[0] > 0 and torch.exp(-(y * y))[1] == 0


def test_fp16_power_overflow_threshold_is_3_17_not_3_25():
    x = torch.tensor([3.17, 3.18, 3.25], dtype=torch.float16)
    p = (2 * x) ** 6
    assert torch.isfinite(p[0]) and torch.isinf(p[1]) and torch.isinf(p[2])
    fact = [f for f in facts.float_thresholds() if "overflows fp16" in f["claim"]][0]
    assert fact["verdict"] == "differs" and "3.17" in fact["measured"]


@pytest.mark.parametrize("dtype,stall", [(torch.float16, 2048.0), (torch.bfloat16, 256.0)])
def test_half_sums_stall(dtype, stall):
    s = torch.tensor(stall - 8, dtype=dtype)
    for _ in range(20):
        s = s + torch.ones((), dtype=dtype)
    assert float(s) == stall


def test_all_facts_run_and_give_verdicts():
    out = facts.all_facts()
    assert len(out["facts"]) >= 10
    assert {f["verdict"] for f in out["facts"]} <= {"confirmed", "differs", "partly"}
    assert [r["order"] for r in out["min_p"]] == list(range(2, 17, 2))
