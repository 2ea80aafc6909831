"""The accuracy table that ``ea_ops.nn`` reads: predicted error of EA-t as a function of the channel range.

``ea_ops`` may not import this package, so the table is data: ``ea_ops/nn/accuracy_table.json``, written by

    python -m analysis.layer_table --out ea_ops/nn/accuracy_table.json

and checked by tests/analysis/test_layer_table.py (which recomputes entries and compares). Two curves per even
order ``t`` (errors relative to the spread of ``v``, as everywhere in the suite):

- ``typical``: channel RMS ``sigma`` of ``x = sqrt(s) q`` and ``y = sqrt(s) k`` -> the distribution mode of
  :func:`analysis.select_order` (``q, k ~ N(0, sigma^2)``, ``v ~ N(0, 1)``, float32 torch kernel against exact EA
  in float64, ``T = SEQ_LEN``): a 95% upper confidence bound on the ``CONFIDENCE`` quantile of the per-position
  error. This is what the layer's ``scale="auto"`` and its accuracy tracking use.
- ``worst_case``: ``Z = 2 max|x| max|y|`` -> the proven bound :func:`analysis.worst_case_error` (every input
  whose channels stay within those maxima), which the tracking reports beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch

from .bounds import worst_case_error
from .select import _measure, _upper_quantile

ORDERS = [2, 4, 6, 8, 10, 12, 16]
# channel RMS grid: 2^(k/4), k = -20..4 (0.031 .. 2.0)
SIGMAS = [round(2.0 ** (k / 4), 6) for k in range(-20, 5)]
# worst-case grid: Z = 2 a b from 1e-3 to 63, 20 points a decade (the layer's scale="auto" for bounded channels
# takes the largest grid point meeting the budget: at most 12% below the exact Z)
ZS = [round(10.0 ** (k / 20), 8) for k in range(-60, 37)]
SEQ_LEN = 256
CHANNELS = 2000  # ceil(20 / (1 - CONFIDENCE)): the select_order default for this confidence
ROWS = 16
CONFIDENCE = 0.99
SEED = 0
SCHEMA_VERSION = 1


def typical_error(order: int, sigma: float, *, seq_len: int = SEQ_LEN, channels: int = CHANNELS,
                  rows: int = ROWS, confidence: float = CONFIDENCE, seed: int = SEED) -> float:
    """95% UCB on the ``confidence`` quantile of ``|EA-t - EA| / spread(v)`` for ``q, k ~ N(0, sigma^2)``, float32."""
    g = torch.Generator().manual_seed(seed)
    shape = (channels, seq_len, 1, 1)
    q = torch.randn(shape, generator=g, dtype=torch.float64) * sigma
    k = torch.randn(shape, generator=g, dtype=torch.float64) * sigma
    v = torch.randn(shape, generator=g, dtype=torch.float64)
    res = _measure(q, k, v, dtype=torch.float32, ea_scale=1.0, orders=[order], causal=True, rows=rows, seed=seed,
                   backend="torch")
    return _upper_quantile(res[order]["total"], confidence)[1]


def generate(orders: list[int] = ORDERS, sigmas: list[float] = SIGMAS, zs: list[float] = ZS) -> dict[str, Any]:
    """The whole table as a JSON-ready dict (about a minute on 2 cores)."""
    typical = {}
    worst = {}
    for t in orders:
        typical[str(t)] = [typical_error(t, s) for s in sigmas]
        worst[str(t)] = [worst_case_error(t, math.sqrt(z / 2), math.sqrt(z / 2)) for z in zs]
    return {
        "schema_version": SCHEMA_VERSION,
        "generator": "python -m analysis.layer_table (analysis.layer_table.generate)",
        "error": "|EA-t - exact EA| relative to the spread of v, float32 inputs and torch kernel",
        "typical": {"sigma": list(sigmas), "seq_len": SEQ_LEN, "channels": CHANNELS, "rows": ROWS,
                    "confidence": CONFIDENCE, "seed": SEED,
                    "statistic": f"95% upper confidence bound on the {CONFIDENCE:g} quantile of the per-position "
                                 "error, q, k ~ N(0, sigma^2) (x = q, scale 1), v ~ N(0, 1)",
                    "error": typical},
        "worst_case": {"Z": list(zs), "statistic": "proven bound over |2 x y| <= Z (analysis.worst_case_error)",
                       "error": worst},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.layer_table", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("ea_ops/nn/accuracy_table.json"))
    args = p.parse_args(argv)
    table = generate()
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(table, indent=1) + "\n")
    tmp.replace(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
