"""The layer's accuracy tracking: the table it reads (ea_ops/nn/accuracy_table.json), ``scale="auto"``, the
running RMS and max of ``x = sqrt(s) q`` and ``y = sqrt(s) k`` (padding excluded), the warning given once when a
layer leaves its budget, and ``accuracy_report``."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import ea_ops
from ea_ops.nn import (
    EAAccuracyWarning,
    ElementwiseAttention,
    accuracy_report,
    auto_scale,
    predicted_error,
    worst_case_bound,
)
from ea_ops.nn import layer as layer_mod
from ea_ops.nn.accuracy import AUTO_CHANNEL_RMS, load_accuracy_table


def test_predictions_read_the_table():
    t = load_accuracy_table()
    sig, errs = t["typical"]["sigma"], t["typical"]["error"]["6"]
    for i in (3, 12, 20):
        assert predicted_error(6, sig[i]) == pytest.approx(errs[i], rel=1e-12)
    mid = math.sqrt(sig[16] * sig[17])  # log-log halfway: the geometric mean of its neighbours
    assert predicted_error(6, mid) == pytest.approx(math.sqrt(errs[16] * errs[17]), rel=1e-9)
    assert predicted_error(6, sig[-1] * 1.01) == math.inf  # beyond the table: no prediction
    Z = t["worst_case"]["Z"]
    assert worst_case_bound(4, Z[5]) == pytest.approx(t["worst_case"]["error"]["4"][5], rel=1e-12)
    with pytest.raises(ValueError, match="order"):
        predicted_error(7, 0.5)


def test_auto_scale_meets_the_budget_and_grows_with_it():
    for order in (2, 6, 16):
        s = [auto_scale(order, b) for b in (1e-4, 1e-3, 1e-2)]
        assert s[0] <= s[1] <= s[2]
        for b, si in zip((1e-4, 1e-3, 1e-2), s):
            assert predicted_error(order, math.sqrt(si) * AUTO_CHANNEL_RMS) <= b * (1 + 1e-12)
    assert [auto_scale(t, 1e-3) for t in (2, 6, 16)] == sorted(auto_scale(t, 1e-3) for t in (2, 6, 16))
    for order in (2, 6, 16):  # bounded channels: the proven bound at |x|, |y| <= c sqrt(s) meets the budget
        for b in (1e-4, 1e-3, 1e-2):
            s = auto_scale(order, b, bound=2.0)
            assert worst_case_bound(order, 2 * 4.0 * s) <= b
            assert worst_case_bound(order, 2 * 4.0 * s * 1.3) > b  # and is the largest grid point doing so
    with pytest.raises(ValueError, match="error_budget"):
        auto_scale(6, 1e-12)
    with pytest.raises(ValueError, match="error_budget"):
        auto_scale(6, -1.0)
    assert ElementwiseAttention(32, 4, order=8).scale == auto_scale(8, 1e-3, bound=layer_mod.QK_BOUND)
    assert ElementwiseAttention(32, 4, order=8, qk_norm="rms_unbounded").scale == auto_scale(8, 1e-3)


@pytest.mark.parametrize("qk_norm", ["rms", "rms_unbounded"])
def test_bounded_norm_keeps_the_error_within_budget_whatever_the_weights(qk_norm):
    """qk_norm="rms": with q/k norm weights grown 10x, every |x|, |y| stays within 2 sqrt(s) and EA-6 stays within
    the budget of exact EA at every position; the unbounded normalisation leaves it (so the test can fail)."""
    torch.manual_seed(0)
    lay = ElementwiseAttention(64, 2, order=6, qk_norm=qk_norm, backend="torch").eval()
    with torch.no_grad():
        lay.q_norm.weight.mul_(10)
        lay.k_norm.weight.mul_(10)
        q, k, v = lay.project(torch.randn(2, 48, 64))
    o = ea_ops.ea_attention(q.double(), k.double(), v.double(), order=6, scale=lay.scale, backend="torch")[0]
    exact = ea_ops.ea_attention_exact(q.double(), k.double(), v.double(), scale=lay.scale)
    spread = (v.amax(1, keepdim=True) - v.amin(1, keepdim=True)).double()
    err = float(((o - exact).abs() / spread).max())
    if qk_norm == "rms":
        assert float(q.abs().max()) <= layer_mod.QK_BOUND and float(k.abs().max()) <= layer_mod.QK_BOUND
        assert err <= lay.error_budget
    else:
        assert err > 10 * lay.error_budget


def _layer(**kw):
    torch.manual_seed(0)
    return ElementwiseAttention(32, 4, 2, backend="torch", **kw)


def test_tracker_measures_rms_and_max_of_x_and_y():
    lay = _layer()
    x1, x2 = torch.randn(2, 9, 32), torch.randn(3, 5, 32) * 2
    r = math.sqrt(lay.scale)
    for i, x in enumerate((x1, x2)):
        lay(x)
        with torch.no_grad():
            q, k, _ = lay.project(x)
        ms_q, ms_k = (q * r).square().mean((0, 1)), (k * r).square().mean((0, 1))
        if i == 0:
            want_q, want_k = ms_q, ms_k
            max_q, max_k = (q * r).abs().amax((0, 1)), (k * r).abs().amax((0, 1))
        else:
            want_q = want_q + layer_mod.TRACK_MOMENTUM * (ms_q - want_q)
            want_k = want_k + layer_mod.TRACK_MOMENTUM * (ms_k - want_k)
            max_q = torch.maximum(max_q, (q * r).abs().amax((0, 1)))
            max_k = torch.maximum(max_k, (k * r).abs().amax((0, 1)))
    assert torch.allclose(lay._ms_x, want_q, rtol=1e-5) and torch.allclose(lay._ms_y, want_k, rtol=1e-5)
    assert torch.equal(lay._max_x, max_q) and torch.equal(lay._max_y, max_k)
    rep = lay.accuracy("me")
    assert rep.updates == 2 and rep.name == "me"
    assert rep.rms_x == pytest.approx(float(want_q.max().sqrt()), rel=1e-5)
    Z = 2 * float((max_q.view(2, 2, 8) * max_k[:, None]).max())
    assert rep.worst_case_bound == pytest.approx(worst_case_bound(6, Z), rel=1e-5)
    typical = predicted_error(6, max(rep.rms_x, rep.rms_y))
    assert rep.predicted_error == pytest.approx(min(typical, rep.worst_case_bound), rel=1e-9)
    lay.eval()
    lay(torch.randn(2, 4, 32) * 100)  # eval mode: not tracked
    assert lay.accuracy().updates == 2


def test_padding_is_not_tracked():
    lay = _layer(qk_norm=None)
    x = torch.randn(2, 8, 32)
    m = torch.ones(2, 8, dtype=torch.long)
    m[0, :3] = 0
    x[0, :3] = 1e3  # huge padded inputs would dominate the max
    lay(x, attention_mask=m)
    with torch.no_grad():
        q, _, _ = lay.project(x)
    real = q[m.bool()] * math.sqrt(lay.scale)
    assert torch.equal(lay._max_x, real.abs().amax(0))


def test_warns_once_when_a_layer_leaves_its_budget():
    lay = _layer(qk_norm=None)
    with torch.no_grad():
        lay.q_proj.weight.mul_(30)  # channels far outside the range where order 6 is accurate
    x = torch.randn(8, 64, 32)
    with pytest.warns(EAAccuracyWarning, match="error_budget") as rec:
        for _ in range(3):
            lay(x)
    assert sum(issubclass(w.category, EAAccuracyWarning) for w in rec) == 1
    rep = lay.accuracy()
    assert not rep.within_budget and rep.predicted_error > 1e-3
    lay.reset_accuracy_tracking()
    assert lay.accuracy().updates == 0
    ok = _layer(error_budget=1e-2)  # unit-RMS channels under scale="auto": within budget, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", EAAccuracyWarning)
        for _ in range(3):
            ok(torch.randn(8, 64, 32))
    assert ok.accuracy().within_budget


def test_accuracy_report_lists_every_layer():
    model = torch.nn.ModuleDict({"a": _layer(), "b": torch.nn.Sequential(torch.nn.Linear(32, 32), _layer(order=8))})
    rep = accuracy_report(model)
    assert [r.name for r in rep] == ["a", "b.1"] and [r.order for r in rep] == [6, 8]
    assert all(r.updates == 0 and math.isnan(r.predicted_error) for r in rep)
    model["a"](torch.randn(1, 4, 32))
    rep = accuracy_report(model)
    assert rep[0].updates == 1 and math.isfinite(rep[0].predicted_error)
    text = str(rep)
    assert "predicted" in text.splitlines()[0] and len(text.splitlines()) == 3
    with pytest.raises(TypeError, match="model"):
        accuracy_report("not a model")
