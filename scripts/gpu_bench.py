#!/usr/bin/env python
"""GPU benchmark of the Triton backend at the issue's H200 goal shapes (run by scripts/gpu_check.sh).

Measures, in one process, with ``triton.testing.do_bench`` (median):
  * causal forward, B=8 T=8192 H=16 D=128 bf16, order 6: Triton (chosen and default configuration), the same
    math in eager PyTorch (``ea_ops.torch_backend``), the same math with each chunk step under
    ``torch.compile``, causal ``scaled_dot_product_attention``, FlashAttention (if installed), and a
    device-to-device copy of the same bytes (q, k, v read + o written = a copy of 2x a tensor);
  * forward+backward, T in 2048/4096/8192: Triton against causal SDPA (and FlashAttention);
  * the decode step after prefills of growing context: Triton against SDPA over the KV cache;
and checks Triton's outputs against the torch reference on each shape it times.
Writes ``bench.json`` and ``bench.md`` under ``--out``. ``--dry-run`` (no GPU needed) writes the plan only.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

GOAL_SHAPE = (8, 8192, 16, 128)
FWD_BWD_T = (2048, 4096, 8192)
DECODE_CONTEXTS = (1024, 8192, 32768)
ORDER = 6
ROOFLINE_GOAL = 0.70


PEERS = ["triton", "triton_default", "eager", "compiled", "sdpa", "flash_attn", "copy"]
DEVICE = "cuda"  # "cpu" only for the script's own smoke test (--tiny under TRITON_INTERPRET=1)


def plan(quick: bool = False, tiny: bool = False) -> dict:
    """The cases to run (shapes are ``[B, T, H, D]``); ``tiny``: toy shapes for a CPU smoke test."""
    B, T, H, D = (1, 40, 2, 16) if tiny else GOAL_SHAPE
    fb_t = (32,) if tiny else FWD_BWD_T[:1] if quick else FWD_BWD_T
    ctxs = (8, 24) if tiny else DECODE_CONTEXTS[:2] if quick else DECODE_CONTEXTS
    return {
        "forward": {"shape": [B, T, H, D], "dtype": "bfloat16", "order": ORDER, "peers": PEERS},
        "fwd_bwd": [{"shape": [B, t, H, D], "dtype": "bfloat16"} for t in fb_t],
        "decode": {"B": B, "H": H, "D": D, "dtype": "bfloat16", "contexts": list(ctxs)},
        "compiled": {"shape": [B, T, H, D]},
    }


def io_bytes(shape, itemsize: int) -> int:
    """Bytes the forward must move: q, k, v read and o written."""
    return 4 * math.prod(shape) * itemsize


def summarize(res: dict) -> dict:
    """Ratios and the issue's goals from measured microseconds (``None`` where a peer did not run)."""
    out: dict = {}
    fwd = res.get("forward", {})
    t_tri, t_copy = fwd.get("triton_us"), fwd.get("copy_us")
    if t_tri and t_copy:
        frac = t_copy / t_tri
        out["forward_fraction_of_copy"] = round(frac, 3)
        out["forward_goal_70pct_of_copy"] = frac >= ROOFLINE_GOAL
    for peer in ("eager", "compiled", "sdpa", "flash_attn"):
        t = fwd.get(f"{peer}_us")
        if t_tri and t:
            out[f"forward_speedup_vs_{peer}"] = round(t / t_tri, 2)
    wins = []
    for case in res.get("fwd_bwd", []):
        best_peer = min((case[k] for k in ("sdpa_us", "flash_attn_us") if case.get(k)), default=None)
        if case.get("triton_us") and best_peer:
            case["speedup_vs_best_softmax"] = round(best_peer / case["triton_us"], 2)
            wins.append(case["triton_us"] < best_peer)
    if wins:
        out["fwd_bwd_goal_faster_than_sdpa_from_2048"] = all(wins)
    steps = [c["triton_us"] for c in res.get("decode", []) if c.get("triton_us")]
    if len(steps) >= 2:
        out["decode_max_over_min"] = round(max(steps) / min(steps), 3)
        out["decode_goal_flat"] = max(steps) / min(steps) < 1.25
    return out


def markdown(res: dict) -> str:
    lines = [f"# ea-ops Triton GPU benchmark ({res['date']}, {res['device']})", "",
             f"torch {res['torch']}, triton {res['triton']}, fingerprint `{res['fingerprint']}`", ""]
    f = res.get("forward", {})
    if f:
        lines += ["## Causal forward " + "x".join(map(str, f["shape"])) + f" {f['dtype']}, order {ORDER}", "",
                  "| peer | us | GB/s |", "|---|---|---|"]
        for peer in PEERS:
            t = f.get(f"{peer}_us")
            if t:
                lines.append(f"| {peer} | {t:.1f} | {f['bytes'] / t / 1e3:.0f} |")
            else:
                lines.append(f"| {peer} | - ({f.get(peer + '_skip', 'n/a')}) | - |")
        lines.append("")
    if res.get("fwd_bwd"):
        lines += ["## Forward + backward (causal, bf16)", "", "| T | triton us | sdpa us | flash_attn us |",
                  "|---|---|---|---|"]
        for c in res["fwd_bwd"]:
            lines.append(f"| {c['shape'][1]} | {c.get('triton_us', '-')} | {c.get('sdpa_us', '-')} | "
                         f"{c.get('flash_attn_us', '-')} |")
        lines.append("")
    if res.get("decode"):
        lines += ["## Decode step", "", "| context | triton step us | sdpa over KV cache us |", "|---|---|---|"]
        for c in res["decode"]:
            lines.append(f"| {c['context']} | {c.get('triton_us', '-')} | {c.get('sdpa_us', '-')} |")
        lines.append("")
    lines += ["## Goals", "", "```", json.dumps(res.get("summary", {}), indent=1), "```", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ measuring
def _bench(fn, rep: int = 60) -> float:
    """Median microseconds: ``triton.testing.do_bench`` on CUDA; perf_counter for the CPU smoke test."""
    if DEVICE == "cuda":
        from triton.testing import do_bench

        return 1000.0 * float(do_bench(fn, warmup=15, rep=rep, return_mode="median"))
    fn()
    samples = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return 1e6 * sorted(samples)[1]


def _randn(gen, *shape, dtype, s=1.0):
    import torch

    return (torch.randn(*shape, generator=gen) * s).to(DEVICE, dtype)


def _rel(a, b) -> float:
    a, b = a.double(), b.double()
    return float(((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item())


def _try(out: dict, key: str, fn) -> None:
    """``out[key + "_us"]`` = timing of ``fn()``, or ``out[key + "_skip"]`` = why not."""
    try:
        out[f"{key}_us"] = round(_bench(fn), 2)
    except Exception as exc:  # a peer that cannot run here is reported, not fatal
        out[f"{key}_skip"] = f"{type(exc).__name__}: {exc}"[:300]


def _compiled_forward(order: int):
    """The torch backend's causal forward with each chunk step under ``torch.compile`` (a whole-sequence
    compile would unroll hundreds of chunks into one graph)."""
    import torch

    from ea_ops import torch_backend as tb
    from ea_ops.features import features

    @torch.compile(dynamic=False)
    def chunk_step(xc, yc, vc, S, Z, m):
        mi = torch.minimum(torch.cummin(yc * yc, dim=1).values, m[:, None])
        A = tb._intra(xc, yc, mi, order)
        qf = features(xc, order) * torch.exp(mi - m[:, None])[..., None]
        num = torch.bmm(A, vc[..., None]).squeeze(-1) + (qf * S[:, None, :]).sum(-1)
        d = A.sum(-1) + (qf * Z[:, None, :]).sum(-1)
        S2, Z2 = tb._absorb(S, Z, m, yc, vc, mi[:, -1], order)
        return num / d, S2, Z2, mi[:, -1]

    def run(q, k, v):
        B, T, H, D = q.shape
        x, y, vr = tb.to_rows(q, torch.float32), tb.to_rows(k, torch.float32), tb.to_rows(v, torch.float32)
        N = x.shape[0]
        chunk = tb.chunk_size(N, T)
        S = x.new_zeros(N, order + 1)
        Z = x.new_zeros(N, order + 1)
        m = x.new_full((N,), math.inf)
        outs = []
        for s in range(0, T - T % chunk, chunk):  # whole chunks only: one static shape
            o, S, Z, m = chunk_step(x[:, s:s + chunk], y[:, s:s + chunk], vr[:, s:s + chunk], S, Z, m)
            outs.append(o)
        return torch.cat(outs, 1)

    return run


def run_forward(res: dict, cfg: dict) -> None:
    import torch
    import torch.nn.functional as F

    import ea_ops
    from ea_ops.triton import configs
    from ea_ops.triton.target import fingerprint

    B, T, H, D = cfg["shape"]
    dt = torch.bfloat16
    g = torch.Generator().manual_seed(0)
    q, k, v = (_randn(g, B, T, H, D, dtype=dt, s=s) for s in (0.5, 0.5, 1.0))
    out = {"shape": [B, T, H, D], "dtype": "bfloat16", "bytes": io_bytes((B, T, H, D), 2)}
    HD = H * D
    out["config_chosen"] = configs.choose("forward", causal=True, order=ORDER, dtype="bfloat16", HD=HD,
                                          n_seqs=B, rows=B * T, fp=fingerprint(DEVICE))
    out["config_default"] = configs.default("forward", causal=True, HD=HD, n_seqs=B, rows=B * T)

    def tri():
        return ea_ops.ea_attention(q, k, v, order=ORDER, backend="triton")[0]

    o = tri()
    ref, _ = ea_ops.ea_attention(q[:1].float(), k[:1].float(), v[:1].float(), order=ORDER, backend="torch")
    out["rel_err_vs_torch_batch0"] = _rel(o[:1], ref)
    _try(out, "triton", tri)
    with configs.forced(out["config_default"], "forward"):
        _try(out, "triton_default", tri)
    _try(out, "eager", lambda: ea_ops.ea_attention(q, k, v, order=ORDER, backend="torch"))
    qt, kt, vt = (t.transpose(1, 2).contiguous() for t in (q, k, v))
    _try(out, "sdpa", lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=True))
    try:
        from flash_attn import flash_attn_func

        _try(out, "flash_attn", lambda: flash_attn_func(q, k, v, causal=True))
    except ImportError:
        out["flash_attn_skip"] = "flash_attn not installed"
    src = torch.empty(2 * q.numel(), device=DEVICE, dtype=dt)
    dst = torch.empty_like(src)
    _try(out, "copy", lambda: dst.copy_(src))
    res["forward"] = out


def run_compiled(res: dict, cfg: dict) -> None:
    """The torch.compile peer of the forward, last: its compile time is the least predictable."""
    import torch

    B, T, H, D = cfg["shape"]
    out = res.setdefault("forward", {})
    g = torch.Generator().manual_seed(0)
    q, k, v = (_randn(g, B, T, H, D, dtype=torch.bfloat16, s=s) for s in (0.5, 0.5, 1.0))
    try:
        t0 = time.monotonic()
        comp = _compiled_forward(ORDER)
        comp(q, k, v)
        out["compiled_compile_s"] = round(time.monotonic() - t0, 1)
        _try(out, "compiled", lambda: comp(q, k, v))
    except Exception as exc:
        out["compiled_skip"] = f"{type(exc).__name__}: {exc}"[:300]


def fwd_bwd_case(case: dict) -> dict:
    import torch
    import torch.nn.functional as F

    import ea_ops

    B, T, H, D = case["shape"]
    dt = torch.bfloat16
    g = torch.Generator().manual_seed(1)
    q, k, v, go = (_randn(g, B, T, H, D, dtype=dt, s=s) for s in (0.5, 0.5, 1.0, 1.0))
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    out: dict = {"shape": [B, T, H, D]}

    def tri():
        o, _ = ea_ops.ea_attention(q, k, v, order=ORDER, backend="triton")
        return torch.autograd.grad(o, (q, k, v), go)

    grads = tri()
    if T <= 2048:  # the reference's gradients on batch entry 0
        qs, ks, vs = (t.detach()[:1].float().requires_grad_() for t in (q, k, v))
        ro, _ = ea_ops.ea_attention(qs, ks, vs, order=ORDER, backend="torch")
        rg = torch.autograd.grad(ro, (qs, ks, vs), go[:1].float())
        out["rel_err_grads_vs_torch_batch0"] = max(_rel(a[:1], b) for a, b in zip(grads, rg))
    _try(out, "triton", tri)
    qt, kt, vt, gt = (t.detach().transpose(1, 2).contiguous() for t in (q, k, v, go))
    qt, kt, vt = (t.requires_grad_() for t in (qt, kt, vt))

    def sdpa():
        o = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True)
        return torch.autograd.grad(o, (qt, kt, vt), gt)

    _try(out, "sdpa", sdpa)
    try:
        from flash_attn import flash_attn_func
    except ImportError:
        out["flash_attn_skip"] = "flash_attn not installed"
    else:
        def fa():
            o = flash_attn_func(q, k, v, causal=True)
            return torch.autograd.grad(o, (q, k, v), go)

        _try(out, "flash_attn", fa)
    return out


def _free() -> None:
    import torch

    if DEVICE == "cuda":
        torch.cuda.empty_cache()


def run_fwd_bwd(res: dict, cases: list[dict]) -> None:
    res["fwd_bwd"] = []
    for case in cases:
        res["fwd_bwd"].append(fwd_bwd_case(case))
        _free()


def decode_case(B: int, H: int, D: int, ctx: int, tok: list) -> dict:
    import torch
    import torch.nn.functional as F

    import ea_ops

    g = torch.Generator().manual_seed(ctx)
    q, k, v = (_randn(g, B, ctx, H, D, dtype=tok[0].dtype, s=0.5) for _ in range(3))
    _, st = ea_ops.ea_attention(q, k, v, order=ORDER, output_final_state=True, backend="triton")
    out: dict = {"context": ctx}
    o1, _ = ea_ops.ea_recurrent_step(*tok, st, order=ORDER, backend="triton")
    ro, _ = ea_ops.ea_recurrent_step(*(t.float() for t in tok), st, order=ORDER, backend="torch")
    out["rel_err_vs_torch"] = _rel(o1, ro)
    _try(out, "triton", lambda: ea_ops.ea_recurrent_step(*tok, st, order=ORDER, backend="triton"))
    kc, vc = (t.transpose(1, 2).contiguous() for t in (k, v))
    q1 = tok[0][:, :, None, :]
    _try(out, "sdpa", lambda: F.scaled_dot_product_attention(q1, kc, vc))
    return out


def run_decode(res: dict, cfg: dict) -> None:
    import torch

    B, H, D = cfg["B"], cfg["H"], cfg["D"]
    g = torch.Generator().manual_seed(2)
    tok = [_randn(g, B, H, D, dtype=torch.bfloat16, s=0.5) for _ in range(3)]
    res["decode"] = []
    for ctx in cfg["contexts"]:
        res["decode"].append(decode_case(B, H, D, ctx, tok))
        _free()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for bench.json and bench.md")
    ap.add_argument("--quick", action="store_true", help="fewer shapes (T=2048 only for fwd+bwd)")
    ap.add_argument("--dry-run", action="store_true", help="write the plan only (no GPU needed)")
    ap.add_argument("--only", default="forward,fwd_bwd,decode,compiled",
                    help="comma-separated sections to run (compiled = the torch.compile peer of the forward)")
    ap.add_argument("--tiny", action="store_true",
                    help="toy shapes on CPU tensors under TRITON_INTERPRET=1: a smoke test of this script")
    args = ap.parse_args(argv)
    global DEVICE
    DEVICE = "cpu" if args.tiny else "cuda"
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    p = plan(args.quick, args.tiny)
    sections = [s for s in args.only.split(",") if s]
    bad = [s for s in sections if s not in p]
    if bad:
        ap.error(f"--only: unknown sections {bad}")
    if args.dry_run:
        (out_dir / "bench_plan.json").write_text(json.dumps(p, indent=1) + "\n")
        print(json.dumps(p, indent=1))
        return 0
    import torch
    import triton

    from ea_ops.triton.target import fingerprint

    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("gpu_bench: no CUDA device (use --dry-run to see the plan)", file=sys.stderr)
        return 2
    res = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu (Triton interpreter)",
           "torch": torch.__version__, "triton": triton.__version__,
           "fingerprint": fingerprint(DEVICE), "plan": p, "errors": {}}
    runners = {"forward": lambda: run_forward(res, p["forward"]),
               "compiled": lambda: run_compiled(res, p["compiled"]),
               "fwd_bwd": lambda: run_fwd_bwd(res, p["fwd_bwd"]),
               "decode": lambda: run_decode(res, p["decode"])}
    for name in sections:
        t0 = time.monotonic()
        try:
            runners[name]()
        except Exception as exc:  # keep the other sections' numbers
            res["errors"][name] = f"{type(exc).__name__}: {exc}"[:500]
        res[f"{name}_seconds"] = round(time.monotonic() - t0, 1)
        (out_dir / "bench.json").write_text(json.dumps(res, indent=1) + "\n")  # partial results survive
    res["summary"] = summarize(res)
    if "compiled" not in sections:
        res.setdefault("forward", {})["compiled_skip"] = "not run (--only)"
    (out_dir / "bench.json").write_text(json.dumps(res, indent=1) + "\n")
    (out_dir / "bench.md").write_text(markdown(res))
    print(markdown(res))
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
