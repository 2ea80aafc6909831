"""analysis.properties.check_implementation: a correct outside implementation passes; each deliberately broken
one is caught by the property meant for it, with a small shrunk counterexample. (Every backend of the library
passes it: tests/ea_ops/test_properties.py and tests/ea_ops/triton_interp/interp_properties.py.)"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

import ea_ops
from analysis.properties import MAGNITUDE, PROPERTIES, Problem, check_implementation, rounding_tolerance
from ea_ops import cli

EXAMPLES = 20
# Enough draws that each broken implementation's failure is found whatever seed Hypothesis derives from the code
# (the odd-order one needs a query near 1 and keys of both signs, one below -1.09: found within 20 to 40).
BROKEN_EXAMPLES = 100


def dense_ea(q, k, v, *, order=6, ahead=0, stabilise=True, sum_dtype=torch.float32, poly_order=None):
    """An outside causal EA-t in the style of a user's own kernel: the weights ``exp(m_i - y_j^2) P_t(2 x_i y_j)``
    over ``j <= i`` formed densely in float32. The keyword arguments break it on purpose."""
    x, y, vv = (t.float().permute(0, 2, 3, 1) for t in (q, k, v))  # [B, H, D, T]
    T = x.shape[-1]
    seen = torch.ones(T, T, dtype=torch.bool).tril(ahead)
    y2 = (y * y)[..., None, :].expand(*y.shape[:-1], T, T)
    m = y2.masked_fill(~seen, math.inf).amin(-1, keepdim=True) if stabilise and T else 0.0
    z = 2 * x[..., :, None] * y[..., None, :]
    p = torch.ones_like(z)
    for n in range((order if poly_order is None else poly_order), 0, -1):  # Horner
        p = 1 + p * z / n
    w = torch.where(seen, torch.exp(m - y2) * p, 0.0).to(sum_dtype)
    wv = torch.where(seen, w * vv[..., None, :].to(sum_dtype), 0.0)  # select: 0 * NaN would leak backwards
    o = wv.sum(-1) / w.sum(-1)
    return o.permute(0, 3, 1, 2).to(q.dtype)


def off_by_one_state(q, k, v):
    """The torch backend's outputs, but the state it hands on misses the last token."""
    o, _ = ea_ops.ea_attention(q, k, v, backend="torch")
    n = max(q.shape[1] - 1, 0)
    _, state = ea_ops.ea_attention(q[:, :n], k[:, :n], v[:, :n], backend="torch", output_final_state=True)
    return o, state


def torch_step(q_t, k_t, v_t, state):
    return ea_ops.ea_recurrent_step(q_t, k_t, v_t, state, order=6, backend="torch")


def small(result, max_T: int) -> bool:
    """The shrunk counterexample has at most ``max_T`` positions and one channel per head and batch."""
    B, T, H, D = result.counterexample["shape"]
    return T <= max_T and B == 1 and H == 1 and D == 1


def test_a_correct_outside_implementation_passes_every_property():
    report = check_implementation(dense_ea, max_examples=EXAMPLES)
    assert report.passed, str(report)
    ran = {r.name for r in report.results if r.status == "pass"}
    assert ran == set(PROPERTIES) - {"qk_shift", "recurrent"}  # EA-t has no q/k shift; no step_fn given


@pytest.mark.parametrize(("broken", "prop", "max_T"), [
    (lambda q, k, v: dense_ea(q, k, v, ahead=1), "causality", 2),
    (lambda q, k, v: dense_ea(q, k, v, poly_order=5), "convexity", 5),
    (lambda q, k, v: dense_ea(q, k, v, stabilise=False), "finite", 1),
    (lambda q, k, v: dense_ea(q, k, v, sum_dtype=torch.float16), "agreement", 1),
], ids=["reads-one-key-ahead", "odd-order-polynomial", "no-stabiliser", "float16-sums"])
def test_each_broken_implementation_is_caught_by_its_property(broken, prop, max_T):
    report = check_implementation(broken, properties=[prop], max_examples=BROKEN_EXAMPLES)
    result = report[prop]
    assert result.status == "fail", str(report)
    assert small(result, max_T), result.counterexample
    if prop == "finite":  # NaN already for keys near 12, far inside the radius
        assert max(abs(a) for a in result.counterexample["values"]["k"]) <= MAGNITUDE
    # the counterexample rebuilds the failing input exactly, and it is small enough to print its values
    ce = dict(result.counterexample)
    assert "values" in ce
    extra = {name: ce.pop(name) for name in list(ce) if name not in Problem.__dataclass_fields__}
    ce["shape"], ce["pool"] = tuple(ce["shape"]), tuple(ce["pool"])
    q, k, v = Problem(**ce).tensors()
    assert [round(float(a), 6) for a in q.double().flatten()] == extra["values"]["q"]


def test_the_off_by_one_state_hand_off_is_caught_by_the_recurrent_property():
    report = check_implementation(off_by_one_state, step_fn=torch_step, properties=["agreement", "recurrent"],
                                  max_examples=EXAMPLES)
    assert report["agreement"].status == "pass"  # its outputs are right: only the hand-off is wrong
    result = report["recurrent"]
    assert result.status == "fail" and small(result, 2), str(report)


def test_the_report_and_its_json():
    report = check_implementation(lambda q, k, v: dense_ea(q, k, v, ahead=1), properties=["agreement", "causality"],
                                  max_examples=5)
    text = str(report)
    assert "FAIL causality" in text and "counterexample" in text and not report.passed
    js = report.to_json()
    assert js["passed"] is False and [r["name"] for r in js["results"]] == ["agreement", "causality"]
    assert js["results"][1]["error"] > js["results"][1]["tolerance"]


def test_runs_are_deterministic():
    def run():
        js = check_implementation(lambda q, k, v: dense_ea(q, k, v, ahead=1), properties=["causality"],
                                  max_examples=5).to_json()
        for r in js["results"]:
            r.pop("seconds")
        return js

    assert run() == run()


def test_a_crash_and_a_wrong_dtype_are_failures_with_their_message():
    def crashes_on_empty(q, k, v):
        if q.shape[1] == 0:
            raise RuntimeError("no tokens")
        return dense_ea(q, k, v)

    r = check_implementation(crashes_on_empty, properties=["agreement"], max_examples=EXAMPLES)["agreement"]
    assert r.status == "fail" and "RuntimeError: no tokens" in r.message and r.counterexample["shape"][1] == 0
    r = check_implementation(lambda q, k, v: dense_ea(q, k, v).half(), properties=["agreement"], max_examples=3)
    assert r["agreement"].status == "fail" and "float16 for float32" in r["agreement"].message


def test_skips_say_why():
    r = check_implementation(dense_ea, causal=False, properties=["causality", "recurrent", "qk_shift"],
                             max_examples=2)
    assert [x.status for x in r.results] == ["skip"] * 3
    assert "non-causal" in r["causality"].message and "step_fn" in r["recurrent"].message
    # a budget spent at once: the first property still runs one example at least, the others say why not
    r = check_implementation(dense_ea, budget=1e-9, properties=["agreement", "causality"], max_examples=50)
    assert r["agreement"].status == "pass" and 1 <= r["agreement"].examples < 50
    assert r["causality"].status == "skip" and "budget" in r["causality"].message


def test_the_tolerance_grows_with_cancellation_and_large_keys():
    x = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    v = torch.ones_like(x)
    near = rounding_tolerance(x, torch.tensor([[0.5, 0.5]]), v, 6, causal=True, dtype=torch.float32)
    opposite = rounding_tolerance(x, torch.tensor([[-2.0, -2.0]]), v, 6, causal=True, dtype=torch.float32)
    assert (opposite > 2 * near).all()
    assert (rounding_tolerance(x, torch.tensor([[0.5, 0.5]]), v, 6, causal=True, dtype=torch.bfloat16)
            > 1000 * near).all()


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"order": 7.0}, "order"), ({"order": -2}, "order"), ({"reference": "mpmath"}, "reference"),
    ({"dtypes": torch.float32}, "dtypes"), ({"dtypes": ("int8",)}, "dtype"), ({"max_examples": 0}, "max_examples"),
    ({"budget": -1}, "budget"), ({"scale": 0.0}, "scale"), ({"properties": ["speed"]}, "properties"),
    ({"properties": "causality"}, "properties"), ({"max_T": 0}, "max_T"), ({"dims": 3}, "dims"),
    ({"causal": 1}, "causal"), ({"step_fn": 3}, "step_fn"),
])
def test_bad_arguments_name_themselves(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        check_implementation(dense_ea, **kwargs)
    with pytest.raises(TypeError, match="fn"):
        check_implementation(None)


def _readme_example() -> str:
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = text.split("## Checking your own implementation", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_example_passes_from_the_command_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_ea.py").write_text(_readme_example())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert cli.main(["check", "my_ea:attention", "--max-examples", "5", "--json"]) == 0
    out = capsys.readouterr()
    report = json.loads(out.out)
    assert report["passed"] and len(report["results"]) == len(PROPERTIES)
    assert out.err.count("ea-ops check: ") == len(PROPERTIES)  # one progress line per property
    # a causal implementation checked as non-causal fails, with exit status 1
    assert cli.main(["check", "my_ea:attention", "--non-causal", "--property", "agreement", "--max-examples",
                     "5"]) == 1
    assert "FAIL agreement" in capsys.readouterr().out
    assert cli.main(["check", "my_ea:nothing"]) == 2
    assert "cannot load" in capsys.readouterr().err
    assert cli.main(["check", "my_ea:attention", "--order", "-2"]) == 2
    assert "order" in capsys.readouterr().err


STEPPED = '''
import ea_ops


def prefill(q, k, v):
    return ea_ops.ea_attention(q, k, v, backend="torch", output_final_state=True)


def short_prefill(q, k, v):  # hands on the state one token short
    n = max(q.shape[1] - 1, 0)
    return prefill(q, k, v)[0], prefill(q[:, :n], k[:, :n], v[:, :n])[1]


def decode(q_t, k_t, v_t, state):
    return ea_ops.ea_recurrent_step(q_t, k_t, v_t, state, backend="torch")
'''


def test_the_command_line_with_a_recurrent_step(tmp_path, monkeypatch, capsys):
    (tmp_path / "yours.py").write_text(STEPPED)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    args = ["--step", "yours:decode", "--property", "recurrent", "--max-examples", "5"]
    assert cli.main(["check", "yours:prefill", *args]) == 0
    assert "PASS recurrent" in capsys.readouterr().out
    assert cli.main(["check", "yours:short_prefill", *args]) == 1
    assert "FAIL recurrent" in capsys.readouterr().out
