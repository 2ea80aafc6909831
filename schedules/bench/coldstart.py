"""``ea-ops bench --workload coldstart``: a fresh process's first call with an empty compiled-kernel cache
against a second process's first call with the cache the first one filled (issue 12's goal: at most a third).

Each pair gets a new empty user cache (``EA_OPS_CACHE_DIR``: only the shipped records apply, the user's own
tuned records are not seen); the cold process builds and stores the kernels, the warm one loads them. Pairs
run one after the other in one run, cold then warm, until ``--budget-s`` is spent (at least one, at most
``MAX_PAIRS``). The time is the first call's (``ea_attention``, plus its backward in ``fwdbwd``), measured in
the child after ``import torch, ea_ops``: what a user waits for on the first call of a new process.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ea_ops import dispatch
from ea_ops.errors import BackendUnavailableError
from ea_ops.outdir import prepare_out_dir
from ea_ops.records import atomic_write_json, atomic_write_text

from . import report
from .workloads import TVM_SHAPE, Workload

NAME = "coldstart"
MAX_PAIRS = 7
GOAL = 1 / 3  # the warm first call over the cold one, at most
CHILD_TIMEOUT_S = 600
ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import json, sys, time
spec = json.loads(sys.argv[1])
import torch
import ea_ops
from ea_ops.backends.tvm import build
torch.set_num_threads(spec["threads"])
g = torch.Generator().manual_seed(spec["seed"])
shape = (spec["B"], spec["T"], spec["H"], spec["D"])
dt = getattr(torch, spec["dtype"])
q, k = ((torch.randn(shape, generator=g) * 0.5).to(dt) for _ in range(2))
v = torch.randn(shape, generator=g).to(dt)
grad = spec["mode"] == "fwdbwd"
for t in (q, k, v):
    t.requires_grad_(grad)
def call():
    o = ea_ops.ea_attention(q, k, v, order=spec["order"], backend=spec["backend"])[0]
    if grad:
        o.backward(torch.ones_like(o))
dynamo_before = "torch._dynamo" in sys.modules
t0 = time.perf_counter()
call()
first = time.perf_counter() - t0
t0 = time.perf_counter()
call()
second = time.perf_counter() - t0
print(json.dumps({"first_s": first, "second_s": second, "builds": len(build.BUILD_LOG),
                  "loads": len(build.LOAD_LOG), "tvm_imported": "tvm" in sys.modules,
                  "dynamo_imported_by_first_call": not dynamo_before and "torch._dynamo" in sys.modules}))
"""


def workload(args: argparse.Namespace) -> Workload:
    B, T, H, D = TVM_SHAPE
    mode = args.mode or "fwdbwd"
    if mode not in ("fwd", "fwdbwd"):
        raise ValueError(f"--workload coldstart takes --mode fwd or fwdbwd, got --mode {mode}")
    if args.order is not None and (args.order < 0 or args.order % 2):
        raise ValueError(f"--order must be a non-negative even int, got {args.order}")
    if args.dtype is not None and args.dtype == "float64":
        raise ValueError("--workload coldstart runs a compiled backend: --dtype float32, bfloat16 or float16")
    return Workload(B, T, H, D, 6 if args.order is None else args.order, args.dtype or "float32", mode, "cpu")


def _child(spec: dict, cache: Path) -> dict:
    env = {**os.environ, "EA_OPS_CACHE_DIR": str(cache), "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    env.pop("EA_OPS_KERNEL_CACHE", None)
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], capture_output=True, text=True,
                          env=env, timeout=CHILD_TIMEOUT_S)
    if proc.returncode != 0:
        raise RuntimeError(f"the child process failed (status {proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(w: Workload, *, backend: str, threads: int, budget_s: float, seed: int,
            log=lambda msg: None) -> dict:
    """Cold/warm pairs of fresh processes: ``{"pairs": [{"cold": child, "warm": child}], ...}``."""
    spec = {**w.to_json(), "backend": backend, "threads": threads, "seed": seed}
    pairs = []
    start = time.monotonic()
    while not pairs or (len(pairs) < MAX_PAIRS and time.monotonic() - start < budget_s):
        cache = Path(tempfile.mkdtemp(prefix="ea-ops-coldstart-"))  # 0700: a folder the cache trusts
        try:
            cold = _child(spec, cache)
            warm = _child(spec, cache)
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        pairs.append({"cold": cold, "warm": warm})
        log(f"pair {len(pairs)}: cold {cold['first_s']:.3f} s ({cold['builds']} built), "
            f"warm {warm['first_s']:.3f} s ({warm['loads']} loaded)")
    cold_s = statistics.median(p["cold"]["first_s"] for p in pairs)
    warm_s = statistics.median(p["warm"]["first_s"] for p in pairs)
    ratio = warm_s / cold_s if cold_s > 0 else None
    return {"pairs": pairs, "cold_first_s": cold_s, "warm_first_s": warm_s, "ratio": ratio,
            "goal": {"text": "a second process's first call at most a third of the first process's",
                     "op": "<=", "bound": GOAL, "met": ratio is not None and ratio <= GOAL}}


def document(w: Workload, result: dict, *, backend: str, threads: int, argv: list[str]) -> dict:
    return {"schema": report.SCHEMA, "preset": NAME, "backend": backend, "argv": argv,
            "machine": report.machine("cpu", threads), "workload": w.to_json(), "complete": True, **result}


def table(doc: dict) -> str:
    w = doc["workload"]
    lines = [f"coldstart: first call of a fresh process, backend={doc['backend']}, B{w['B']} T{w['T']} H{w['H']} "
             f"D{w['D']} order {w['order']} {w['dtype']} {w['mode']}, {doc['machine'].get('threads')} threads",
             f"{'pair':>4}  {'cold s':>8}  {'built':>5}  {'warm s':>8}  {'loaded':>6}  {'warm 2nd call s':>15}"]
    for i, p in enumerate(doc["pairs"], 1):
        c, h = p["cold"], p["warm"]
        lines.append(f"{i:>4}  {c['first_s']:>8.3f}  {c['builds']:>5}  {h['first_s']:>8.3f}  {h['loads']:>6}  "
                     f"{h['second_s']:>15.4f}")
    ratio = doc["ratio"]
    g = doc["goal"]
    lines.append(f"median: cold {doc['cold_first_s']:.3f} s, warm {doc['warm_first_s']:.3f} s, warm/cold "
                 + (f"{ratio:.3f} (1/{1 / ratio:.1f})" if ratio else "n/a"))
    if any(p["warm"].get("dynamo_imported_by_first_call") for p in doc["pairs"]):
        lines.append("note: the first call imported torch._dynamo (PyTorch's custom-op dispatch), in both processes")
    lines.append(f"goal: {g['text']} ({g['op']} {g['bound']:.3f}): {'met' if g['met'] else 'NOT met'}")
    return "\n".join(lines)


def main(args: argparse.Namespace, argv: list[str], log, files: dict[str, str]) -> int:
    """``ea-ops bench --workload coldstart``: the options parsed by ``schedules.cli_bench``, which names the
    output ``files`` by kind (json, txt)."""
    try:
        w = workload(args)
        if args.shape is not None or args.peers is not None:
            raise ValueError("--workload coldstart takes no --shape or --peers")
        if args.device == "cuda":
            raise ValueError("--workload coldstart measures the CPU backends' compiled-kernel cache: --device cpu")
        if args.threads < 1 or not args.budget_s > 0:
            raise ValueError("--threads must be >= 1 and --budget-s > 0")
        backend = args.backend or "tvm"
        if args.out:
            prepare_out_dir(args.out, [files["json"], files["txt"]])
        if args.dry_run:
            plan = {"preset": NAME, "backend": backend, "workload": w.to_json(), "max_pairs": MAX_PAIRS,
                    "budget_s": args.budget_s, "goal": GOAL, "dry_run": True}
            print(json.dumps(plan, indent=1) if args.json else
                  f"coldstart plan: backend={backend} {w.label} order {w.order} {w.dtype} {w.mode}; "
                  f"cold/warm process pairs for {args.budget_s} s (1 to {MAX_PAIRS}); goal warm/cold <= {GOAL:.3f}")
            return 0
        if backend != "auto":
            dispatch.load(backend)
    except ValueError as exc:
        log(str(exc))
        return 2
    except BackendUnavailableError as exc:
        log(str(exc))
        return 2
    result = measure(w, backend=backend, threads=args.threads, budget_s=args.budget_s, seed=args.seed,
                     log=log if not args.json else (lambda msg: None))
    doc = document(w, result, backend=backend, threads=args.threads, argv=argv)
    text = table(doc)
    print(json.dumps(doc, indent=1) if args.json else text)
    if args.out:
        out = Path(args.out)
        atomic_write_json(out / files["json"], doc)
        atomic_write_text(out / files["txt"], text + "\n")
    return 0
