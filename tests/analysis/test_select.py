"""Order selection: the three modes, honest refusals, validation, and the command line."""

import json
import math

import pytest
import torch

from analysis import BudgetUnreachable, OrderChoice, load_sample, select_order, worst_case_error
from analysis.cli_select import main as cli

FAST = {"channels": 48, "seq_len": 64, "rows": 8}


def test_worst_case_mode_matches_the_spec_table():
    for (a, eps), t in {(0.5, 1e-2): 4, (1.0, 1e-2): 8, (1.0, 1e-3): 10}.items():
        c = select_order(eps, scale=a)
        assert isinstance(c, OrderChoice) and c.method == "worst-case"
        assert c.order == t and c.predicted_error <= eps
        assert c.predicted_error >= worst_case_error(t, a, a)  # approximation plus the rounding estimate
        prev = [r for r in c.evidence["per_order"] if r["order"] == t - 2][0]
        assert prev["predicted_error"] > eps


def test_worst_case_refuses_beyond_float32_conditioning_and_names_a_scale():
    with pytest.raises(BudgetUnreachable) as info:
        select_order(1e-3, scale=2.0)
    exc = info.value
    assert "float32" in str(exc) and "would work" in str(exc)
    A = exc.suggestion["bound_q_k"]
    assert 1.0 < A < 2.0
    ok = select_order(1e-3, scale=A)  # the suggestion really works
    assert ok.predicted_error <= 1e-3
    assert exc.to_json()["order"] is None and exc.to_json()["refused"] is True


def test_ea_scale_enters_as_sqrt():
    assert select_order(1e-3, scale=2.0, ea_scale=0.25).order == select_order(1e-3, scale=1.0).order


def test_bfloat16_output_rounding_cannot_meet_1e_3():
    with pytest.raises(BudgetUnreachable, match="No channel scale helps") as info:
        select_order(1e-3, scale=0.1, dtype=torch.bfloat16)
    assert info.value.suggestion is None and "float16" in str(info.value)
    assert select_order(1e-2, scale=0.5, dtype="bfloat16").order >= 2


def test_distribution_mode_meets_budget_on_fresh_samples():
    c = select_order(1e-2, sigma=0.5, confidence=0.9, **FAST)
    assert c.method == "distribution" and c.predicted_error <= 1e-2
    # the prediction holds for the stated fraction of positions of fresh channels (new seed, 4x more)
    from analysis.select import _measure

    g = torch.Generator().manual_seed(123)
    q, k, v = (torch.randn(192, 64, 1, 1, generator=g, dtype=torch.float64) * s for s in (0.5, 0.5, 1.0))
    res = _measure(q, k, v, dtype=torch.float32, ea_scale=1.0, orders=[c.order], causal=True, rows=16, seed=5,
                   backend="torch")
    frac = float((res[c.order]["total"] <= c.predicted_error).double().mean())
    assert frac >= 0.9 - 0.03  # 0.9 confidence, 3072 fresh samples (3 sigma of the binomial ~ 0.016)
    # a larger order never predicts a larger error here (approximation dominates)
    orders = [r["predicted_error"] for r in c.evidence["per_order"]]
    assert orders == sorted(orders, reverse=True)


def test_distribution_mode_refuses_when_nothing_fits():
    with pytest.raises(BudgetUnreachable) as info:
        select_order(1e-4, sigma=1.5, max_order=4, confidence=0.9, **FAST)
    assert info.value.evidence["best"]["predicted_error"] > 1e-4
    assert info.value.suggestion is None or info.value.suggestion["q_k_factor"] < 1


def test_data_mode_with_and_without_v(tmp_path):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 40, 2, 4, generator=g) * 0.4
    k = torch.randn(1, 40, 2, 4, generator=g) * 0.4
    v = torch.randn(1, 40, 2, 4, generator=g)
    with_v = select_order(1e-3, sample={"q": q, "k": k, "v": v})
    no_v = select_order(1e-3, sample={"q": q, "k": k})
    assert with_v.method == no_v.method == "data"
    # without v the approximation part is the worst over all values: never smaller
    assert no_v.order >= with_v.order
    path = tmp_path / "s.pt"
    torch.save({"q": q, "k": k, "v": v}, path)
    assert select_order(1e-3, sample=str(path)).order == with_v.order
    stacked = tmp_path / "stacked.pt"
    torch.save(torch.stack([q, k, v]), stacked)
    assert select_order(1e-3, sample=stacked).order == with_v.order
    ev = with_v.evidence
    assert ev["positions"] == 40 and len(ev["posterior_bound_per_order"]) == 17
    assert ev["channels_evaluated"] == ev["channels"] == 8
    few = select_order(1e-3, sample={"q": q, "k": k, "v": v}, channels=5)
    assert few.evidence["channels_evaluated"] == 5 and few.evidence["channels"] == 8


def test_validation():
    with pytest.raises(ValueError, match="exactly one"):
        select_order(1e-3)
    with pytest.raises(ValueError, match="exactly one"):
        select_order(1e-3, scale=1.0, sigma=1.0)
    with pytest.raises(ValueError, match="budget"):
        select_order(-1.0, scale=1.0)
    with pytest.raises(TypeError, match="budget"):
        select_order("1e-3", scale=1.0)
    with pytest.raises(ValueError, match="dtype"):
        select_order(1e-3, scale=1.0, dtype=torch.int32)
    with pytest.raises(ValueError, match="confidence"):
        select_order(1e-3, sigma=1.0, confidence=1.0)
    with pytest.raises(ValueError, match="max_order"):
        select_order(1e-3, scale=1.0, max_order=33)
    with pytest.raises(ValueError, match="must contain 'k'"):
        load_sample({"q": torch.randn(1, 4, 1, 2)})
    with pytest.raises(ValueError, match="shape of q"):
        load_sample({"q": torch.randn(1, 4, 1, 2), "k": torch.randn(1, 5, 1, 2)})
    with pytest.raises(ValueError, match="NaN"):
        load_sample({"q": torch.full((1, 4, 1, 2), math.nan), "k": torch.randn(1, 4, 1, 2)})
    with pytest.raises(TypeError, match="floating-point"):
        load_sample({"q": torch.ones(1, 4, 1, 2, dtype=torch.int64), "k": torch.randn(1, 4, 1, 2)})
    with pytest.raises(ValueError, match="unexpected keys"):
        load_sample({"q": torch.randn(1, 4, 1, 2), "k": torch.randn(1, 4, 1, 2), "w": torch.randn(1)})
    with pytest.raises(ValueError, match=r"\[2 or 3"):
        load_sample(torch.randn(4, 1, 4, 1, 2))


class Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_sample_files_are_never_unpickled(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"q": torch.randn(1, 4, 1, 2), "k": torch.randn(1, 4, 1, 2), "x": Evil()}, path)
    with pytest.raises(ValueError, match="weights_only"):
        load_sample(path)
    assert "unpickled!" not in capsys.readouterr().out
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="cannot read"):
        load_sample(garbage)


def test_cli_json_and_exit_codes(tmp_path, capsys):
    assert cli(["--budget", "1e-3", "--scale", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["order"] == 10 and out["predicted_error"] <= 1e-3 and out["method"] == "worst-case"
    assert cli(["--budget", "1e-3", "--scale", "2", "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["order"] is None and out["refused"] and out["suggestion"]["bound_q_k"] < 2
    assert cli(["--budget", "1e-3", "--scale", "2"]) == 1
    assert "would work" in capsys.readouterr().err
    assert cli(["--budget", "1e-3", "--scale", "0.5"]) == 0
    assert "order 4" in capsys.readouterr().out
    assert cli(["--budget", "1e-3", "--sample", str(tmp_path / "missing.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli(["--budget", "1e-3"])  # no mode
    with pytest.raises(SystemExit):
        cli(["--budget", "-1", "--scale", "1"])
    p = tmp_path / "d.pt"
    torch.save({"q": torch.randn(1, 16, 1, 2) * 0.3, "k": torch.randn(1, 16, 1, 2) * 0.3}, p)
    assert cli(["--budget", "1e-2", "--sample", str(p), "--dtype", "float16", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["evidence"]["dtype"] == "float16"
