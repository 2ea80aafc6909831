"""``ea-ops tune``: tune kernels for one backend and target, writing records (docs/design.md section 5)."""

from __future__ import annotations

import argparse
import importlib
import sys

from ea_ops import records
from ea_ops.outdir import OutDirError, prepare_out_dir

_RUNNERS = {"tvm": "schedules.tvm.cli_tune", "triton": "schedules.triton.cli_tune"}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ea-ops tune", description=__doc__)
    ap.add_argument("--backend", choices=sorted(_RUNNERS), required=True)
    ap.add_argument("--target", default=None,
                    help="cpu | cuda:sm_80 | cuda:sm_90 ... (default: this machine's device)")
    ap.add_argument("--orders", default="6", help="comma-separated even orders, e.g. 2,4,6")
    ap.add_argument("--trials", type=int, default=None, help="measurement trials per kernel")
    ap.add_argument("--time-budget", type=float, default=None, help="stop after this many seconds")
    ap.add_argument("--workloads", default="default", help="workload preset name")
    ap.add_argument("--out", default=None, help="records root (default: the user cache)")
    ap.add_argument("--rpc-tracker", default=None, help="HOST:PORT of a TVM RPC tracker (tvm only)")
    ap.add_argument("--rpc-key", default=None, help="device key registered with the tracker (tvm only)")
    ap.add_argument("--json", action="store_true", help="print a JSON summary")
    return ap


def parse_orders(text: str) -> list[int]:
    try:
        orders = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"--orders must be comma-separated even ints, got {text!r}") from None
    if not orders or any(o < 0 or o % 2 for o in orders):
        raise SystemExit(f"--orders must be comma-separated non-negative even ints, got {text!r}")
    return orders


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    args.orders = parse_orders(args.orders)
    if args.trials is not None and args.trials < 1:
        raise SystemExit("--trials must be >= 1")
    if args.time_budget is not None and args.time_budget <= 0:
        raise SystemExit("--time-budget must be > 0 seconds")
    if args.backend != "tvm" and (args.rpc_tracker or args.rpc_key):
        raise SystemExit("--rpc-tracker/--rpc-key are for --backend tvm only")
    if bool(args.rpc_tracker) != bool(args.rpc_key):
        raise SystemExit("--rpc-tracker and --rpc-key go together")
    try:  # the records root, before any measuring (the runners write under <root>/<backend>/<fingerprint>/)
        prepare_out_dir(args.out or records.user_cache_dir(),
                        option="--out" if args.out else "the user cache (EA_OPS_CACHE_DIR)")
    except OutDirError as exc:
        print(f"ea-ops tune: {exc}", file=sys.stderr)
        return 2
    return int(importlib.import_module(_RUNNERS[args.backend]).run(args) or 0)
