#!/usr/bin/env python3
"""Per-pass timings of the Triton backend on a GPU, and the decode step inside a CUDA graph (scripts/gpu_check.sh).

    python3 scripts/gpu_timings.py OUT.json [--dry-run]

Passes: every kernel launch of one call (``ea_ops.backends.triton.launch``; a pass is a kernel with its constexpr
flags), timed with CUDA events around each launch, at the goal shape T=8192 H=16 D=128 bfloat16 order 6 with
B = 1 and 8, for the causal forward and the forward+backward, default configuration. The decode step
(``ea_recurrent_step``) at B = 1, 8, 64 is captured in a CUDA graph and replayed; its time per step is the
replays' total over their count, beside the eager step. Medians of ``REPS`` calls after ``WARMUP``.
Not a correctness check (the GPU tests and the bench's gate are); nothing is asserted.
``--dry-run`` (no GPU): writes the same document with the plan and null times.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

WARMUP, REPS, GRAPH_REPLAYS = 2, 10, 200
SHAPE = {"T": 8192, "H": 16, "D": 128, "dtype": "bfloat16", "order": 6}
PASS_BATCHES = (1, 8)
DECODE_BATCHES = (1, 8, 64)


def plan() -> list[dict]:
    rows = [{"what": "passes", "mode": mode, "B": b, **SHAPE} for b in PASS_BATCHES for mode in ("fwd", "fwdbwd")]
    rows += [{"what": "decode", "B": b, **{k: SHAPE[k] for k in ("H", "D", "dtype", "order")}}
             for b in DECODE_BATCHES]
    return rows


def _flag_names() -> set[str]:
    """The constexpr flags that tell one pass of a kernel from another (``launch.LAUNCHES``)."""
    from ea_ops.backends.triton import launch

    return {name for _, flags in launch.LAUNCHES for name in flags}


class _TimedKernels:
    """Stands in for ``launch.K``: each ``kernel[grid](...)`` is wrapped in two CUDA events, logged by pass."""

    def __init__(self, module, log: list):
        self._module, self._log = module, log

    def __getattr__(self, name):
        fn = getattr(self._module, name)
        if not name.startswith("ea_"):
            return fn
        log = self._log

        class _Grid:
            def __getitem__(self, grid):
                launcher = fn[grid]

                def run(*args, **kw):
                    import torch

                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    launcher(*args, **kw)
                    end.record()
                    flags = "".join(f"-{k.lower()}{int(kw[k])}" for k in sorted(kw) if k in _flag_names())
                    log.append((name[3:] + flags, start, end))

                return run

        return _Grid()


def _passes(mode: str, B: int) -> dict:
    import torch

    import ea_ops
    from ea_ops.backends.triton import launch

    dt = getattr(torch, SHAPE["dtype"])
    g = torch.Generator(device="cuda").manual_seed(B)
    shape = (B, SHAPE["T"], SHAPE["H"], SHAPE["D"])
    q, k, v, go = (torch.randn(shape, generator=g, device="cuda", dtype=dt) * s for s in (0.7, 0.7, 1.0, 1.0))
    log: list = []
    real = launch.K
    launch.K = _TimedKernels(real, log)
    per_pass: dict[str, list[float]] = {}
    totals = []
    try:
        for rep in range(WARMUP + REPS):
            log.clear()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            ins = [t.detach().requires_grad_(mode == "fwdbwd") for t in (q, k, v)]
            start.record()
            o, _ = ea_ops.ea_attention(*ins, order=SHAPE["order"], backend="triton")
            if mode == "fwdbwd":
                torch.autograd.grad(o, ins, go)
            end.record()
            torch.cuda.synchronize()
            if rep < WARMUP:
                continue
            totals.append(start.elapsed_time(end))
            seen: dict[str, float] = {}
            for name, s, e in log:
                seen[name] = seen.get(name, 0.0) + s.elapsed_time(e)
            for name, ms in seen.items():
                per_pass.setdefault(name, []).append(ms)
    finally:
        launch.K = real
    return {"total_ms": statistics.median(totals),
            "passes_ms": {n: statistics.median(ts) for n, ts in per_pass.items()}}


def _decode(B: int) -> dict:
    import torch

    import ea_ops
    from ea_ops.state import EAState

    H, D, order = SHAPE["H"], SHAPE["D"], SHAPE["order"]
    dt = getattr(torch, SHAPE["dtype"])
    g = torch.Generator(device="cuda").manual_seed(100 + B)
    q, k, v = (torch.randn((B, H, D), generator=g, device="cuda", dtype=dt) for _ in range(3))
    st = EAState.empty(B, H, D, order, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            ea_ops.ea_recurrent_step(q, k, v, st, order=order, backend="triton")
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ea_ops.ea_recurrent_step(q, k, v, st, order=order, backend="triton")
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    graph.replay()
    start.record()
    for _ in range(GRAPH_REPLAYS):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    in_graph = start.elapsed_time(end) * 1e3 / GRAPH_REPLAYS
    eager = []
    for _ in range(REPS):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        ea_ops.ea_recurrent_step(q, k, v, st, order=order, backend="triton")
        torch.cuda.synchronize()
        eager.append((time.perf_counter() - t0) * 1e6)
    return {"graph_us_per_step": in_graph, "eager_us_per_step": statistics.median(eager)}


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2) or (len(argv) == 2 and argv[1] != "--dry-run"):
        print("usage: gpu_timings.py OUT.json [--dry-run]", file=sys.stderr)
        return 2
    out, dry = Path(argv[0]), len(argv) == 2
    doc = {"dry_run": dry, "warmup": WARMUP, "reps": REPS, "graph_replays": GRAPH_REPLAYS, "rows": []}

    def write() -> None:  # after each row: a time-out keeps what finished
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        tmp.replace(out)

    for row in plan():
        if dry:
            row.update(result=None)
        else:
            row.update(result=_passes(row["mode"], row["B"]) if row["what"] == "passes" else _decode(row["B"]))
        doc["rows"].append(row)
        write()
        print(json.dumps(row))
    write()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
