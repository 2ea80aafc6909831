"""Peak memory of forward and forward+backward: EA grows linearly in T up to T = 64k, SDPA's math backend
quadratically (its default CPU/CUDA kernels are flash-style and linear in memory, quadratic in time).

Each point is measured in a fresh process (``schedules.bench.memory``): the rise of the resident set's
high-water mark over the resident set with the inputs allocated (CUDA: ``max_memory_allocated``).
"""

from __future__ import annotations

import math

import pytest
import torch

import ea_ops
from ea_ops import BackendUnavailableError, dispatch
from schedules.bench.memory import peak_memory
from schedules.bench.workloads import Workload

# B=1, H=2, D=32: 64 channels, so T = 64k stays quick for the eager reference backend; memory per token is
# what is being measured, and the trend in T does not depend on the channel count.
B, H, D = 1, 2, 32
EA_T = (16384, 32768, 65536)
SDPA_MATH_T = (512, 1024, 2048)  # at 64k its T x T matrices would need ~90 GiB here (measured trend)
SDPA_DEFAULT_T = (4096, 8192, 16384)


def slope(points: list[tuple[int, int]]) -> float:
    """Least-squares slope of log(peak) against log(T): 1 for linear growth, 2 for quadratic."""
    xs = [math.log(t) for t, _ in points]
    ys = [math.log(max(p, 1)) for _, p in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)


def curve(kind: str, ts, mode: str, device: str, backend: str = "torch") -> list[tuple[int, int]]:
    # One thread: memory does not depend on it, and a loaded 2-core machine runs one much faster.
    return [(t, peak_memory(kind, Workload(B, t, H, D, 6, "float32", mode, device), backend=backend,
                            threads=1)["peak_bytes"]) for t in ts]


def fmt(points) -> str:
    return "  ".join(f"T={t}: {p / 2**20:.1f} MiB" for t, p in points)


def ea_backends(device: str, mode: str) -> list[str]:
    """Backends that run this kind of call here (a tiny call through the public API decides)."""
    out = []
    for name, why in dispatch.available().items():
        if why is not None:
            continue
        q = torch.zeros(1, 2, 1, 4, device=device, requires_grad=mode == "fwdbwd")
        try:
            ea_ops.ea_attention(q, q, q, backend=name)
        except BackendUnavailableError:
            continue
        out.append(name)
    return out


@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
def test_peak_memory_linear_in_T(benchmark, device, summary, mode):
    def measure():
        out = {f"ea[{b}]": curve("ea", EA_T, mode, device, b) for b in ea_backends(device, mode)}
        out["sdpa-math"] = curve("sdpa-math", SDPA_MATH_T, mode, device)
        out["sdpa-default"] = curve("sdpa-default", SDPA_DEFAULT_T, mode, device)
        return out

    curves = benchmark.pedantic(measure, rounds=1, iterations=1)
    benchmark.group = "peak memory"
    input_bytes = {t: (4 if mode == "fwdbwd" else 3) * B * t * H * D * 4 for t in EA_T}
    summary.append(f"peak memory beyond the inputs, {mode}, B={B} H={H} D={D} order 6 float32 ({device}):")
    for name, pts in curves.items():
        s = slope(pts)
        benchmark.extra_info[name] = {"points": pts, "slope": s}
        summary.append(f"  {name:<14} slope {s:.2f}   {fmt(pts)}")
    for name, pts in curves.items():
        if name.startswith("ea["):
            s = slope(pts)
            assert 0.75 <= s <= 1.2, (name, s, pts)
            # and bounded by a few tensors of the input's size at every T, up to 64k
            assert all(p <= 8 * input_bytes[t] for t, p in pts), (name, pts)
    s_math = slope(curves["sdpa-math"])
    assert s_math >= 1.6, curves["sdpa-math"]
    t0, p0 = curves["sdpa-math"][-1]
    summary.append(f"  sdpa-math at T=65536 by its own T^2 growth: ~{p0 * (65536 / t0) ** 2 / 2**30:.0f} GiB")
