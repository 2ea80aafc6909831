"""Peak memory of one forward (and backward) call, beyond its inputs.

CPU: measured in a fresh process (``python -m schedules.bench.memory``) as the rise of the resident set's
high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``) over the resident set once the inputs
exist. CUDA: ``torch.cuda.max_memory_allocated`` over the allocation before the call, in this process.
The output, saved activations and gradients all count; the inputs and the output cotangent do not. A small
call runs first, so one-time costs (libraries, thread pools) are not counted, and the probe process sets
``MALLOC_MMAP_THRESHOLD_`` so glibc maps large blocks and returns them when freed (no heap high-water marks
left over from earlier, differently sized tensors).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import subprocess
import sys
from dataclasses import asdict, replace

import torch

from .workloads import Workload

KINDS = ("ea", "sdpa-math", "sdpa-default")


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.M).group(1)) * 1024


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _call(kind: str, w: Workload, backend: str):
    """A zero-argument call of ``kind`` on fresh inputs, and the inputs' size in bytes."""
    import torch.nn.functional as F

    import ea_ops

    dev, dt = torch.device(w.device), w.torch_dtype
    gen = torch.Generator(device=dev).manual_seed(0)
    grad = w.mode == "fwdbwd"
    ea = kind == "ea"
    shape = (w.B, w.T, w.H, w.D) if ea else (w.B, w.H, w.T, w.D)
    q, k, v = (torch.randn(*shape, generator=gen, device=dev).mul_(s).to(dt).requires_grad_(grad)
               for s in (0.5, 0.5, 1.0))
    g = torch.randn(*shape, generator=gen, device=dev).to(dt) if grad else None
    nbytes = sum(t.numel() * t.element_size() for t in (q, k, v) + ((g,) if grad else ()))

    def run():
        if ea:
            o, _ = ea_ops.ea_attention(q, k, v, order=w.order, backend=backend)
        elif kind == "sdpa-math":
            from torch.nn.attention import SDPBackend, sdpa_kernel

            with sdpa_kernel(SDPBackend.MATH):
                o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                if grad:
                    return torch.autograd.grad(o, (q, k, v), g)
        else:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        if grad:
            return torch.autograd.grad(o, (q, k, v), g)
        return o

    return run, nbytes


def measure_here(kind: str, w: Workload, backend: str = "torch") -> dict:
    """Measure in this process (use ``peak_memory`` for CPU, which starts a fresh one)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    # A small call first, so one-time costs (libraries, thread pools, the autograd engine) are not counted.
    _call(kind, replace(w, T=min(w.T, 128)), backend)[0]()
    run, input_bytes = _call(kind, w, backend)
    gc.collect()
    if w.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = run()
        torch.cuda.synchronize()
        peak, how = torch.cuda.max_memory_allocated() - base, "torch.cuda.max_memory_allocated"
    else:
        exact = _reset_hwm()
        base = _status_bytes("VmRSS")
        out = run()
        peak = _status_bytes("VmHWM") - base
        how = "VmHWM - VmRSS (reset by clear_refs)" if exact else "VmHWM - VmRSS (HWM not resettable: approx.)"
    del out
    return {"kind": kind, "backend": backend if kind == "ea" else None, "workload": asdict(w),
            "peak_bytes": max(0, peak), "input_bytes": input_bytes, "how": how}


def peak_memory(kind: str, w: Workload, *, backend: str = "torch", threads: int = 2, timeout: float = 900) -> dict:
    """Peak bytes of one call of ``kind`` ("ea", "sdpa-math", "sdpa-default") beyond its inputs."""
    if w.device.startswith("cuda"):
        return measure_here(kind, w, backend)
    cmd = [sys.executable, "-m", "schedules.bench.memory", "--kind", kind, "--backend", backend,
           "--workload", json.dumps(asdict(w)), "--threads", str(threads)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MALLOC_MMAP_THRESHOLD_=str(1 << 20))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe {kind} {w} failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m schedules.bench.memory", description=__doc__)
    ap.add_argument("--kind", choices=KINDS, required=True)
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--workload", required=True, help="JSON of a Workload")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    w = Workload(**json.loads(args.workload))
    print(json.dumps(measure_here(args.kind, w, args.backend)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
