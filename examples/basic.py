"""A worked example of ea-ops: EA-t against exact EA, training gradients, prefill then decode.

Run: python examples/basic.py   (also the first part of `make demo`)
"""

import torch

import ea_ops

torch.manual_seed(0)
B, T, H, D = 2, 512, 4, 16
# Channel scale matters more than anything else for EA-t's accuracy (see the README's error table).
q, k, v = (torch.randn(B, T, H, D) * s for s in (0.5, 0.5, 1.0))

exact = ea_ops.ea_attention_exact(q, k, v)                       # O(T^2) reference
print(f"q, k ~ N(0, 0.5^2), v ~ N(0, 1), shape [B, T, H, D] = {[B, T, H, D]}, float32, causal")
print(f"{'order':>5}  {'max |o - exact|':>16}  {'rms':>10}")
for order in (0, 2, 4, 6, 8):
    o, _ = ea_ops.ea_attention(q, k, v, order=order)            # O(t T D)
    err = (o - exact).abs()
    print(f"{order:>5}  {err.max().item():>16.3e}  {err.pow(2).mean().sqrt().item():>10.3e}")

# Training: differentiable in q, k, v.
qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
o, _ = ea_ops.ea_attention(qg, kg, vg, order=6)
o.square().mean().backward()
print(f"grad norms: q {qg.grad.norm():.4f}  k {kg.grad.norm():.4f}  v {vg.grad.norm():.4f}")

# Serving: prefill the prompt in parallel, then decode one token at a time from the state.
o_prefill, state = ea_ops.ea_attention(q[:, :-1], k[:, :-1], v[:, :-1], order=6, output_final_state=True)
o_last, state = ea_ops.ea_recurrent_step(q[:, -1], k[:, -1], v[:, -1], state, order=6)
o_full, _ = ea_ops.ea_attention(q, k, v, order=6)
print(f"state S {list(state.S.shape)} (float32); decode vs parallel, max diff "
      f"{(o_last - o_full[:, -1]).abs().max().item():.2e}")

# Keys far from zero: exp(-k^2) underflows float32 at |k| > ~10; the stabilised kernels do not care.
o_far, _ = ea_ops.ea_attention(q, k + 12.0, v, order=6)
ref_far, _ = ea_ops.ea_attention(q.double(), (k + 12.0).double(), v.double(), order=6)
print(f"keys near 12: finite {bool(torch.isfinite(o_far).all())}, max diff to float64 "
      f"{(o_far.double() - ref_far).abs().max().item():.2e}")
