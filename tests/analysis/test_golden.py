"""The float64 code against the mpmath golden table (stored), and the slow tier that regenerates it."""

import json
import math
from pathlib import Path

import pytest
import torch

import ea_ops
from analysis.bounds import worst_case_error
from analysis.dense import dense_attention
from analysis.taylor import log_r, min_taylor_even, r_ratio, taylor_poly, taylor_tail

GOLDEN = json.loads((Path(__file__).parent / "golden.json").read_text())


def _rel(a: float, b: float) -> float:
    if a == b:
        return 0.0
    return abs(a - b) / max(abs(b), 1e-300)


def test_r_ratio_matches_mpmath():
    for row in GOLDEN["r"]:
        t, z = row["order"], row["z"]
        got = float(r_ratio(z, t))
        # float64 loses K_t(z) = P_t(|z|) / |P_t(z)| in the alternating sum (<= 1.8e8 for t <= 32)
        assert _rel(got, row["r"]) < 5e-8, row
        if abs(z) < t + 8 and row["one_minus_r"] != 0:
            # the tail keeps tiny 1 - r_t to full relative accuracy (where the bounds need it)
            assert _rel(float(taylor_tail(z, t)), row["one_minus_r"]) < 1e-12, row


def test_log_r_matches_mpmath_for_even_orders():
    for row in GOLDEN["r"]:
        t, z = row["order"], row["z"]
        if t % 2 or row["r"] <= 0:
            continue
        want = math.log1p(-row["one_minus_r"]) if abs(row["one_minus_r"]) < 0.5 else math.log(row["r"])
        got = float(log_r(z, t))
        assert abs(got - want) <= 1e-12 * max(abs(want), 1e-300) + 5e-8 * (abs(want) > 1e-3), row


def test_min_taylor_matches_mpmath():
    for row in GOLDEN["min_p"]:
        t, zs = row["order"], row["z_star"]
        z, p = min_taylor_even(t)
        # bisection on P_{t-1} evaluated in float64: the root is only as good as that evaluation,
        # |dz| <= eps * P_{t-1}(|z*|) / |P_{t-1}'(z*)| (stated condition number, times a margin of 8)
        cond = float(taylor_poly(abs(zs), t - 1)) / abs(float(taylor_poly(zs, t - 2)))
        assert abs(z - zs) <= 8 * 2.0**-52 * max(cond, 1.0) * max(1.0, abs(zs)), (t, z, zs, cond)
        assert _rel(p, row["min_P"]) < 1e-9


def test_worst_case_error_matches_mpmath():
    for row in GOLDEN["worst_case"]:
        got = worst_case_error(row["order"], row["a"], row["b"])
        if math.isinf(row["bound"]):
            assert math.isinf(got), row
        else:
            assert _rel(got, row["bound"]) < 1e-9, row


def _case(case):
    shape = tuple(case["shape"])
    return tuple(torch.tensor(case[n], dtype=torch.float64).reshape(shape) for n in ("q", "k", "v"))


@pytest.mark.parametrize("ci", range(len(GOLDEN["attention"])))
def test_dense_reference_matches_mpmath(ci):
    case = GOLDEN["attention"][ci]
    q, k, v = _case(case)
    for key, want in case["outputs"].items():
        order = None if key == "exact" else int(key)
        got = dense_attention(q, k, v, order=order, causal=case["causal"], scale=case["scale"])
        want = torch.tensor(want, dtype=torch.float64).reshape(got.shape)
        # odd orders can nearly cancel the denominator: looser there
        tol = 1e-12 if order is None or order % 2 == 0 else 1e-9
        assert (got - want).abs().max().item() < tol, (key, case["scale"])


@pytest.mark.parametrize("ci", range(len(GOLDEN["attention"])))
def test_torch_backend_matches_mpmath(ci):
    """The library's kernel (float64 and float32) against the same golden EA-t values."""
    case = GOLDEN["attention"][ci]
    q, k, v = _case(case)
    spread = (v.amax(1, keepdim=True) - v.amin(1, keepdim=True))
    for key, want in case["outputs"].items():
        if key == "exact" or int(key) % 2:
            continue
        want = torch.tensor(want, dtype=torch.float64).reshape(q.shape)
        for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 2e-5)):
            o, _ = ea_ops.ea_attention(q.to(dtype), k.to(dtype), v.to(dtype), order=int(key),
                                       causal=case["causal"], scale=case["scale"], backend="torch")
            # float32: input rounding plus the kernel's rounding, relative to the spread of v
            err = ((o.double() - want).abs() / spread).max().item()
            assert err < tol, (key, dtype, case["scale"], err)


def _assert_regenerated(fresh: dict, stored: dict) -> None:
    """``fresh`` (from ``analysis.golden.generate``) equals ``stored`` at the table's tolerances: 1e-14
    relative for the scalar tables, 1e-15 absolute for the attention outputs."""
    for name in ("r", "min_p", "worst_case"):
        assert len(fresh[name]) == len(stored[name])
        for a, b in zip(fresh[name], stored[name], strict=True):
            for key in a:
                if isinstance(a[key], float) and math.isfinite(a[key]):
                    assert _rel(a[key], b[key]) < 1e-14, (name, a, b)
                else:
                    assert a[key] == b[key]
    assert len(fresh["attention"]) == len(stored["attention"])
    for a, b in zip(fresh["attention"], stored["attention"], strict=True):
        assert a["q"] == b["q"] and a["k"] == b["k"] and a["v"] == b["v"]
        assert a["outputs"].keys() == b["outputs"].keys()
        for key in a["outputs"]:
            assert max(abs(x - y) for x, y in zip(a["outputs"][key], b["outputs"][key], strict=True)) < 1e-15


# A sample of the table regenerated in every run (about half a second; the full table is the slow tier):
# r_t at the default order and the highest (where float64's alternating sum cancels most), at a large negative
# z, a tiny one (1 - r through the tail) and a large positive one; every min P_t; the worst-case bound at
# both orders for a narrow and a wide channel range; attention at scale 1 (causal and not) and 64 (causal).
SAMPLE = {"R_ORDERS": [6, 32], "R_POINTS": [-30.0, -1e-3, 12.0], "WC_ORDERS": [6, 32],
          "WC_BOUNDS": [(1.0, 1.0), (3.0, 1.0)], "ATT_SEEDS": [1, 2, 4]}


def test_a_sample_of_the_golden_table_regenerates(monkeypatch):
    """``generate`` itself (one copy of how each entry is computed) on a subset of the table's grid."""
    pytest.importorskip("mpmath")
    from analysis import golden

    for name in ("R_ORDERS", "R_POINTS", "WC_ORDERS", "WC_BOUNDS"):
        assert set(SAMPLE[name]) <= set(getattr(golden, name))
        monkeypatch.setattr(golden, name, SAMPLE[name])
    monkeypatch.setattr(golden, "ATT_CASES", [c for c in golden.ATT_CASES if c[0] in SAMPLE["ATT_SEEDS"]])
    stored = {
        "r": [r for r in GOLDEN["r"] if r["order"] in SAMPLE["R_ORDERS"] and r["z"] in SAMPLE["R_POINTS"]],
        "min_p": GOLDEN["min_p"],
        "worst_case": [w for w in GOLDEN["worst_case"]
                       if w["order"] in SAMPLE["WC_ORDERS"] and (w["a"], w["b"]) in SAMPLE["WC_BOUNDS"]],
        "attention": [c for c in GOLDEN["attention"] if c["seed"] in SAMPLE["ATT_SEEDS"]],
    }
    assert [len(stored[n]) for n in ("r", "worst_case", "attention")] == [6, 4, 3]  # the sample is all there
    _assert_regenerated(golden.generate(), stored)


@pytest.mark.slow
def test_golden_table_regenerates():
    """Recompute every golden value with mpmath (slow tier) and compare with the stored table."""
    pytest.importorskip("mpmath")
    from analysis.golden import generate

    _assert_regenerated(generate(), GOLDEN)
