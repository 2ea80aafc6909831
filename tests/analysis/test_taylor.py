"""P_t, r_t and the minimum of P_t in float64, against scipy and first principles."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from analysis.taylor import cancellation, log_r, min_taylor_even, r_ratio, taylor_poly, taylor_tail

scipy_special = pytest.importorskip("scipy.special")


@given(st.integers(0, 32), st.floats(0.0, 80.0))
def test_r_equals_regularised_upper_gamma(order, z):
    want = float(scipy_special.gammaincc(order + 1, z))
    got = float(r_ratio(z, order))
    assume_resolvable = want > 1e-280
    if assume_resolvable:
        assert abs(got - want) <= 1e-12 * want
    if z > 0 and want < 0.5:  # where r_t is small the log is accurate too
        assert abs(float(log_r(z, order)) - math.log(want)) <= 1e-12 * max(1.0, abs(math.log(want)))


@given(st.integers(0, 32), st.floats(1e-6, 20.0))
def test_tail_equals_regularised_lower_gamma(order, z):
    # 1 - r_t(z) = P(t+1, z) for z > 0: the small quantities the bounds are made of
    want = float(scipy_special.gammainc(order + 1, z))
    if want > 1e-300 and z < order + 8:
        assert abs(float(taylor_tail(z, order)) - want) <= 1e-12 * want


@given(st.sampled_from([0, 2, 4, 6, 8, 12, 16]), st.floats(-12.0, 12.0), st.floats(1e-3, 1.0))
def test_r_strictly_decreasing_for_even_orders(order, z, dz):
    # compare 1 - r (the tail) so that values near r = 1 are resolved
    a, b = z, z + dz
    ta = float(taylor_tail(a, order)) if abs(a) < order + 4 else 1 - float(r_ratio(a, order))
    tb = float(taylor_tail(b, order)) if abs(b) < order + 4 else 1 - float(r_ratio(b, order))
    assert tb > ta or (ta == tb == 0.0)


def test_r_derivative_formula():
    # r_t' = -z^t e^-z / t!: integrate it numerically and compare with r_t(b) - r_t(a)
    from scipy.integrate import quad

    for t in (2, 6, 10):
        integral, _ = quad(lambda z, t=t: -(z**t) * math.exp(-z) / math.factorial(t), -2.0, 3.0,
                           epsabs=0, epsrel=1e-13)
        diff = float(r_ratio(3.0, t) - r_ratio(-2.0, t))  # both near 1: absolute error ~1e-16
        assert abs(integral - diff) <= 1e-9 * abs(diff) + 1e-15


@pytest.mark.parametrize("order", range(2, 33, 2))
def test_min_of_p_is_global_and_equals_last_term(order):
    z, p = min_taylor_even(order)
    assert abs(float(taylor_poly(z, order - 1))) < 1e-9 * float(taylor_poly(abs(z), order - 1))
    assert p == pytest.approx(z**order / math.factorial(order), rel=1e-9)
    grid = torch.linspace(-order - 2.0, 2.0, 200001, dtype=torch.float64)
    assert float(taylor_poly(grid, order).min()) >= p * (1 - 1e-9)


def test_spec_minima():
    # docs/math.md section 6 states these to 3-4 digits
    for t, (zs, ps) in {2: (-1.0, 0.5), 4: (-1.596, 0.2704), 6: (-2.181, 0.1493), 8: (-2.759, 0.0833)}.items():
        z, p = min_taylor_even(t)
        assert abs(z - zs) < 1e-3 and abs(p - ps) < 1e-4


def test_min_taylor_validates():
    for bad in (0, 3, -2):
        with pytest.raises(ValueError, match="even"):
            min_taylor_even(bad)


def test_cancellation_factor():
    assert cancellation(6, 0.0) == 1.0
    assert cancellation(6, 50.0) == pytest.approx(69.136, rel=1e-3)  # max over z of P_6(|z|)/|P_6(z)|
    assert cancellation(16, 50.0) == pytest.approx(2.12e4, rel=1e-2)
    # grows towards e^(2Z) only while the order keeps up with Z
    assert cancellation(32, 2.0) == pytest.approx(math.exp(4.0), rel=1e-6)
