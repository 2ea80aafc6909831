"""Inputs, calls and timers for tuning the Triton kernels.

CUDA: ``triton.testing.do_bench`` (median, in ms). Triton's interpreter on CPU (``TRITON_INTERPRET=1``):
``time.perf_counter`` medians; interpreter timings say nothing about a GPU and exist so that the tuner
can be exercised end to end without one (their records carry the ``interpreter-cpu`` fingerprint).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from ea_ops.backends.triton import launch
from ea_ops.state import EAState

from .workloads import Workload

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CUDA_TIMER = "triton.testing.do_bench(return_mode='median')"
CPU_TIMER = "time.perf_counter median (Triton interpreter)"


def timer(device: torch.device, *, rep_ms: int = 100) -> tuple[Callable[[Callable[[], object]], float], str]:
    """``(time_us(fn), description)`` for ``device``."""
    if device.type == "cuda":
        from triton.testing import do_bench

        def cuda_us(fn: Callable[[], object]) -> float:
            return 1000.0 * float(do_bench(fn, warmup=max(5, rep_ms // 4), rep=rep_ms, return_mode="median"))

        return cuda_us, CUDA_TIMER

    def cpu_us(fn: Callable[[], object]) -> float:
        fn()
        samples = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
        return 1e6 * statistics.median(samples)

    return cpu_us, CPU_TIMER


def inputs(w: Workload, order: int, device: torch.device, *, seed: int = 0) -> dict:
    """Random ``q, k, v, g`` ``[B, T, H, D]`` (channel scale 0.5, as typical data), an initial state and
    one decoding token ``[B, H, D]``."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    dt = _DTYPES[w.dtype]

    def rnd(*shape, s=1.0):
        return (torch.randn(*shape, generator=gen) * s).to(device=device, dtype=dt)

    shape = (w.B, w.T, w.H, w.D)
    st = EAState.empty(w.B, w.H, w.D, order, device=device)
    return {"q": rnd(*shape, s=0.5), "k": rnd(*shape, s=0.5), "v": rnd(*shape), "g": rnd(*shape),
            "state": (st.S, st.Z, st.m), "tok": [rnd(w.B, w.H, w.D, s=0.5) for _ in range(3)]}


def call(kernel: str, causal: bool, order: int, data: dict, cfg: dict) -> Callable[[], torch.Tensor]:
    """A no-argument call of one kernel with configuration ``cfg``; returns its main output."""
    q, k, v, g = data["q"], data["k"], data["v"], data["g"]
    state = data["state"] if causal else None
    if kernel == "forward":
        return lambda: launch.forward(q, k, v, state, order=order, causal=causal, scale=1.0, segments=None,
                                      want_state=False, config=cfg)[0]
    if kernel == "backward":
        return lambda: torch.cat([x.flatten() for x in launch.backward(
            q, k, v, g, state, order=order, causal=causal, scale=1.0, segments=None, config=cfg)])
    if kernel == "step":
        a, b, c = data["tok"]
        return lambda: launch.step(a, b, c, data["state"], order=order, scale=1.0, config=cfg)[0]
    raise ValueError(f"kernel must be forward, backward or step, got {kernel!r}")
