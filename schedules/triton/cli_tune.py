"""``ea-ops tune --backend triton``: measure the curated configurations and write records.

For every workload of the preset, order and kernel (forward and backward, causal and not; the step), the
candidates of ``schedules.triton.configs`` are run and checked against the default configuration's output,
then timed (``triton.testing.do_bench`` on CUDA); the fastest becomes a record (``ea_ops.records`` schema v1)
in ``<out or user cache>/triton/<fingerprint>/records.json``, keyed by GPU name, compute capability, Triton
version and kernel source hash (the fingerprint) and by ``H*D`` and coarse buckets (never T itself).
Resumable: slots already recorded in that folder are skipped. ``--time-budget`` stops between
measurements; ``--trials`` caps the candidates per slot.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

import ea_ops
from ea_ops import records
from ea_ops.backends.triton import configs as runtime
from ea_ops.backends.triton.target import device_description, fingerprint_of, interpreting
from ea_ops.progress import progress
from ea_ops.testing import rel_err

from . import configs, measure
from .workloads import Workload, preset

BACKEND = "triton"
# A candidate whose output differs from the default configuration's by more than this is broken.
_CHECK_TOL = {"float32": 1e-4, "float16": 4e-3, "bfloat16": 3e-2}


def local_device(target: str | None) -> torch.device:
    """The device to tune on; Triton measures on this machine only (no remote runner)."""
    if target in (None, "cuda") or (target or "").startswith("cuda:"):
        if torch.cuda.is_available():
            dev = torch.device("cuda", torch.cuda.current_device())
            if target and target.startswith("cuda:"):
                from .aot import parse_target

                want = parse_target(target)
                major, minor = torch.cuda.get_device_capability(dev)
                if want != major * 10 + minor:
                    raise SystemExit(f"--target {target}: this machine's GPU is sm_{major}{minor}; Triton tunes "
                                     "on the local GPU only")
            return dev
        if target is not None:
            raise SystemExit(f"--target {target}: no CUDA device here")
    if target in (None, "cpu", "interpreter") and interpreting():
        return torch.device("cpu")
    raise SystemExit("ea-ops tune --backend triton needs a CUDA device, or TRITON_INTERPRET=1 with --target cpu "
                     "(the interpreter: exercises the tuner, its timings say nothing about a GPU)")


def versions() -> dict:
    from ea_ops.backends.triton.target import triton_version

    return {"torch": torch.__version__, "triton": triton_version(), "ea_ops": ea_ops.__version__}


def slots(ws: list[Workload], orders: list[int]) -> list[tuple[Workload, int, str, bool]]:
    out = []
    for w in ws:
        for order in orders:
            for kernel in w.kernels:
                for causal in ((True, False) if kernel != "step" and w.noncausal else (True,)):
                    out.append((w, order, kernel, causal))
    return out


def _shape_key(w: Workload, kernel: str) -> dict:
    rows = w.B if kernel == "step" else w.B * w.T
    return runtime.workload(kernel, HD=w.H * w.D, n_seqs=w.B, rows=rows)


def tune_slot(w: Workload, order: int, kernel: str, causal: bool, dev: torch.device, *, limit: int | None,
              deadline: float | None, time_us, timer_name: str, fp: str, desc: dict) -> dict | None:
    """Measure one slot; the record of the fastest correct candidate (None if out of time)."""
    HD, rows = w.H * w.D, (w.B if kernel == "step" else w.B * w.T)
    cands = configs.candidates(kernel, causal=causal, HD=HD, n_seqs=w.B, rows=rows)
    if limit is not None:
        cands = cands[:max(1, limit)]
    data = measure.inputs(w, order, dev)
    ref = measure.call(kernel, causal, order, data, cands[0])()  # cands[0] is the default
    results: list[tuple[dict, float]] = []
    for cfg in cands:
        if deadline is not None and time.monotonic() > deadline and results:
            break
        fn = measure.call(kernel, causal, order, data, cfg)
        err = rel_err(fn(), ref)
        if err > _CHECK_TOL[w.dtype]:
            raise RuntimeError(f"config {cfg} disagrees with the default on {w.label} {kernel} "
                               f"(relative error {err:.2e}); not recording a broken kernel")
        results.append((cfg, time_us(fn)))
    if not results:
        return None
    best_cfg, best_us = min(results, key=lambda r: r[1])
    return {
        "schema_version": records.SCHEMA_VERSION, "backend": BACKEND, "fingerprint": fp, "target": desc,
        "kernel": {"name": kernel, "causal": causal, "order": order, "dtype": w.dtype},
        "workload": _shape_key(w, kernel), "config": best_cfg,
        "latency_us": {"chosen": round(best_us, 3), "default": round(results[0][1], 3)},
        "versions": versions(),
        "measured": {"shape": [w.B, w.T, w.H, w.D], "timer": timer_name,
                     "candidates": [{"config": c, "us": round(t, 3)} for c, t in results]},
    }


def _done(folder: Path, fp: str) -> list[dict]:
    return records.read_records_file(folder / records.RECORDS_FILE, backend=BACKEND, fingerprint=fp)


def run(args) -> int:
    dev = local_device(args.target)
    desc = device_description(dev)
    fp = fingerprint_of(desc)
    root = Path(args.out) if args.out else records.user_cache_dir()
    folder = root / BACKEND / records.check_name(fp, "fingerprint")
    deadline = time.monotonic() + args.time_budget if args.time_budget else None
    time_us, timer_name = measure.timer(dev)
    todo = slots(preset(args.workloads), args.orders)
    written, skipped, stopped = [], 0, False
    for w, order, kernel, causal in progress(todo, total=len(todo), desc="tune triton"):
        key = ({"name": kernel, "causal": causal, "order": order, "dtype": w.dtype}, _shape_key(w, kernel))
        if any((r["kernel"], r["workload"]) == key for r in _done(folder, fp)):
            skipped += 1
            continue
        if deadline is not None and time.monotonic() > deadline:
            stopped = True
            break
        rec = tune_slot(w, order, kernel, causal, dev, limit=args.trials, deadline=deadline, time_us=time_us,
                        timer_name=timer_name, fp=fp, desc=desc)
        if rec is None:
            stopped = True
            break
        records.add_records(folder, [rec])  # one slot at a time: an interrupted run keeps what it measured
        written.append(rec)
    summary = {"fingerprint": fp, "folder": str(folder), "written": len(written), "skipped_existing": skipped,
               "stopped_by_budget": stopped,
               "records": [{"kernel": r["kernel"], "workload": r["workload"], "config": r["config"],
                            "latency_us": r["latency_us"]} for r in written]}
    if args.json:
        print(json.dumps(summary, indent=1, sort_keys=True))
    else:
        print(f"triton records: {len(written)} written, {skipped} already there -> {folder}"
              + (" (stopped by --time-budget)" if stopped else ""))
        for r in written:
            k, lat = r["kernel"], r["latency_us"]
            print(f"  {k['name']:<8} {'causal' if k['causal'] else 'full  '} t{k['order']} {k['dtype']:<8} "
                  f"{r['workload']}  {r['config']}  {lat['chosen']:.1f} us (default {lat['default']:.1f} us)")
    return 0
