"""``ea-ops report --out DIR [--quick]``: the stability and spikiness report (Markdown, JSON, PNG).

Sweeps even orders x dtypes (float32, bfloat16, float16) x channel scales x every available backend
(:mod:`analysis.sweep`) and writes ``report.md``, ``report.json`` and PNG plots into ``DIR``
(:mod:`analysis.report` formats them).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import platform
import sys
import time
from pathlib import Path

import torch

from ea_ops.outdir import OutDirError, prepare_out_dir

from . import sweep
from .report import (
    REPORT_JSON,
    REPORT_MD,
    SPIKY,
    SPIKY_PNG,
    SPIKY_SCALES_PNG,
    WORST_CASE_PNG,
    conclusions,
    heatmap_png,
    shift_lines,
    write_markdown,
)
from .sweep import SweepConfig


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ea-ops report", description=__doc__.splitlines()[0].strip("`"))
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--quick", action="store_true", help="small sweep (about a minute on 2 cores)")
    p.add_argument("--preset", choices=sorted(sweep.PRESETS), help=argparse.SUPPRESS)  # "tiny" for the tests
    p.add_argument("--backends", help="comma-separated subset of backends (default: every available one)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: the sweep is many small ops; more threads help little and "
                        "oversubscribe shared machines)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def output_names(cfg: SweepConfig) -> list[str]:
    """Every file ``_run`` writes into ``--out``."""
    return [*map(heatmap_png, cfg.dtypes), SPIKY_PNG, SPIKY_SCALES_PNG, WORST_CASE_PNG, REPORT_MD, REPORT_JSON]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    preset = args.preset or ("quick" if args.quick else "full")
    cfg = dataclasses.replace(sweep.PRESETS[preset], seed=args.seed)
    if args.threads < 1:
        print("ea-ops report: --threads must be >= 1", file=sys.stderr)
        return 2
    try:
        out = prepare_out_dir(args.out, output_names(cfg))
    except OutDirError as exc:
        print(f"ea-ops report: {exc}", file=sys.stderr)
        return 2
    old_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run(args, preset, cfg, out)
    finally:
        torch.set_num_threads(old_threads)


def _run(args, preset: str, cfg: SweepConfig, out: Path) -> int:
    from ea_ops.records import atomic_write_json

    from . import plots
    from .facts import all_facts
    from .spikiness import spikiness

    t0 = time.perf_counter()
    wanted = [b.strip() for b in args.backends.split(",")] if args.backends else None
    backends, skipped = sweep.discover_backends(cfg.dtypes, wanted)
    if not backends:
        print(f"ea-ops report: no backend runs on CPU tensors here: {skipped}", file=sys.stderr)
        return 2
    print(f"ea-ops report ({preset}): backends {backends}; {len(cfg.dtypes)} dtypes x {len(cfg.scales)} scales x "
          f"{len(cfg.orders)} orders", file=sys.stderr)
    facts = all_facts()
    cells = sweep.run_sweep(cfg, backends=backends, show_progress=not args.no_progress)
    shift_cells = sweep.shift_sweep(cfg, backends=backends)
    sp_scales, sp_orders = SPIKY[preset]
    q, k, _ = sweep.inputs(cfg)
    spk = spikiness(q[:, : min(cfg.T, 256), :1, : min(cfg.dim, 16)], k[:, : min(cfg.T, 256), :1, : min(cfg.dim, 16)],
                    scales=sp_scales, orders=sp_orders)
    pngs = []
    for dt in cfg.dtypes:
        panels = [("approximation: EA-t vs exact EA (float64)", [c for c in cells if c["kernel"] == "reference"
                                                                  and c["dtype"] == dt], "approximation")]
        for b in backends:
            mine = [c for c in cells if c["kernel"] == b and c["dtype"] == dt]
            panels.append((f"total: {b} kernel vs exact EA", mine, "total"))
            panels.append((f"rounding: {b} kernel vs EA-t (float64)", mine, "rounding"))
        unst = [c for c in cells if c["kernel"] == f"unstabilised-{dt}" and c["dtype"] == dt]
        if unst:
            panels.append((f"total: unstabilised, {dt} sums", unst, "total"))
        plots.heatmap(out / heatmap_png(dt), dt, panels, cfg.orders, cfg.scales)
        pngs.append(heatmap_png(dt))
    plots.spikiness_plots(out / SPIKY_PNG, out / SPIKY_SCALES_PNG, spk)
    plots.worst_case_plot(out / WORST_CASE_PNG, [0, 2, 4, 6, 8, 12, 16, 24, 32])
    pngs += [SPIKY_PNG, SPIKY_SCALES_PNG, WORST_CASE_PNG]
    seconds = time.perf_counter() - t0
    meta = {"command": "ea-ops report " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["report"] else
                                                    [f"--out {out}"] + (["--quick"] if preset == "quick" else [])),
            "preset": preset, "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": f"{platform.machine()} {platform.processor() or platform.system()}", "torch": torch.__version__,
            "threads": torch.get_num_threads(), "seconds": seconds}
    write_markdown(out / REPORT_MD, meta, cfg, cells, backends, skipped, facts, spk, pngs, shift_cells)
    spk_json = {k: v for k, v in spk.items() if k not in ("samples",)}
    atomic_write_json(out / REPORT_JSON, {
        "schema": "ea-ops-report/1", "meta": meta, "config": sweep.config_dict(cfg), "backends": backends,
        "skipped_backends": skipped, "facts": facts, "cells": cells, "spikiness": spk_json,
        "shift_cells": shift_cells, "conclusions": conclusions(cells, cfg, backends) + shift_lines(shift_cells, cfg)[1],
        "pngs": pngs})
    print(f"wrote {out / REPORT_MD}, {REPORT_JSON} and {len(pngs)} PNGs in {seconds:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
