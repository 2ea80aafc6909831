"""The golden table: values computed once in mpmath and stored in ``tests/analysis/golden.json``.

The fast test suite checks the float64 code against the stored numbers (no live mpmath); a slow tier
(``pytest -m slow``) recomputes the table with mpmath and checks it still matches, as scipy.special does.

    python -m analysis.golden --out tests/analysis/golden.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from .references import MIN_DPS, dps_for, mp_attention, mp_min_taylor, mp_one_minus_r, mp_r, mp_worst_case_error

R_ORDERS = [0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32]
R_POINTS = [-30.0, -12.0, -5.0, -2.5, -1.0, -0.3, -1e-3, 0.0, 1e-3, 0.3, 1.0, 2.5, 5.0, 12.0, 30.0, 60.0]
WC_ORDERS = [0, 1, 2, 3, 4, 6, 8, 10, 12, 16, 24, 30, 32]
WC_BOUNDS = [(0.1, 0.1), (0.25, 0.25), (0.5, 0.5), (1.0, 1.0), (1.5, 1.5), (2.0, 2.0), (0.5, 2.0), (3.0, 1.0)]
# (seed, shape, scale, causal): small inputs whose exact outputs are stored for every order in ATT_ORDERS
ATT_CASES = [(0, (1, 9, 1, 2), 0.25, True), (1, (1, 9, 1, 2), 1.0, True), (2, (1, 8, 1, 2), 1.0, False),
             (3, (1, 9, 1, 2), 16.0, True), (4, (1, 7, 1, 1), 64.0, True)]
ATT_ORDERS: list[int | None] = [None, 0, 2, 6, 16, 3]


def generate() -> dict[str, Any]:
    import mpmath as mp

    out: dict[str, Any] = {"min_dps": MIN_DPS, "r": [], "min_p": [], "worst_case": [], "attention": []}
    for t in R_ORDERS:
        for z in R_POINTS:
            with mp.workdps(dps_for(abs(z))):
                r = mp_r(t, z)
                omr = mp_one_minus_r(t, z) if abs(z) < t + 8 else 1 - r
                out["r"].append({"order": t, "z": z, "r": float(r), "one_minus_r": float(omr)})
    for t in range(2, 33, 2):
        z, p = mp_min_taylor(t)
        out["min_p"].append({"order": t, "z_star": float(z), "min_P": float(p)})
    for t in WC_ORDERS:
        for a, b in WC_BOUNDS:
            w = mp_worst_case_error(t, a, b)
            out["worst_case"].append({"order": t, "a": a, "b": b, "bound": float(w)})
    for seed, shape, scale, causal in ATT_CASES:
        g = torch.Generator().manual_seed(seed)
        q, k, v = (torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(3))
        case = {"seed": seed, "shape": list(shape), "scale": scale, "causal": causal,
                "q": q.flatten().tolist(), "k": k.flatten().tolist(), "v": v.flatten().tolist(), "outputs": {}}
        for order in ATT_ORDERS:
            o = mp_attention(q, k, v, order=order, causal=causal, scale=scale)
            case["outputs"]["exact" if order is None else str(order)] = o.flatten().tolist()
        out["attention"].append(case)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.golden", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    from ea_ops.records import atomic_write_json

    atomic_write_json(Path(args.out), generate())
    return 0


if __name__ == "__main__":
    sys.exit(main())
