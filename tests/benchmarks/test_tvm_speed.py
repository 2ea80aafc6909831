"""pytest-benchmark for the TVM backend at issue 4's shape (B=1, T=4096, H=8, D=64, order 6, float32).

Not a timed test: it measures, side by side in one process, and asserts nothing about speed. Run with
``make bench`` or ``pytest tests/benchmarks/test_tvm_speed.py --benchmark-only``; ``EA_TVM_BENCH_T``
shortens T. The ratios themselves: ``python scripts/tvm_speed.py``.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

pytest.importorskip("tvm")
pytest.importorskip("pytest_benchmark")

THREADS = 2
os.environ.setdefault("TVM_NUM_THREADS", str(THREADS))

from ea_ops import torch_backend as tb  # noqa: E402
from ea_ops.features import features  # noqa: E402
from ea_ops.state import EAState  # noqa: E402
from ea_ops.tvm import build  # noqa: E402
from ea_ops.tvm.schedule import default_cpu_config  # noqa: E402

B, T, H, D, ORDER = 1, int(os.environ.get("EA_TVM_BENCH_T", 4096)), 8, 64, 6


@pytest.fixture(scope="module")
def data():
    torch.set_num_threads(THREADS)
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(B, T, H, D, generator=g) * 0.5 for _ in range(4))


def _fwd(comp, q, k, v):
    st = EAState.empty(B, H, D, ORDER)
    o = torch.empty_like(q)
    return lambda: comp.fn(q, k, v, o, st.S.clone(), st.Z.clone(), st.m.clone(), 1.0)


def _bwd(comp, q, k, v, g):
    st = EAState.empty(B, H, D, ORDER)

    def run():
        scratch = [torch.empty(B, T, H, D) for _ in range(3)]
        U = torch.zeros(B, H, ORDER + 1, D)
        grads = [torch.empty_like(q) for _ in range(3)]
        comp.fn(q, k, v, g, st.S.clone(), st.Z.clone(), st.m.clone(), *scratch, U, U.clone(),
                torch.full((B, H, D), -math.inf), *grads, 1.0)
    return run


@pytest.mark.benchmark(group="tvm-forward")
@pytest.mark.parametrize("which", ["tuned", "default"])
def test_tvm_forward(benchmark, data, which):
    cfg = default_cpu_config("forward", H, D) if which == "default" else None
    benchmark(_fwd(build.kernel_for("forward", True, ORDER, "float32", H, D, T, config=cfg), *data[:3]))


@pytest.mark.benchmark(group="tvm-forward")
def test_eager_cumsum_forward(benchmark, data):
    q, k, v, _ = data

    def run():
        kf = features(k, ORDER) * torch.exp(-k * k)[..., None]
        qf = features(q, ORDER)
        return (qf * torch.cumsum(kf * v[..., None], 1)).sum(-1) / (qf * torch.cumsum(kf, 1)).sum(-1)
    benchmark(run)


@pytest.mark.benchmark(group="tvm-forward")
def test_copy_of_qkvo_bytes(benchmark):
    src = torch.empty(4 * B * T * H * D)
    dst = torch.empty_like(src)
    benchmark(dst.copy_, src)


@pytest.mark.benchmark(group="tvm-forward")
def test_torch_backend_forward(benchmark, data):
    q, k, v, _ = data
    benchmark.pedantic(tb.attention, args=(q, k, v), kwargs=dict(
        order=ORDER, causal=True, scale=1.0, initial_state=None, output_final_state=False, cu_seqlens=None),
        rounds=3, iterations=1)


@pytest.mark.benchmark(group="tvm-backward")
@pytest.mark.parametrize("which", ["tuned", "default"])
def test_tvm_backward(benchmark, data, which):
    cfg = default_cpu_config("backward", H, D) if which == "default" else None
    benchmark(_bwd(build.kernel_for("backward", True, ORDER, "float32", H, D, T, config=cfg), *data))


@pytest.mark.benchmark(group="tvm-backward")
def test_autograd_through_eager_cumsum(benchmark, data):
    q, k, v, g = data
    qc, kc, vc = (t.clone().requires_grad_() for t in (q, k, v))
    kf = features(kc, ORDER) * torch.exp(-kc * kc)[..., None]
    qf = features(qc, ORDER)
    o = (qf * torch.cumsum(kf * vc[..., None], 1)).sum(-1) / (qf * torch.cumsum(kf, 1)).sum(-1)
    benchmark(lambda: torch.autograd.grad(o, (qc, kc, vc), g, retain_graph=True))
