"""The rounding estimate used by worst-case order selection stays above what the torch kernel does."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ea_ops
from analysis.dense import dense_rows, rows_of
from analysis.rounding import UNIT_ROUNDOFF, parse_dtype, rounding_estimate


@settings(max_examples=12)
@given(st.sampled_from([2, 6, 10, 16, 24, 32]), st.floats(0.3, 2.5), st.sampled_from(["clustered", "uniform"]),
       st.integers(0, 2**16))
def test_estimate_covers_adversarial_float32_inputs(order, a, layout, seed):
    """Query at +a; keys all near -a (largest cancellation) or uniform in [-a, a]."""
    g = torch.Generator().manual_seed(seed)
    T, D = 48, 8
    x = torch.full((1, T, 1, D), a, dtype=torch.float64)
    if layout == "clustered":
        y = -a + 0.01 * torch.rand(1, T, 1, D, generator=g, dtype=torch.float64)
    else:
        y = (torch.rand(1, T, 1, D, generator=g, dtype=torch.float64) * 2 - 1) * a
    v = torch.randn(1, T, 1, D, generator=g, dtype=torch.float64)
    x32, y32, v32 = x.float(), y.float(), v.float()
    ref = dense_rows(rows_of(x32), rows_of(y32), rows_of(v32), orders=[order], exact=False)
    o, _ = ea_ops.ea_attention(x32, y32, v32, order=order, backend="torch")
    vr = rows_of(v32)
    err = ((rows_of(o) - ref.taylor[order]).abs() / (vr.amax(1) - vr.amin(1))[:, None]).max().item()
    assert err <= rounding_estimate(torch.float32, order, 2 * a * a)["total"]


def test_half_dtypes_add_output_rounding():
    for dt in (torch.float16, torch.bfloat16):
        est = rounding_estimate(dt, 6, 1.0)
        assert est["output"] == UNIT_ROUNDOFF[dt] and est["total"] > UNIT_ROUNDOFF[dt]
    assert rounding_estimate(torch.float32, 6, 1.0)["output"] == 0.0


def test_parse_dtype():
    assert parse_dtype("bfloat16") is torch.bfloat16 and parse_dtype(torch.float16) is torch.float16
    import pytest

    with pytest.raises(ValueError, match="dtype"):
        parse_dtype("int8")
