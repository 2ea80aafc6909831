#!/usr/bin/env python3
"""How often the Triton forward's block form rescans (``ea_fwd_scan``, docs/triton_builds.md), by emulation.

    .venv/bin/python scripts/triton_block_rescans.py [--T 4096] [--lanes 1024] [--seed 0]

The kernel scans an item's first ``ROWS`` rows exactly, then full blocks of ``ROWS`` rows against each block's
minimum of ``y^2``; a lane whose running minimum falls by more than ``DROP_MAX`` inside one block (from the
block's first row to its minimum) makes its program scan the item again in the exact per-row form. This applies
that rule to keys ``y`` (scaled, ``sqrt(s) k``) drawn from a few distributions, one whole-sequence item of
``T`` rows per lane, and prints the share of lanes that would rescan, and of 128-lane programs (4 warps) if the
lanes were independent. Nothing here runs a kernel: it counts what the rule in the kernel decides.
"""

from __future__ import annotations

import argparse

import torch

from ea_ops.backends.triton.cuda_kernels import DROP_MAX as _DROP_MAX
from ea_ops.backends.triton.launch import ROWS

DROP_MAX = float(_DROP_MAX.value)
LANES_PER_PROGRAM = 128


def rescans(y: torch.Tensor, rows: int = ROWS, drop_max: float = DROP_MAX) -> torch.Tensor:
    """``y [T, lanes]`` -> bool ``[lanes]``: the lanes whose item the kernel would scan again."""
    y2 = y.double() ** 2
    T = y2.shape[0]
    m = torch.cummin(y2, 0).values  # the running minimum after each row
    bad = torch.zeros(y2.shape[1], dtype=torch.bool)
    for s in range(rows, rows + (T - rows) // rows * rows, rows):  # the full blocks after the first
        first = torch.minimum(m[s - 1], y2[s])  # the minimum after the block's first row
        bad |= (first - m[s + rows - 1]) > drop_max
    return bad


DISTRIBUTIONS = {
    "N(0,1)": lambda g, shape: torch.randn(shape, generator=g),
    "2 N(0,1)": lambda g, shape: 2 * torch.randn(shape, generator=g),
    "4 N(0,1)": lambda g, shape: 4 * torch.randn(shape, generator=g),
    "8 N(0,1)": lambda g, shape: 8 * torch.randn(shape, generator=g),
    "11.5 + 0.5 N(0,1)": lambda g, shape: 11.5 + 0.5 * torch.randn(shape, generator=g),  # tests' large keys
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, default=4096)
    ap.add_argument("--lanes", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    g = torch.Generator().manual_seed(args.seed)
    print(f"| keys y | lanes that rescan (T = {args.T}) | 128-lane programs (independent lanes) |")
    print("|---|---:|---:|")
    for name, draw in DISTRIBUTIONS.items():
        share = rescans(draw(g, (args.T, args.lanes))).double().mean().item()
        print(f"| {name} | {share:.4f} | {1 - (1 - share) ** LANES_PER_PROGRAM:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
