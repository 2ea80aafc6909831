"""``ea-ops info``: what this machine can run."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import torch

from . import __version__, checks, dispatch, host_pages


def collect() -> dict:
    info: dict = {
        "ea_ops": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "backends": {},
    }
    for name, why in dispatch.available().items():
        entry: dict = {"available": why is None}
        if why is not None:
            entry["reason"] = why
        else:
            mod = dispatch.load(name)
            describe = getattr(mod, "describe", None)
            if describe is not None:
                entry.update(describe())
        info["backends"][name] = entry
    cpu = torch.zeros((), dtype=torch.float32).expand(1, 4096, 8, 64)
    info["auto_on_cpu"] = dispatch.choose("auto", cpu, causal=True, order=6, needs_grad=True).backend
    info["large_outputs"] = large_outputs()
    return info


def large_outputs() -> str:
    """Whether a new CPU output of ``host_pages.FRESH_BYTES`` (32 MiB) or more gets fresh pages (README "Long
    sequences"): "reused" when ``GLIBC_TUNABLES`` raises ``glibc.malloc.mmap_threshold``; else "fresh-huge"
    (fresh, one fault per 2 MiB huge page) or "fresh" (one fault per 4 KiB page) under glibc's defaults;
    "unknown" off glibc."""
    if platform.libc_ver()[0] != "glibc":
        return "unknown"
    if "glibc.malloc.mmap_threshold" in os.environ.get("GLIBC_TUNABLES", ""):
        return "reused"
    return "fresh-huge" if host_pages.huge_pages_mode() in ("always", "madvise") else "fresh"


def _shape(text: str) -> tuple[int, ...]:
    try:
        return checks.parse_shape(text, ranks=(4, 3), allow_zero=True)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--shape ")) from None


def explain(args: argparse.Namespace) -> int:
    from .errors import BackendUnavailableError
    from .explain import explain_backend

    dtype = getattr(torch, args.dtype)
    q = torch.zeros((), dtype=dtype).expand(args.shape)  # no memory: only shape, dtype and device are read
    try:
        ex = explain_backend(q, order=args.order, causal=not args.non_causal, needs_grad=args.grad,
                             backend=args.backend)
    except (ValueError, TypeError, BackendUnavailableError) as exc:
        print(f"ea-ops info --explain: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(ex.as_dict(), indent=1, sort_keys=True) if args.json else ex)
    return 0


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="ea-ops info", description="Backends, target fingerprints, records.")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--explain", action="store_true",
                    help="say which backend and schedule a call of --shape gets, and why")
    ap.add_argument("--shape", type=_shape, default=(1, 4096, 8, 64),
                    help="with --explain: B,T,H,D of q (attention) or B,H,D (a step); default 1,4096,8,64")
    ap.add_argument("--order", type=int, default=6, help="with --explain: the Taylor order (default 6)")
    ap.add_argument("--dtype", choices=("float32", "bfloat16", "float16", "float64"), default="float32")
    ap.add_argument("--non-causal", action="store_true", help="with --explain: a non-causal call")
    ap.add_argument("--grad", action="store_true", help="with --explain: the call needs gradients")
    ap.add_argument("--backend", default="auto", help="with --explain: the backend= argument (default auto)")
    args = ap.parse_args(argv)
    if args.explain:
        return explain(args)
    info = collect()
    if args.json:
        print(json.dumps(info, indent=1, sort_keys=True))
        return 0
    print(f"ea-ops {info['ea_ops']}  python {info['python']}  torch {info['torch']}"
          f"  cuda {'yes' if info['cuda_available'] else 'no'}")
    for name, entry in info["backends"].items():
        if not entry["available"]:
            print(f"  {name:<7} unavailable: {entry['reason']}")
            continue
        extra = {k: v for k, v in entry.items() if k != "available"}
        details = "  ".join(f"{k}={v}" for k, v in extra.items())
        print(f"  {name:<7} available  {details}".rstrip())
    print(f"  backend='auto' runs CPU float32 calls on: {info['auto_on_cpu']}"
          "  (ea-ops info --explain --shape B,T,H,D says why, and with which schedule)")
    if info["large_outputs"].startswith("fresh"):
        pages = ("on huge pages, zeroed by the kernel on first write" if info["large_outputs"] == "fresh-huge"
                 else "a page fault per 4 KiB (transparent huge pages are off)")
        print(f"  CPU outputs of 32 MiB or more get fresh pages (glibc's default), {pages}: for long "
              "sequences pass out= or reuse pages (README 'Long sequences')")
    return 0
