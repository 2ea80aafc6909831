"""``ea-ops tune``: tune kernels for one backend and target, writing records (docs/design.md section 5).

What to tune: a preset (``--workloads``), or the shapes a model runs (``--shape B,T,H,D``, repeatable, with
``--orders``, ``--dtypes``, ``--kernels`` and ``--causal``/``--non-causal``), or the calls a program logged
with ``EA_OPS_LOG_CALLS=FILE`` (``--from-log FILE``). Each kernel gets at most ``--kernel-budget`` seconds
(TVM, default 120); ``--time-budget`` caps the whole run.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ea_ops import records
from ea_ops.outdir import OutDirError, prepare_out_dir

_RUNNERS = {"tvm": "schedules.tvm.cli_tune", "triton": "schedules.triton.cli_tune"}
KERNELS = ("forward", "backward", "step")
DEFAULT_KERNELS = "forward,backward"
DEFAULT_ORDERS = "6"
DEFAULT_DTYPES = "float32"
# options that say which workloads to tune, other than a preset: TVM only
_SHAPE_OPTIONS = ("shape", "from_log", "dtypes", "kernels", "causal", "kernel_budget")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ea-ops tune", description=__doc__)
    ap.add_argument("--backend", choices=sorted(_RUNNERS), required=True)
    ap.add_argument("--target", default=None,
                    help="cpu | cuda:sm_80 | cuda:sm_90 ... (default: this machine's device)")
    ap.add_argument("--orders", default=None, help=f"comma-separated even orders, e.g. 2,4,6 (default "
                                                   f"{DEFAULT_ORDERS}; with --from-log: keep only these)")
    ap.add_argument("--trials", type=int, default=None, help="measurement trials per kernel")
    ap.add_argument("--time-budget", type=float, default=None, help="stop the whole run after this many seconds")
    ap.add_argument("--kernel-budget", type=float, default=None,
                    help="seconds per kernel, measuring included (tvm; default 120)")
    ap.add_argument("--workloads", default=None, help="workload preset name (default: default)")
    ap.add_argument("--shape", action="append", default=None, metavar="B,T,H,D",
                    help="tune this shape (repeatable; tvm)")
    ap.add_argument("--from-log", default=None, metavar="FILE",
                    help="tune the calls logged with EA_OPS_LOG_CALLS=FILE (tvm, CPU calls)")
    ap.add_argument("--dtypes", default=None, help=f"comma-separated: float32,bfloat16,float16 (default "
                                                   f"{DEFAULT_DTYPES}; with --from-log: keep only these)")
    ap.add_argument("--kernels", default=None, help=f"comma-separated: forward,backward,step (default "
                                                    f"{DEFAULT_KERNELS}; with --from-log: keep only these)")
    causal = ap.add_mutually_exclusive_group()
    causal.add_argument("--causal", dest="causal", action="store_const", const="causal", default=None,
                        help="causal forward/backward only (default: both)")
    causal.add_argument("--non-causal", dest="causal", action="store_const", const="non-causal",
                        help="non-causal forward/backward only (default: both)")
    ap.add_argument("--out", default=None, help="records root (default: the user cache)")
    ap.add_argument("--rpc-tracker", default=None, help="HOST:PORT of a TVM RPC tracker (tvm only)")
    ap.add_argument("--rpc-key", default=None, help="device key registered with the tracker (tvm only)")
    ap.add_argument("--json", action="store_true", help="print a JSON summary")
    return ap


def _items(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def parse_orders(text: str) -> list[int]:
    try:
        orders = [int(x) for x in _items(text)]
    except ValueError:
        raise SystemExit(f"--orders must be comma-separated even ints, got {text!r}") from None
    if not orders or any(o < 0 or o % 2 for o in orders):
        raise SystemExit(f"--orders must be comma-separated non-negative even ints, got {text!r}")
    return orders


def parse_dtypes(text: str) -> list[str]:
    """``float32,bfloat16`` -> names the compiled kernels take (``backends.common.KERNEL_DTYPES``)."""
    from ea_ops.backends.common import KERNEL_DTYPES

    allowed = tuple(KERNEL_DTYPES.values())
    dtypes = _items(text)
    bad = [d for d in dtypes if d not in allowed]
    if bad or not dtypes:
        raise SystemExit(f"--dtypes must be among {','.join(allowed)}, got {text!r}")
    return list(dict.fromkeys(dtypes))


def parse_kernels(text: str) -> list[str]:
    kernels = _items(text)
    bad = [k for k in kernels if k not in KERNELS]
    if bad or not kernels:
        raise SystemExit(f"--kernels must be among {','.join(KERNELS)}, got {text!r}")
    return list(dict.fromkeys(kernels))


_MAX_ELEMS = 2**31 - 1  # the TVM kernels index with int32


def parse_shape(text: str) -> tuple[int, int, int, int]:
    """``"1,4096,8,64"`` -> ``(B, T, H, D)``, each >= 1, with at most 2^31 - 1 elements."""
    from .bench.workloads import parse_shape as parse_dims

    try:
        B, T, H, D = parse_dims(text)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    if B * T * H * D > _MAX_ELEMS:
        raise SystemExit(f"--shape {text}: {B * T * H * D} elements, above 2^31 - 1 (the kernels index with int32)")
    return B, T, H, D


def _check_budget(value: float | None, option: str) -> None:
    if value is not None and not value > 0:  # also refuses NaN
        raise SystemExit(f"{option} must be > 0 seconds, got {value}")


def main(argv: list[str]) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        _check_args(args)
    except SystemExit as exc:  # a bad value: argparse's usage line and exit status 2, naming the option
        if isinstance(exc.code, str):
            ap.error(exc.code)
        raise
    try:  # the records root, before any measuring (the runners write under <root>/<backend>/<fingerprint>/)
        prepare_out_dir(args.out or records.user_cache_dir(),
                        option="--out" if args.out else "the user cache (EA_OPS_CACHE_DIR)")
    except OutDirError as exc:
        print(f"ea-ops tune: {exc}", file=sys.stderr)
        return 2
    return int(importlib.import_module(_RUNNERS[args.backend]).run(args) or 0)


def _check_args(args: argparse.Namespace) -> None:
    """Validate and normalise the options in place (SystemExit naming the option)."""
    given = {name for name in _SHAPE_OPTIONS if getattr(args, name) is not None}
    if args.backend != "tvm" and given:
        opts = ", ".join("--" + n.replace("_", "-") for n in sorted(given))
        raise SystemExit(f"{opts}: for --backend tvm only (triton tunes presets: --workloads)")
    if args.workloads is not None and (args.shape or args.from_log):
        raise SystemExit("--workloads names a preset; it does not go with --shape or --from-log")
    if (given & {"dtypes", "kernels", "causal"}) and not (args.shape or args.from_log):
        raise SystemExit("--dtypes, --kernels, --causal/--non-causal choose what --shape or --from-log tunes")
    args.shapes = [parse_shape(s) for s in args.shape or []]
    args.orders_given = args.orders is not None
    args.orders = parse_orders(args.orders if args.orders is not None else DEFAULT_ORDERS)
    args.dtypes_given, args.kernels_given = args.dtypes is not None, args.kernels is not None
    args.dtypes = parse_dtypes(args.dtypes if args.dtypes is not None else DEFAULT_DTYPES)
    args.kernels = parse_kernels(args.kernels if args.kernels is not None else DEFAULT_KERNELS)
    args.workloads = args.workloads or "default"
    if args.trials is not None and args.trials < 1:
        raise SystemExit("--trials must be >= 1")
    _check_budget(args.time_budget, "--time-budget")
    _check_budget(args.kernel_budget, "--kernel-budget")
    if args.backend != "tvm" and (args.rpc_tracker or args.rpc_key):
        raise SystemExit("--rpc-tracker/--rpc-key are for --backend tvm only")
    if bool(args.rpc_tracker) != bool(args.rpc_key):
        raise SystemExit("--rpc-tracker and --rpc-key go together")
