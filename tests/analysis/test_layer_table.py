"""ea_ops/nn/accuracy_table.json is what ``analysis.layer_table.generate`` computes: its grids and settings are
the generator's, its worst-case curve recomputes exactly, and spot-checked entries of its measured curve
recompute (same seed) to float32-rounding level; a fresh seed confirms the error ``scale="auto"`` promises."""

from __future__ import annotations

import math

import pytest

from analysis import layer_table
from analysis.bounds import worst_case_error
from ea_ops.nn.accuracy import AUTO_CHANNEL_RMS, auto_scale, load_accuracy_table


def test_table_has_the_generators_grids():
    t = load_accuracy_table()
    assert t["typical"]["sigma"] == layer_table.SIGMAS and t["worst_case"]["Z"] == layer_table.ZS
    assert sorted(map(int, t["typical"]["error"])) == layer_table.ORDERS
    for key in ("seq_len", "channels", "rows", "confidence", "seed"):
        assert t["typical"][key] == getattr(layer_table, key.upper() if key != "seq_len" else "SEQ_LEN")


def test_worst_case_curve_recomputes():
    t = load_accuracy_table()["worst_case"]
    for order, errs in t["error"].items():
        for z, e in zip(t["Z"], errs):
            assert worst_case_error(int(order), math.sqrt(z / 2), math.sqrt(z / 2)) == pytest.approx(e, rel=1e-12)


@pytest.mark.parametrize(("order", "i"), [(6, 17), (2, 12)])
def test_measured_entries_recompute(order, i):
    t = load_accuracy_table()["typical"]
    sigma, stored = t["sigma"][i], t["error"][str(order)][i]
    assert stored > 1e-4  # an entry where the approximation, not the rounding of this CPU, decides
    # same seed and settings; kernels on another CPU may round differently: 1% covers that, and is far below the
    # factor of ~2 between neighbouring grid points
    assert layer_table.typical_error(order, sigma) == pytest.approx(stored, rel=1e-2)


def test_auto_scale_holds_on_fresh_samples():
    s = auto_scale(6, 1e-3)
    sigma = math.sqrt(s) * AUTO_CHANNEL_RMS
    assert layer_table.typical_error(6, sigma, seed=12345) <= 1e-3
