"""Positions and EA: does the output change when every position moves by the same amount?

Softmax attention with RoPE depends on p_i - p_j only: its dot product sums each rotated channel pair, and the
two rotations cancel. EA weighs every channel alone, exp(-s (q_d - k_d)^2), and a rotation mixes the two channels
of a pair by absolute angles, so EA with RoPE depends on absolute positions. EA without positional encoding (the
default of ea_ops.nn and ea_ops.hf) has nothing to shift: causal masking alone tells tokens apart (NoPE).

    python examples/position_shift.py       # a few seconds

Prints, for a random ElementwiseAttention layer and the same tokens at positions p and p + shift, the largest
change of the layer's output relative to its RMS, with and without RoPE, beside softmax attention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import ea_ops
from ea_ops.nn import ElementwiseAttention, rotary


def main() -> int:
    torch.manual_seed(0)
    B, T, C, H = 2, 128, 64, 4
    lay = ElementwiseAttention(C, H, backend="torch").eval()
    x = torch.randn(B, T, C)
    with torch.no_grad():
        q, k, v = lay.project(x)
    pos = torch.arange(T)

    def ea(qq, kk):
        return ea_ops.ea_attention(qq, kk, v, order=lay.order, scale=lay.scale, backend="torch")[0]

    def ea_exact(qq, kk):
        return ea_ops.ea_attention_exact(qq, kk, v, scale=lay.scale)

    def softmax(qq, kk):
        return F.scaled_dot_product_attention(qq.transpose(1, 2), kk.transpose(1, 2), v.transpose(1, 2),
                                              is_causal=True).transpose(1, 2)

    def change(f, rope: bool, shift: int) -> float:
        a = f(rotary(q, pos), rotary(k, pos)) if rope else f(q, k)
        b = f(rotary(q, pos + shift), rotary(k, pos + shift)) if rope else f(q, k)
        return float((a - b).abs().max() / a.square().mean().sqrt())

    print(f"layer: hidden {C}, heads {H}, EA-{lay.order}, scale {lay.scale:.3g}; T = {T}, batch {B}")
    print("largest change of the attention output / its RMS when every position moves by the shift:")
    print(f"{'shift':>6} {'EA, no PE':>10} {'EA + RoPE':>10} {'exact EA + RoPE':>16} {'softmax + RoPE':>15}")
    for shift in (1, 10, 100, 1000):
        print(f"{shift:>6} {change(ea, False, shift):>10.2g} {change(ea, True, shift):>10.2g} "
              f"{change(ea_exact, True, shift):>16.2g} {change(softmax, True, shift):>15.2g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
