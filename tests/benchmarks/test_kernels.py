"""Speed of the kernels and their peers at the issues' sizes, side by side (pytest-benchmark groups).

CPU: B=1 T=4096 H=8 D=64 order 6 float32 (the TVM issue's size); CUDA: B=8 T=8192 H=16 D=128 bfloat16 (the
Triton issue's). Every EA callable is checked against the torch reference before it is timed.
"""

from __future__ import annotations

import time

import pytest
import torch

from ea_ops import BackendUnavailableError, dispatch
from schedules.bench import gate, peers
from schedules.bench.workloads import Workload

FAST_CALL_S = 0.05
SLOW_CALL_S = 5.0  # calls slower than this (the eager reference at T=4096 on a busy CPU) get one round


def workload(device: str, mode: str, T: int | None = None) -> Workload:
    if device == "cuda":
        return Workload(8, T or 8192, 16, 128, 6, "bfloat16", mode, "cuda")
    return Workload(1, T or 4096, 8, 64, 6, "float32", mode, "cpu")


def backends() -> list[str]:
    return [name for name, why in dispatch.available().items() if why is None]


def run_benchmark(benchmark, fn, w: Workload):
    """Calibrated rounds for fast calls; a few single-call rounds for slow ones (after one warm-up)."""
    fn()
    if w.device == "cuda":
        torch.cuda.synchronize()
        call = lambda: (fn(), torch.cuda.synchronize())
    else:
        call = fn
    t0 = time.perf_counter()
    call()
    est = time.perf_counter() - t0
    if est < FAST_CALL_S:
        return benchmark(call)
    return benchmark.pedantic(call, rounds=3 if est < SLOW_CALL_S else 1, iterations=1)


def check(w: Workload, x: peers.Inputs, got: tuple, what: str) -> None:
    ref_dt = gate.reference_dtype(w.B * w.T * w.H * w.D if w.mode != "step" else w.B * w.H * w.D)
    ref = peers.reference_call(w, x, ref_dt)()
    res = gate.compare(w.mode, w.dtype, got, ref, ref_dt, what)
    assert res.ok, res.message


@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
@pytest.mark.parametrize("backend", backends())
def test_kernel(benchmark, device, backend, mode):
    w = workload(device, mode)
    x = peers.make_inputs(w, with_sdpa=False)
    fn = peers.ea_call(w, x, backend)
    try:
        got = fn()
    except BackendUnavailableError as exc:
        pytest.skip(str(exc))
    if backend != "torch":  # the torch backend is the reference (checked against float64 by tests/ea_ops)
        check(w, x, got, f"{backend} backend")
    benchmark.group = f"{mode} {w.label}"
    benchmark.extra_info.update(w.to_json(), bytes=w.ea_bytes())
    run_benchmark(benchmark, fn, w)


@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
def test_compiled(benchmark, device, mode):
    w = workload(device, mode)
    x = peers.make_inputs(w, with_sdpa=False)
    fn = peers.compiled_call(w, x)
    check(w, x, fn(), "torch.compile (blocked cumsum form)")
    benchmark.group = f"{mode} {w.label}"
    benchmark.extra_info.update(w.to_json(), bytes=w.ea_bytes())
    run_benchmark(benchmark, fn, w)


@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
def test_sdpa(benchmark, device, mode):
    w = workload(device, mode)
    fn = peers.sdpa_call(w, peers.make_inputs(w))
    benchmark.group = f"{mode} {w.label}"
    benchmark.extra_info.update(w.to_json(), bytes=w.sdpa_bytes())
    run_benchmark(benchmark, fn, w)


@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
def test_copy_roofline(benchmark, device, mode):
    w = workload(device, mode)
    benchmark.group = f"{mode} {w.label}"
    benchmark.extra_info.update(w.to_json(), bytes=w.ea_bytes())
    run_benchmark(benchmark, peers.copy_call(w.ea_bytes(), w.device), w)


@pytest.mark.parametrize("ctx", [1024, 16384, 131072])
@pytest.mark.parametrize("peer", ["kernel", "sdpa"])
def test_decode_step(benchmark, device, peer, ctx):
    """One recurrent step (flat in the context) against one query over a KV cache of ``ctx`` tokens."""
    w = workload(device, "step", T=ctx)
    w = Workload(w.B, ctx, w.H, w.D, w.order, w.dtype, "step", w.device)
    x = peers.make_inputs(w, with_sdpa=peer == "sdpa")
    if peer == "kernel":
        fn = peers.ea_call(w, x, "auto")
        check(w, x, fn(), "auto backend step")
    else:
        fn = peers.sdpa_call(w, x)
    benchmark.group = f"step B{w.B} H{w.H} D{w.D} {w.dtype}"
    benchmark.extra_info.update(w.to_json(), bytes=w.ea_bytes() if peer == "kernel" else w.sdpa_bytes())
    run_benchmark(benchmark, fn, w)
