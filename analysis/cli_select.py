"""``ea-ops select-order``: the smallest even Taylor order meeting an error budget, with the evidence.

    ea-ops select-order --budget 1e-3 (--scale A | --sigma S | --sample FILE.pt) [--dtype float32] [--json]

Exit status: 0 with a choice, 1 when no order up to the cap meets the budget (the message says why and
which channel scale would work), 2 for bad arguments or an unreadable sample.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from .rounding import DTYPES
from .select import BudgetUnreachable, select_order


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ea-ops select-order",
        description="Smallest even Taylor order whose error against exact EA (relative to the spread of v) "
                    "meets the budget in the given dtype.")
    p.add_argument("--budget", type=_positive, required=True, help="error budget, relative to max v - min v")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--scale", type=_positive, metavar="A", help="worst case: every |q|, |k| <= A (proven bound)")
    mode.add_argument("--sigma", type=_positive, metavar="S", help="q, k ~ N(0, S^2): Monte Carlo at --confidence")
    mode.add_argument("--sample", metavar="FILE.pt",
                      help="your data: a .pt file with a dict {'q', 'k'[, 'v']} of [B, T, H, D] tensors, or one "
                           "tensor [2|3, B, T, H, D]; read with torch.load(weights_only=True)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="dtype the kernel runs in")
    p.add_argument("--confidence", type=_positive, default=0.99, help="quantile level for --sigma (default 0.99)")
    p.add_argument("--ea-scale", type=_positive, default=1.0, help="the 'scale' you pass to ea_attention")
    p.add_argument("--max-order", type=int, default=32, help="largest even order to consider (default 32)")
    p.add_argument("--seq-len", type=int, default=256, help="sequence length for --sigma (default 256)")
    p.add_argument("--non-causal", action="store_true", help="evaluate non-causal EA (default causal)")
    p.add_argument("--json", action="store_true", help="print one JSON object (order, predicted_error, ...)")
    return p


def _human(choice) -> str:
    ev = choice.evidence
    lines = [f"order {choice.order}: predicted error {choice.predicted_error:.3g} of the spread of v "
             f"({choice.method}, {ev.get('dtype')})"]
    for row in ev.get("per_order", []):
        extra = f", max seen {row['max_seen']:.2g}" if "max_seen" in row else ""
        if row["order"] > choice.order:
            break
        lines.append(f"  order {row['order']:>2}: predicted {row['predicted_error']:.3g} "
                     f"(approximation {row['approximation']:.2g}, rounding {row['rounding']:.2g}{extra})")
    if "statistic" in ev:
        lines.append(f"statistic: {ev['statistic']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    mode = {"scale": args.scale, "sigma": args.sigma, "sample": args.sample}
    try:
        choice = select_order(args.budget, dtype=args.dtype, confidence=args.confidence, ea_scale=args.ea_scale,
                              max_order=args.max_order, seq_len=args.seq_len, causal=not args.non_causal, **mode)
    except BudgetUnreachable as exc:
        if args.json:
            print(json.dumps(exc.to_json(), default=float))
        else:
            print(f"ea-ops select-order: {exc}", file=sys.stderr)
        return 1
    except (ValueError, TypeError) as exc:
        print(f"ea-ops select-order: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(choice.to_json(), default=float))
    else:
        print(_human(choice))
    return 0


if __name__ == "__main__":
    sys.exit(main())
