"""Property tests of the bounds (docs/math.md section 6): the realised error never exceeds either bound, the two-key
construction reaches the worst-case bound, even orders keep weights positive, odd orders do not.

Rounding slack: the realised error is computed in float64, where the Taylor sum for ``z < 0`` loses a factor
``K_t(Z)`` (:func:`analysis.taylor.cancellation`); every comparison allows ``64 * 2^-52 * K_t(Z) * spread``
(plus 1e-14 absolute) on top of the bound, and nothing more.
"""

import math

import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from analysis.bounds import posterior_bound, realised_error, two_key_construction, worst_case_error
from analysis.dense import dense_attention
from analysis.taylor import cancellation, taylor_poly

EPS = 2.0**-52
even = st.sampled_from([0, 2, 4, 6, 8, 10, 12, 16])
bounds_ab = st.floats(0.05, 2.5)
shapes = st.tuples(st.integers(1, 40), st.integers(1, 3))


def inputs(T, D, a, b, seed):
    g = torch.Generator().manual_seed(seed)
    q = (torch.rand(1, T, 1, D, generator=g, dtype=torch.float64) * 2 - 1) * a
    k = (torch.rand(1, T, 1, D, generator=g, dtype=torch.float64) * 2 - 1) * b
    v = torch.randn(1, T, 1, D, generator=g, dtype=torch.float64)
    return q, k, v


def visible_spread(v, causal):
    if causal:
        return torch.cummax(v, 1).values - torch.cummin(v, 1).values
    return (v.amax(1, keepdim=True) - v.amin(1, keepdim=True)).expand_as(v)


def slack(order, Z, spread):
    return 64 * EPS * cancellation(order, Z) * spread + 1e-14


@given(shapes, even, bounds_ab, bounds_ab, st.booleans(), st.integers(0, 2**16))
def test_realised_error_below_worst_case_bound(shape, order, a, b, causal, seed):
    T, D = shape
    q, k, v = inputs(T, D, a, b, seed)
    err, pos = realised_error(q, k, v, order, causal=causal)
    spread = visible_spread(v, causal)[:, pos]
    bound = worst_case_error(order, a, b)
    assert bool((err <= bound * spread + slack(order, 2 * a * b, spread)).all())


@given(shapes, st.integers(0, 9), bounds_ab, bounds_ab, st.booleans(), st.floats(0.2, 4.0), st.integers(0, 2**16))
def test_realised_error_below_posterior_bound(shape, order, a, b, causal, scale, seed):
    """Any order (odd ones where their factors stay positive, inf otherwise); a channel scale too."""
    T, D = shape
    if order % 2:  # the slack needs P_t > 0 on [-Z, Z] (finite K_t); else the bound is inf anyway
        assume(math.isfinite(worst_case_error(order, a * math.sqrt(scale), b * math.sqrt(scale))))
    q, k, v = inputs(T, D, a, b, seed)
    err, pos = realised_error(q, k, v, order, causal=causal, scale=scale)
    pb = posterior_bound(q, k, v, order, causal=causal, scale=scale)[:, pos]
    spread = visible_spread(v, causal)[:, pos]
    Z = 2 * a * b * scale
    assert bool((err <= pb + slack(order, Z, spread)).all())
    # the a-posteriori bound never exceeds the worst case over the same box (even orders)
    if order % 2 == 0:
        wc = worst_case_error(order, a * math.sqrt(scale), b * math.sqrt(scale))
        assert bool((pb <= wc * spread + 1e-12).all())


@given(even, st.floats(0.1, 1.2), st.floats(0.1, 1.2))
def test_two_key_construction_reaches_the_worst_case_bound(order, a, b):
    assume(2 * a * b <= 2.5)  # the key counts grow like e^(2Z)
    bound = worst_case_error(order, a, b)
    assume(bound > 1e-8)  # below that float64 cannot resolve the realised error to 1%
    q, k, v = two_key_construction(order, a, b)
    err, _ = realised_error(q, k, v, order, causal=False, rows=1)
    ratio = float(err.max()) / bound
    assert 0.99 <= ratio <= 1 + 1e-6, (order, a, b, ratio, q.shape[1])


def test_two_keys_without_multiplicity_do_not_reach_it():
    q = torch.tensor([0.5, 0.5], dtype=torch.float64).reshape(1, 2, 1, 1)
    k = torch.tensor([0.5, -0.5], dtype=torch.float64).reshape(1, 2, 1, 1)
    v = torch.tensor([0.0, 1.0], dtype=torch.float64).reshape(1, 2, 1, 1)
    err, _ = realised_error(q, k, v, 2, causal=False)
    assert 0.7 < float(err.max()) / worst_case_error(2, 0.5, 0.5) < 0.9


@given(even, st.floats(-60.0, 60.0))
def test_even_orders_give_positive_polynomial(order, z):
    assert float(taylor_poly(z, order)) > 0


@given(even, shapes, st.floats(0.1, 3.0), st.integers(0, 2**16))
def test_even_orders_stay_in_the_convex_hull(order, shape, a, seed):
    T, D = shape
    q, k, v = inputs(T, D, a, a, seed)
    o = dense_attention(q, k, v, order=order, causal=True)
    lo, hi = torch.cummin(v, 1).values, torch.cummax(v, 1).values
    tol = 1e-12 * (1 + v.abs().max())
    assert bool(((o >= lo - tol) & (o <= hi + tol)).all())


@given(st.sampled_from([1, 3, 5, 7]), st.floats(1.0, 2.0))
def test_odd_orders_can_give_negative_weights(order, x):
    # P_t for odd t has one real root r < 0; a key with 2xy below it gets a negative weight
    lo, hi = -30.0, 0.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if float(taylor_poly(mid, order)) < 0 else (lo, mid)
    y_neg = (lo - 1.0) / (2 * x)
    assert float(taylor_poly(2 * x * y_neg, order)) < 0
    q = torch.full((1, 2, 1, 1), x, dtype=torch.float64)
    k = torch.tensor([0.0, y_neg], dtype=torch.float64).reshape(1, 2, 1, 1)
    v = torch.tensor([0.0, 1.0], dtype=torch.float64).reshape(1, 2, 1, 1)
    o = float(dense_attention(q, k, v, order=order, causal=False)[0, 0, 0, 0])
    assert o < 0 or o > 1 or not math.isfinite(o)  # outside the values' range: no longer a weighted mean
    assert math.isinf(worst_case_error(order, x, abs(y_neg)))
    assert math.isinf(float(posterior_bound(q, k, v, order, causal=False).max()))


def test_worst_case_error_validates():
    import pytest

    for bad in (-1, 2.0, True):
        with pytest.raises(ValueError, match="order"):
            worst_case_error(bad, 1.0, 1.0)
    with pytest.raises(ValueError, match="a and b"):
        worst_case_error(2, -1.0, 1.0)
    with pytest.raises(ValueError, match="a and b"):
        worst_case_error(2, math.inf, 1.0)
