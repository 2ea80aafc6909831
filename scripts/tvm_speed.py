#!/usr/bin/env python
"""Speed of the TVM backend against eager PyTorch and the memory roofline (issue 4's goals).

Side by side in one process, medians of repeated runs after warm-up (``torch.utils.benchmark``):

- forward: tuned TVM kernel (the record for this CPU, else says so), the default schedule, the torch
  backend (the same chunked, stabilised math in eager PyTorch), the straightforward eager form (cumsum
  prefix sums of the features, unstabilised), and the memory roofline of DESIGN.md: a copy that moves
  as many bytes as the forward (it reads q, k, v and writes o: a copy of two such tensors reads two and
  writes two);
- backward: the TVM backward kernel against autograd through both eager forms (the torch backend's
  ``causal_forward`` and the cumsum form), and the torch backend's explicit backward.

    python scripts/tvm_speed.py [--T 4096 --H 8 --D 64 --order 6 --threads 2]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--B", type=int, default=1)
    ap.add_argument("--T", type=int, default=4096)
    ap.add_argument("--H", type=int, default=8)
    ap.add_argument("--D", type=int, default=64)
    ap.add_argument("--order", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-run-time", type=float, default=2.0, help="seconds per measurement")
    args = ap.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # before TVM's pool starts

    import torch
    from torch.utils import benchmark

    from ea_ops import torch_backend as tb
    from ea_ops.state import EAState
    from ea_ops.tvm import build, ops
    from ea_ops.tvm.schedule import default_cpu_config

    torch.set_num_threads(args.threads)
    B, T, H, D, order = args.B, args.T, args.H, args.D, args.order
    g = torch.Generator().manual_seed(0)
    q, k, v, go = (torch.randn(B, T, H, D, generator=g) * 0.5 for _ in range(4))
    st = EAState.empty(B, H, D, order)

    def med(fn) -> float:
        fn()
        t = benchmark.Timer("fn()", globals={"fn": fn}, num_threads=args.threads)
        return t.blocked_autorange(min_run_time=args.min_run_time).median

    tuned = build.kernel_for("forward", True, order, "float32", H, D, T)
    default = build.kernel_for("forward", True, order, "float32", H, D, T,
                               config=default_cpu_config("forward", H, D))
    tuned_b = build.kernel_for("backward", True, order, "float32", H, D, T)
    default_b = build.kernel_for("backward", True, order, "float32", H, D, T,
                                 config=default_cpu_config("backward", H, D))
    o = torch.empty_like(q)

    def fwd(comp):
        def run():
            S, Z, M = st.S.clone(), st.Z.clone(), st.m.clone()
            comp.fn(q, k, v, o, S, Z, M, 1.0)
        return run

    scratch = [torch.empty(B, T, H, D) for _ in range(3)]
    grads = [torch.empty_like(q) for _ in range(3)]

    def bwd(comp):
        def run():  # the kernel alone: preallocated scratch and gradients
            S, Z, M = st.S.clone(), st.Z.clone(), st.m.clone()
            U = torch.zeros(B, H, order + 1, D)
            MN = torch.full((B, H, D), -math.inf)
            comp.fn(q, k, v, go, S, Z, M, *scratch, U, U.clone(), MN, *grads, 1.0)
        return run

    def api_bwd():  # what autograd pays: fresh gradient tensors, cached scratch
        ops.backward_impl(q, k, v, go, st.S, st.Z, st.m, order, True, 1.0, [])

    api_tvm = lambda: ops.forward_op(q, k, v, st.S, st.Z, st.m, order, True, 1.0, [])  # noqa: E731
    eager = lambda: tb.attention(q, k, v, order=order, causal=True, scale=1.0, initial_state=None,  # noqa: E731
                                 output_final_state=False, cu_seqlens=None)
    from ea_ops.features import features

    def cumsum_form(q, k, v):
        """The straightforward eager form: prefix sums by cumsum, not stabilised (fine for N(0, 0.5^2))."""
        kf = features(k, order) * torch.exp(-k * k)[..., None]  # [B, T, H, D, t+1]
        S = torch.cumsum(kf * v[..., None], dim=1)
        Z = torch.cumsum(kf, dim=1)
        qf = features(q, order)
        return (qf * S).sum(-1) / (qf * Z).sum(-1)

    eager_cumsum = lambda: cumsum_form(q, k, v)  # noqa: E731
    qc, kc, vc = (t.clone().requires_grad_() for t in (q, k, v))
    o_c = cumsum_form(qc, kc, vc)

    def autograd_cumsum_bwd():
        torch.autograd.grad(o_c, (qc, kc, vc), go, retain_graph=True)

    src = torch.empty(2 * B * T * H * D)  # read 2 + write 2 tensors = the forward's 3 read + 1 written
    dst = torch.empty_like(src)
    copy = lambda: dst.copy_(src)  # noqa: E731

    # Autograd through the torch backend's chunked forward as plain differentiable torch ops: it keeps
    # [N, C, C] tiles of every chunk alive (gigabytes at T = 4096), so only for T <= 1024.
    autograd_bwd = None
    if T <= 1024:
        x, y, vr = (tb.to_rows(t, torch.float32).clone().requires_grad_() for t in (q, k, v))
        S0, Z0, m0 = tb.state_to_rows(st)
        out_rows = tb.causal_forward(x, y, vr, S0, Z0, m0, order, tb.chunk_size(x.shape[0], T))[0]
        grow = tb.to_rows(go, torch.float32)

        def autograd_bwd():
            torch.autograd.grad(out_rows, (x, y, vr), grow, retain_graph=True)

    qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
    o_t, _ = tb.attention(qq, kk, vv, order=order, causal=True, scale=1.0, initial_state=None,
                          output_final_state=False, cu_seqlens=None)

    def torch_explicit_bwd():
        torch.autograd.grad(o_t, (qq, kk, vv), go, retain_graph=True)

    # Torch first: TVM's worker threads spin after each parallel kernel and would slow torch's own pool.
    t = {"torch_fwd_eager": med(eager), "torch_fwd_cumsum": med(eager_cumsum), "copy_same_bytes": med(copy),
         "torch_bwd_autograd_eager": med(autograd_bwd) if autograd_bwd else math.nan,
         "torch_bwd_explicit": med(torch_explicit_bwd), "torch_bwd_autograd_cumsum": med(autograd_cumsum_bwd)}
    t.update({
        "tvm_fwd_tuned": med(fwd(tuned)), "tvm_fwd_default": med(fwd(default)), "tvm_fwd_api": med(api_tvm),
        "tvm_bwd_tuned": med(bwd(tuned_b)), "tvm_bwd_default": med(bwd(default_b)), "tvm_bwd_api": med(api_bwd),
    })
    t["copy_same_bytes_after"] = med(copy)
    nbytes = 4 * B * T * H * D * 4  # q, k, v read and o written, float32
    copy_s = min(t["copy_same_bytes"], t["copy_same_bytes_after"])
    res = {
        "shape": f"B={B} T={T} H={H} D={D} order={order} float32, {args.threads} threads",
        "forward_config": {"tuned": tuned.config, "tuned_source": tuned.source},
        "backward_config": {"tuned": tuned_b.config, "tuned_source": tuned_b.source},
        "ms": {k_: round(v_ * 1e3, 3) for k_, v_ in t.items()},
        "forward_vs_eager_torch": round(t["torch_fwd_eager"] / t["tvm_fwd_tuned"], 1),
        "forward_vs_eager_cumsum": round(t["torch_fwd_cumsum"] / t["tvm_fwd_tuned"], 1),
        # The faster of the two copies: interference only ever slows a measurement down.
        "forward_roofline_fraction": round(copy_s / t["tvm_fwd_tuned"], 3),
        "forward_GBps": round(nbytes / t["tvm_fwd_tuned"] / 1e9, 1),
        "copy_GBps(read+write)": round(nbytes / copy_s / 1e9, 1),
        "forward_tuned_vs_default": _ratio(tuned, default, t["tvm_fwd_default"], t["tvm_fwd_tuned"]),
        "backward_vs_autograd_eager": round(t["torch_bwd_autograd_eager"] / t["tvm_bwd_tuned"], 1),
        "backward_vs_autograd_cumsum": round(t["torch_bwd_autograd_cumsum"] / t["tvm_bwd_tuned"], 1),
        "backward_vs_torch_explicit": round(t["torch_bwd_explicit"] / t["tvm_bwd_tuned"], 1),
        "backward_api_vs_autograd_cumsum": round(t["torch_bwd_autograd_cumsum"] / t["tvm_bwd_api"], 1),
        "backward_tuned_vs_default": _ratio(tuned_b, default_b, t["tvm_bwd_default"], t["tvm_bwd_tuned"]),
    }
    for key, val in res.items():
        print(f"{key:>28}: {val}")
    return res


def _ratio(tuned, default, t_default: float, t_tuned: float):
    """default time / tuned time; when the record chose the default schedule itself, say so: the two
    timings are then one kernel measured twice, and their spread is the noise of this machine."""
    if tuned.config == default.config:
        return f"same schedule (the record chose the default); measured twice: {t_default / t_tuned:.2f}"
    return round(t_default / t_tuned, 2)


if __name__ == "__main__":
    main()
