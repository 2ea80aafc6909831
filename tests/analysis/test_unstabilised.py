"""The unstabilised variant: right where it is representable, broken exactly where the docs/math.md says."""

import torch

import ea_ops
from analysis import unstabilised_attention
from analysis.dense import dense_attention
from tests.helpers import qkv, rel_err


def test_matches_reference_on_tame_inputs():
    q, k, v = qkv((1, 50, 2, 3), scale_q=0.6, scale_k=0.6)
    for order in (0, 2, 6):
        ref = dense_attention(q, k, v, order=order)
        assert rel_err(unstabilised_attention(q, k, v, order=order), ref) < 1e-12
        assert rel_err(unstabilised_attention(q.float(), k.float(), v.float(), order=order), ref) < 1e-5


def test_large_keys_give_nan_without_rescaling_but_not_with_it():
    # every key near 11: exp(-y^2) = 0 in float32, so the naive sums are 0/0
    q, k, v = qkv((1, 30, 1, 2), scale_q=0.3, scale_k=0.2, shift_k=11.0)
    o = unstabilised_attention(q.float(), k.float(), v.float(), order=6)
    assert torch.isnan(o).all()
    o_stab, _ = ea_ops.ea_attention(q.float(), k.float(), v.float(), order=6, backend="torch")
    assert torch.isfinite(o_stab).all() and rel_err(o_stab, dense_attention(q, k, v, order=6)) < 1e-5


def test_sums_are_rounded_to_the_dtype():
    # bfloat16 sums of ~1 stall at 256: with 600 keys near 0 the naive state is wrong by far more than
    # bfloat16's output rounding, while float32 sums (same no-rescaling algorithm) are fine
    T = 600
    q = torch.zeros(1, T, 1, 1, dtype=torch.float64)
    k = torch.full((1, T, 1, 1), 0.01, dtype=torch.float64)
    v = torch.linspace(-1, 1, T, dtype=torch.float64).reshape(1, T, 1, 1)
    ref = dense_attention(q, k, v, order=2)
    bf = unstabilised_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), order=2)
    f32 = unstabilised_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), order=2, acc_dtype=torch.float32)
    assert (bf.double() - ref).abs().max() > 0.1
    assert (f32.double() - ref).abs().max() < 1e-2  # only the inputs' and output's bfloat16 rounding
