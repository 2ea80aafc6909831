"""``ea-ops compile``: build kernels for a target (also cross-target) and export them with a manifest."""

from __future__ import annotations

import argparse
import importlib
import re
import sys

from ea_ops.outdir import OutDirError

from .cli_tune import parse_dtypes, parse_orders

_RUNNERS = {"tvm": "schedules.tvm.cli_compile", "triton": "schedules.triton.cli_compile"}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ea-ops compile", description=__doc__)
    ap.add_argument("--backend", choices=sorted(_RUNNERS), required=True)
    ap.add_argument("--target", required=True,
                    help="cpu | cpu:<llvm mcpu, e.g. x86-64-v3> | aarch64[-linux-gnu][:<mcpu>] (TVM) | cuda:sm_80 | "
                         "cuda:sm_90 ...")
    ap.add_argument("--out", required=True, help="output folder (created)")
    ap.add_argument("--orders", default="6", help="comma-separated even orders")
    ap.add_argument("--dtypes", default="float32", help="comma-separated: float32,bfloat16,float16")
    ap.add_argument("--heads", type=int, default=None, help="H of the compiled kernels (TVM; default 8)")
    ap.add_argument("--dim", type=int, default=None, help="D of the compiled kernels (TVM; default 64)")
    ap.add_argument("--shapes", type=_shapes, default=None,
                    help="comma-separated HxD of the compiled kernels (TVM), e.g. 8x64,16x128")
    ap.add_argument("--from-log", default=None, metavar="FILE",
                    help="also the calls an EA_OPS_LOG_CALLS file recorded on the target's device (TVM; their "
                         "shapes, orders, dtypes)")
    return ap


def _shapes(text: str) -> list[tuple[int, int]]:
    out = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)x(\d+)\s*", part)
        if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
            raise argparse.ArgumentTypeError(f"shapes must be comma-separated HxD with H, D >= 1, got {text!r}")
        out.append((int(m.group(1)), int(m.group(2))))
    return out


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    args.orders = parse_orders(args.orders)
    for name in ("heads", "dim"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise SystemExit(f"--{name} must be >= 1")
    args.dtypes = parse_dtypes(args.dtypes)
    if args.backend != "tvm" and (args.shapes or args.from_log):
        raise SystemExit("--shapes and --from-log are TVM options (the Triton kernels take any H and D)")
    try:
        return int(importlib.import_module(_RUNNERS[args.backend]).run(args) or 0)
    except OutDirError as exc:  # raised before any build
        print(f"ea-ops compile: {exc}", file=sys.stderr)
        return 2
