"""``ea-ops check``: run EA's properties on an implementation (analysis.properties.check_implementation).

    ea-ops check MODULE:FUNCTION [--step MODULE:FUNCTION] [--order t] [--non-causal] [--max-examples N] [--json]

``FUNCTION(q, k, v)`` returns ``o`` or ``(o, state)``; ``--step`` names ``step(q_t, k_t, v_t, state) -> (o_t,
state)``. The current directory is importable. One progress line per property goes to stderr.
``HYPOTHESIS_PROFILE`` names the Hypothesis settings profile to load (``ci``: Hypothesis' own). Exit status 0
when every property holds, 1 when one fails, 2 for bad arguments or a name that does not import.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable

from hypothesis import settings
from hypothesis.errors import InvalidArgument

from .properties import PROPERTIES, check_implementation
from .rounding import DTYPES


def load(target: str) -> Callable:
    """``"package.module:name"`` (``name`` may be dotted) -> the callable it names."""
    module, sep, name = target.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"expected MODULE:FUNCTION, got {target!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    obj = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{target} is a {type(obj).__name__}, not a callable")
    return obj


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ea-ops check",
                                description="Check an EA implementation against EA's properties (causality, "
                                            "agreement with float64 references, convexity, ...).")
    p.add_argument("target", metavar="MODULE:FUNCTION", help="fn(q, k, v) -> o or (o, state), [B, T, H, D]")
    p.add_argument("--step", metavar="MODULE:FUNCTION", help="step(q_t, k_t, v_t, state) -> (o_t, state)")
    p.add_argument("--order", type=int, default=6, help="the Taylor order it computes (default 6)")
    p.add_argument("--exact", action="store_true", help="it computes exact EA (no order)")
    p.add_argument("--non-causal", action="store_true", help="it is non-causal (default causal)")
    p.add_argument("--scale", type=float, default=1.0, help="the scale s it applies (default 1)")
    p.add_argument("--reference", choices=["exact", "taylor"], default="exact",
                   help="compare with exact EA (within the proven bound) or the float64 EA-t formula")
    p.add_argument("--dtype", action="append", choices=sorted(DTYPES), help="input dtype (repeat; default float32)")
    p.add_argument("--property", action="append", choices=PROPERTIES, help="run only these (repeat)")
    p.add_argument("--max-examples", type=int, help="examples per property (default: Hypothesis' profile)")
    p.add_argument("--budget", type=float, help="seconds for the whole check")
    p.add_argument("--device", default="cpu", help="device of the inputs (default cpu)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    profile = os.environ.get("HYPOTHESIS_PROFILE")
    if profile:  # as the test suite does; Hypothesis registers "default" and "ci" itself
        try:
            settings.load_profile(profile)
        except InvalidArgument:
            print(f"ea-ops check: no Hypothesis profile {profile!r} here; using the loaded one", file=sys.stderr)
    try:
        fn = load(args.target)
        step = None if args.step is None else load(args.step)
    except (ImportError, AttributeError, ValueError) as exc:
        print(f"ea-ops check: cannot load: {exc}", file=sys.stderr)
        return 2

    def progress(result):
        print(f"ea-ops check: {result.line()}", file=sys.stderr, flush=True)

    try:
        report = check_implementation(fn, order=None if args.exact else args.order, causal=not args.non_causal,
                                      dtypes=tuple(args.dtype or ["float32"]), max_examples=args.max_examples,
                                      reference=args.reference, step_fn=step, budget=args.budget, scale=args.scale,
                                      properties=args.property, device=args.device, progress=progress)
    except (ValueError, TypeError) as exc:
        print(f"ea-ops check: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_json(), default=str) if args.json else str(report))
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
