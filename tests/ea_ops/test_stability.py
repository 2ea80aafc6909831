"""Stabilisation and dtypes: large keys stay finite and exact, half inputs accumulate in float32."""

import pytest
import torch

import ea_ops
from ea_ops.naive import naive_attention
from tests.helpers import qkv, rel_err


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_keys_near_12_float32_equal_float64_math(causal, sign):
    # exp(-144) = 3e-63 is zero in float32: unstabilised sums would give 0/0.
    q, k, v = qkv((2, 200, 2, 4), scale_q=0.5, scale_k=0.3, shift_k=12.0 * sign, seed=1)
    o32, _ = ea_ops.ea_attention(q.float(), (k * sign * sign).float(), v.float(), order=6, causal=causal)
    ref = naive_attention(q, k, v, order=6, causal=causal)  # float64 has the range for exp(-150)
    assert torch.isfinite(o32).all()
    assert rel_err(o32, ref) < 1e-5


def test_decreasing_keys_rescale_the_state():
    # The running minimum of y^2 drops at every step: the stored sums must be rebased each time.
    T = 60
    k = torch.linspace(13.0, 0.0, T, dtype=torch.float64).reshape(1, T, 1, 1)
    q = torch.zeros_like(k) + 0.2
    v = torch.randn(1, T, 1, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    o32, st = ea_ops.ea_attention(q.float(), k.float(), v.float(), order=8, output_final_state=True)
    ref = naive_attention(q, k, v, order=8)
    assert torch.isfinite(o32).all() and rel_err(o32, ref) < 1e-5
    assert st.m.item() == pytest.approx(0.0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("causal", [True, False])
def test_half_inputs_accumulate_in_float32(dtype, causal):
    q, k, v = qkv((1, 3000, 1, 4), dtype=dtype, seed=2)
    o, st = ea_ops.ea_attention(q, k, v, order=6, causal=causal, output_final_state=causal)
    assert o.dtype == dtype
    ref = naive_attention(q.double(), k.double(), v.double(), order=6, causal=causal)
    # Only the final rounding to the half dtype remains (fp16: 2^-11, bf16: 2^-8), not 3000 additions.
    tol = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    assert rel_err(o, ref) < tol
    if causal:
        assert st.S.dtype == torch.float32 and st.Z[0, 0, 0].min() > 256  # a bf16 sum would stall at 256


def test_float32_state_for_float32_inputs_float64_for_float64():
    for dt, sdt in ((torch.float32, torch.float32), (torch.float64, torch.float64)):
        q, k, v = qkv((1, 5, 1, 2), dtype=dt)
        _, st = ea_ops.ea_attention(q, k, v, order=2, output_final_state=True)
        assert st.S.dtype == st.Z.dtype == st.m.dtype == sdt


def test_mixed_rows_take_both_paths_and_agree():
    # Row 0: keys dropping from 13 to 0 (running min drops by 169 > 60: the C x C path); row 1: ordinary keys.
    T = 50
    gen = torch.Generator().manual_seed(3)
    k = torch.stack([torch.linspace(13.0, 0.0, T), torch.randn(T, generator=gen) * 0.5], dim=-1)
    k = k.double().reshape(1, T, 1, 2)
    q, v, g = (torch.randn(k.shape, generator=gen, dtype=torch.float64) * s for s in (0.5, 1.0, 1.0))
    ins32 = [t.float().requires_grad_() for t in (q, k, v)]
    o32, _ = ea_ops.ea_attention(*ins32, order=6, backend="torch")  # the torch backend's two paths
    ins64 = [t.float().double().requires_grad_() for t in (q, k, v)]
    ref = naive_attention(*ins64, order=6)
    assert rel_err(o32, ref) < 1e-5
    got = torch.autograd.grad(o32, ins32, g.float())
    want = torch.autograd.grad(ref, ins64, g)
    # Measured over seeds 3..22: dq 1.6e-5 (it cancels its |y| ~ 13 part, see test_gradients), dk 6.9e-6,
    # dv 2.7e-7; the tolerances are about 8x those.
    for a, b, tol in zip(got, want, (1.3e-4, 5.5e-5, 2.2e-6)):
        assert torch.isfinite(a).all() and rel_err(a, b) < tol


def _at_radius(R: float, shape, dtype, seed: int):
    """q, k = +-R with random signs (|2 x y| = 2 R^2, the largest term), v = +-1."""
    g = torch.Generator().manual_seed(seed)
    sign = lambda: torch.randint(0, 2, shape, generator=g).double() * 2 - 1
    return tuple(t.to(dtype) for t in (R * sign(), R * sign(), sign()))


@pytest.mark.parametrize("order", [0, 2, 6, 16])
@pytest.mark.parametrize("backend, dtype", [("torch", torch.float32), ("torch", torch.float64),
                                            ("tvm", torch.float32), ("tvm", torch.bfloat16)])
def test_outputs_are_finite_up_to_the_documented_radius(order, backend, dtype):
    if backend == "tvm":
        pytest.importorskip("tvm")
    T = 64
    R = ea_ops.finite_radius(order, T, dtype=dtype)
    if dtype == torch.bfloat16:  # the radius must be representable; round it down to a bfloat16
        R = float(torch.tensor(R).to(dtype)) * (1 - 2**-7)
    for causal in (True, False):
        q, k, v = _at_radius(R, (1, T, 2, 8), dtype, seed=order)
        o, _ = ea_ops.ea_attention(q, k, v, order=order, causal=causal, backend=backend)
        assert torch.isfinite(o).all(), (R, causal)


def test_beyond_the_radius_outputs_overflow_as_documented():
    # The bound is not vacuous: 4x past it the order-6 sums overflow float32 (README: the finite domain).
    T = 64
    R = ea_ops.finite_radius(6, T)
    q, k, v = _at_radius(4 * R, (1, T, 1, 4), torch.float32, seed=1)
    o, _ = ea_ops.ea_attention(q, k, v, order=6, backend="torch")
    assert not torch.isfinite(o).all()


def test_finite_radius_validates_and_shrinks_with_order_and_length():
    radii = [ea_ops.finite_radius(t, 1024) for t in (2, 4, 6, 8)]
    assert all(b < a for a, b in zip(radii, radii[1:]))
    assert ea_ops.finite_radius(6, 2**31) < ea_ops.finite_radius(6, 2**10)
    assert ea_ops.finite_radius(6, 1024, dtype=torch.float64) > 1e20
    with pytest.raises(ValueError, match="length must be an int >= 1"):
        ea_ops.finite_radius(6, 0)
    with pytest.raises(ValueError, match="order must be even"):
        ea_ops.finite_radius(3, 10)
