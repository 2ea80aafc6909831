"""The TVM backend on CUDA tensors (issue 17 item 3), against the torch reference, on a GPU (skipped without one;
scripts/gpu_check.sh runs this file in its ``tvm`` step). Not yet run on a GPU when written.

Kernels built in this process for the GPU's arch (TVM's CUDA code generator, then NVRTC or nvcc), outputs
NaN-poisoned: forward, backward and step against the torch backend in float64 on the same device and inputs;
NaN keys as the torch backend has them; on a side stream; against Triton on the same inputs; and a
``cuda:sm_XX`` pack built by ``ea-ops compile`` run in a process that cannot import the TVM compiler.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import ea_ops
from ea_ops.backends import common
from ea_ops.testing import rel_err

pytestmark = pytest.mark.gpu

ROOT = Path(__file__).resolve().parents[2]
DEV = "cuda"
EPS32 = torch.finfo(torch.float32).eps
# Max-norm relative error against float64 on the same rounded inputs. The CPU kernels measured at most 6.1 eps
# (tests/ea_ops/test_tvm_kernels.py); on a GPU nothing is measured yet: 256 eps leaves room for FMA contraction
# and the chunked forward's summation order. bfloat16: one rounding of the result (2^-8) plus that.
TOL = {torch.float32: 256 * EPS32, torch.bfloat16: 2**-8 + 256 * EPS32}
ORDER, H, D = 6, 4, 32


@pytest.fixture(autouse=True, scope="module")
def _tvm():
    """Each test skipped (not the module: pytest -m gpu would then run nothing and exit 5) without TVM."""
    pytest.importorskip("tvm")


@pytest.fixture(scope="module")
def can_build(_tvm):
    """Skip, saying why, where this process cannot build TVM CUDA kernels (no NVRTC or nvcc, or TVM's CUDA
    runtime not loaded: README 'Kernel packs' lists the doubts); any other error fails the tests."""
    from ea_ops.backends.tvm import build
    from ea_ops.errors import BackendUnavailableError

    try:
        build.kernel_for("forward", False, ORDER, "float32", H, D, 1, target=_arch(), channels=H * D)
    except BackendUnavailableError as exc:
        pytest.skip(f"TVM cannot build CUDA kernels in this process: {exc}")


@pytest.fixture(autouse=True)
def _poison():
    with common.poison_outputs():
        yield


def data(shape, dtype, seed=0, s=0.7):
    g = torch.Generator(device="cpu").manual_seed(seed)
    return tuple((torch.randn(shape, generator=g) * f).to(DEV, dtype) for f in (s, s, 1.0, 1.0))


def ref(q, k, v, go, *, causal, state=None, scale=1.0, cu=None):
    """The torch backend in float64 on the same device: ``o``, final state, ``dq, dk, dv`` of ``sum(go * o)``."""
    qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
    st = None if state is None else ea_ops.EAState(state.S.double(), state.Z.double(), state.m.double())
    o, fs = ea_ops.ea_attention(qd, kd, vd, order=ORDER, causal=causal, scale=scale, initial_state=st,
                                output_final_state=causal, cu_seqlens=cu, backend="torch")
    return o, fs, torch.autograd.grad(o, (qd, kd, vd), go.double())


def tvm(q, k, v, go, *, causal, state=None, scale=1.0, cu=None):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    o, fs = ea_ops.ea_attention(q, k, v, order=ORDER, causal=causal, scale=scale, initial_state=state,
                                output_final_state=causal, cu_seqlens=cu, backend="tvm")
    return o, fs, torch.autograd.grad(o, (q, k, v), go)


@pytest.mark.parametrize("dtype, causal", [(torch.float32, True), (torch.float32, False), (torch.bfloat16, True)])
@pytest.mark.usefixtures("can_build")
def test_forward_backward_against_torch(dtype, causal):
    q, k, v, go = data((2, 300, H, D), dtype, seed=1)
    st = None
    if causal:  # a handed-on state: the kernels continue from it
        p = data((2, 40, H, D), torch.float32, seed=2)
        _, st = ea_ops.ea_attention(*p[:3], order=ORDER, output_final_state=True, backend="torch")
    o, fs, grads = tvm(q, k, v, go, causal=causal, state=st, scale=0.8)
    ro, rfs, rgrads = ref(q, k, v, go, causal=causal, state=st, scale=0.8)
    assert o.device.type == DEV and o.dtype == dtype
    errs = {"o": rel_err(o, ro), **{n: rel_err(a, b) for n, a, b in zip(("dq", "dk", "dv"), grads, rgrads)}}
    if causal:
        errs.update(S=rel_err(fs.S, rfs.S), Z=rel_err(fs.Z, rfs.Z), m=rel_err(fs.m, rfs.m))
    assert all(e < TOL[dtype] for e in errs.values()), errs


@pytest.mark.usefixtures("can_build")
def test_packed_sequences_and_the_one_thread_per_channel_forward():
    """``cu_seqlens`` (a launch per sequence), and B*H*D >= 2^17 channels, where the default is the scan."""
    cu = torch.tensor([0, 70, 70, 200], device=DEV)
    q, k, v, go = data((1, 200, H, D), torch.float32, seed=3)
    o, fs, grads = tvm(q, k, v, go, causal=True, cu=cu)
    ro, rfs, rgrads = ref(q, k, v, go, causal=True, cu=cu)
    assert rel_err(o, ro) < TOL[torch.float32] and rel_err(fs.S, rfs.S) < TOL[torch.float32]
    assert all(rel_err(a, b) < TOL[torch.float32] for a, b in zip(grads, rgrads))
    q, k, v, _ = data((1024, 12, H, D), torch.float32, seed=4)
    o, _ = ea_ops.ea_attention(q, k, v, order=ORDER, backend="tvm")
    from ea_ops.backends.tvm import build

    assert build.kernel_for("forward", True, ORDER, "float32", H, D, 12, target=_arch(),
                            channels=1024 * H * D).config["variant"] == "scan"
    assert rel_err(o, ea_ops.ea_attention(q.double(), k.double(), v.double(), order=ORDER, backend="torch")[0]) \
        < TOL[torch.float32]


def _arch() -> str:
    from ea_ops.backends.tvm.cuda_device import device_arch

    return device_arch(torch.device(DEV))


@pytest.mark.usefixtures("can_build")
def test_step_and_decoder_continue_the_prefill():
    B, T0, T = 3, 50, 60
    q, k, v, _ = data((B, T, H, D), torch.float32, seed=5)
    full, _ = ea_ops.ea_attention(q.double(), k.double(), v.double(), order=ORDER, backend="torch")
    _, st = ea_ops.ea_attention(q[:, :T0], k[:, :T0], v[:, :T0], order=ORDER, output_final_state=True,
                                backend="tvm")
    outs = []
    for t in range(T0, T - 5):
        o_t, st = ea_ops.ea_recurrent_step(q[:, t], k[:, t], v[:, t], st, order=ORDER, backend="tvm")
        outs.append(o_t)
    dec = ea_ops.EADecoder(st, order=ORDER, backend="tvm")
    outs += [dec.step(q[:, t], k[:, t], v[:, t]) for t in range(T - 5, T)]
    assert rel_err(torch.stack(outs, 1), full[:, T0:]) < TOL[torch.float32]


@pytest.mark.usefixtures("can_build")
def test_nan_keys_and_far_keys_as_the_torch_backend_has_them():
    q, k, v, go = data((1, 64, 2, D), torch.float32, seed=6)
    k = k.clone()
    k[0, 10, 1, 3] = float("nan")
    o, _ = ea_ops.ea_attention(q, k, v, order=ORDER, backend="tvm")
    ro, _ = ea_ops.ea_attention(q.double(), k.double(), v.double(), order=ORDER, backend="torch")
    assert torch.equal(o.isnan(), ro.isnan())
    fin = ~ro.isnan()
    assert rel_err(o[fin], ro[fin]) < TOL[torch.float32]
    o, _ = ea_ops.ea_attention(q + 11.0, k.nan_to_num() + 11.0, v, order=ORDER, backend="tvm")  # exp(-y^2) = 0
    assert o.isfinite().all()


@pytest.mark.usefixtures("can_build")
def test_kernels_run_on_the_callers_stream():
    """Inputs written on a side stream after a long sleep there: a kernel launched on another stream would read
    them (and write its NaN-poisoned output) out of order."""
    q, k, v, _ = data((2, 200, H, D), torch.float32, seed=7)
    want, _ = ea_ops.ea_attention(q.double(), k.double(), v.double(), order=ORDER, backend="torch")
    ea_ops.ea_attention(q, k, v, order=ORDER, backend="tvm")  # build outside the timed part
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(100_000_000)  # about 50-100 ms of GPU time on this stream only
        qs, ks, vs = (t * 1.0 for t in (q, k, v))
        o, _ = ea_ops.ea_attention(qs, ks, vs, order=ORDER, backend="tvm")
        o = o * 1.0
    side.synchronize()
    assert rel_err(o, want) < TOL[torch.float32]


@pytest.mark.usefixtures("can_build")
def test_tvm_and_triton_agree_on_the_same_inputs():
    if ea_ops.dispatch.available().get("triton") is not None:
        pytest.skip("the Triton backend is not available here")
    q, k, v, go = data((2, 300, H, D), torch.bfloat16, seed=8)
    o_tvm, _, g_tvm = tvm(q, k, v, go, causal=True)
    qt, kt, vt = (t.detach().clone().requires_grad_() for t in (q, k, v))
    o_tri, _ = ea_ops.ea_attention(qt, kt, vt, order=ORDER, backend="triton")
    g_tri = torch.autograd.grad(o_tri, (qt, kt, vt), go)
    ro, _, rgrads = ref(q, k, v, go, causal=True)
    # each within one bfloat16 rounding of the reference, so within two of each other
    assert rel_err(o_tvm, o_tri.float()) < 2 * TOL[torch.bfloat16]
    for a, b, r in zip(g_tvm, g_tri, rgrads):
        assert rel_err(a, r) < TOL[torch.bfloat16] and rel_err(a, b.float()) < 2 * TOL[torch.bfloat16]


_CHILD = textwrap.dedent("""
    import json, sys
    import torch, ea_ops
    from ea_ops.backends.tvm import build
    info = ea_ops.load_kernels(sys.argv[1])
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 77, 2, 16, generator=g).cuda().requires_grad_() for _ in range(3))
    out = {"kernels": len(info["kernels"])}
    for causal in (True, False):
        o, _ = ea_ops.ea_attention(q, k, v, order=2, causal=causal, backend="tvm")
        grads = torch.autograd.grad(o.sum(), (q, k, v))
        leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
        ro, _ = ea_ops.ea_attention(*leaves, order=2, causal=causal, backend="torch")
        want = torch.autograd.grad(ro.sum(), leaves)
        out[str(causal)] = max(float((a.double() - b).abs().max() / b.abs().max())
                               for a, b in zip((o, *grads), (ro, *want)))
    st = ea_ops.EAState.empty(2, 2, 16, 2, device="cuda")
    o_t, _ = ea_ops.ea_recurrent_step(q[:, 0].detach(), k[:, 0].detach(), v[:, 0].detach(), st, order=2,
                                      backend="tvm")
    out["step"] = float((o_t - v[:, 0].detach()).abs().max())
    out["builds"] = len(build.BUILD_LOG)
    out["tvm_imported"] = sys.modules.get("tvm") is not None
    print(json.dumps(out))
""")


def test_a_pack_for_this_gpu_runs_in_a_process_that_cannot_compile(tmp_path):
    from tests.ea_ops.test_kernel_packs import _NO_COMPILER

    out = tmp_path / "pack"
    res = subprocess.run([sys.executable, "-m", "ea_ops.cli", "compile", "--backend", "tvm", "--target",
                          f"cuda:{_arch()}", "--orders", "2", "--shapes", "2x16", "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    if not json.loads((out / "manifest.json").read_text())["versions"]["nvcc"]:
        pytest.skip("nvcc is not on the PATH: the pack has no cubins")
    env = {**os.environ, "EA_OPS_KERNEL_CACHE": "0"}
    res = subprocess.run([sys.executable, "-c", _NO_COMPILER + _CHILD, str(out)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    if res.returncode and "TVM's CUDA runtime is not available in this process" in res.stderr:
        pytest.skip(res.stderr.strip().splitlines()[-1])
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["kernels"] == 5 and got["builds"] == 0 and not got["tvm_imported"], got
    assert got["True"] < 1e-5 and got["False"] < 1e-5 and got["step"] < 1e-6, got
