"""The compiled Triton kernels on a CUDA device against the torch reference (skipped without one).

Same checks as the interpreter tests (tests/ea_ops/triton_interp/) on larger shapes and every curated
configuration: outputs NaN-poisoned, forward/backward/step/varlen/states, relative errors against the torch
backend run in float32 on the same device and inputs.
"""

from __future__ import annotations

import pytest
import torch

import ea_ops
from ea_ops.backends import common
from ea_ops.backends.torch import backend as torch_backend
from ea_ops.state import EAState

pytestmark = pytest.mark.gpu
pytest.importorskip("triton")

# one ulp of the output in half precision (GPUs round to nearest: half an ulp, plus float32 noise)
TOL = {torch.float32: 5e-5, torch.float16: 1.2e-3, torch.bfloat16: 8e-3}
DEV = "cuda"
CONFIGS = [
    {"variant": "scan", "num_warps": 1}, {"variant": "scan", "num_warps": 4},
    {"variant": "chunked", "num_warps": 1, "chunk": 32}, {"variant": "chunked", "num_warps": 2, "chunk": 128},
    {"variant": "chunked", "num_warps": 4, "chunk": 64}, {"variant": "chunked", "num_warps": 4, "chunk": 256},
]


def _ids(cfg):
    return "-".join(f"{k}{v}" for k, v in cfg.items())


def rel(a, b):
    a, b = a.double(), b.double()
    assert torch.isfinite(a).all(), "non-finite values (an unwritten NaN-poisoned element?)"
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def data(shape, dtype, seed=0, s=0.7):
    g = torch.Generator(device="cpu").manual_seed(seed)
    return tuple((torch.randn(shape, generator=g) * f).to(DEV, dtype) for f in (s, s, 1.0, 1.0))


def ref(q, k, v, go, *, order, causal, scale, state=None, cu=None):
    qf, kf, vf = (t.float().detach().requires_grad_() for t in (q, k, v))
    o, st = ea_ops.ea_attention(qf, kf, vf, order=order, causal=causal, scale=scale, initial_state=state,
                                output_final_state=causal, cu_seqlens=cu, backend="torch")
    return o, st, torch.autograd.grad(o, (qf, kf, vf), go.float())


@pytest.fixture(autouse=True)
def _poison():

    with common.poison_outputs():
        yield


# every configuration in bfloat16 (the goal dtype); two (so fewer JIT builds) in float32 and float16
CASES = [(c, torch.bfloat16) for c in CONFIGS] + [(c, dt) for c in (CONFIGS[1], CONFIGS[5])
                                                   for dt in (torch.float32, torch.float16)]


@pytest.mark.parametrize("cfg, dtype", CASES, ids=[f"{_ids(c)}-{str(d)[6:]}" for c, d in CASES])
@pytest.mark.parametrize("causal", [True, False])
def test_forward_backward_against_torch(cfg, dtype, causal):
    from ea_ops.backends.triton import configs

    B, T, H, D, order = 2, 700, 4, 48, 6
    q, k, v, go = data((B, T, H, D), dtype, seed=1)
    st = None
    if causal:
        p = data((B, 50, H, D), torch.float32, seed=2)
        _, st = ea_ops.ea_attention(*p[:3], order=order, output_final_state=True, backend="torch")
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    with configs.forced(cfg):
        o, fin = ea_ops.ea_attention(q, k, v, order=order, causal=causal, scale=0.8, initial_state=st,
                                     output_final_state=causal, backend="triton")
        grads = torch.autograd.grad(o, (q, k, v), go)
    ro, rst, rgrads = ref(q, k, v, go, order=order, causal=causal, scale=0.8, state=st)
    assert o.dtype == dtype and rel(o, ro) < TOL[dtype]
    for name, a, b in zip(("dq", "dk", "dv"), grads, rgrads):
        assert rel(a, b) < TOL[dtype], name
    if causal:
        assert rel(fin.S, rst.S) < TOL[torch.float32] and rel(fin.Z, rst.Z) < TOL[torch.float32]
        assert torch.allclose(fin.m, rst.m)


@pytest.mark.parametrize("cfg", CONFIGS[:3], ids=_ids)
def test_varlen_states(cfg):
    from ea_ops.backends.triton import configs

    cu = torch.tensor([0, 100, 100, 333, 1000], device=DEV)
    q, k, v, go = data((1, 1000, 2, 64), torch.bfloat16, seed=3)
    n = cu.numel() - 1
    p = data((n, 20, 2, 64), torch.float32, seed=4)
    _, st = ea_ops.ea_attention(*p[:3], order=4, output_final_state=True, backend="torch")
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    with configs.forced(cfg):
        o, fin = ea_ops.ea_attention(q, k, v, order=4, initial_state=st, output_final_state=True, cu_seqlens=cu,
                                     backend="triton")
        grads = torch.autograd.grad(o, (q, k, v), go)
    ro, rst, rgrads = ref(q, k, v, go, order=4, causal=True, scale=1.0, state=st, cu=cu)
    assert rel(o, ro) < TOL[torch.bfloat16]
    assert rel(fin.S, rst.S) < TOL[torch.float32]
    for a, b in zip(grads, rgrads):
        assert rel(a, b) < TOL[torch.bfloat16]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_torch_prefill_then_triton_decode(dtype):
    B, T0, T, H, D = 4, 300, 340, 8, 64
    q, k, v, _ = data((B, T, H, D), dtype, seed=5)
    full, _ = ea_ops.ea_attention(q.float(), k.float(), v.float(), backend="torch")
    _, st = ea_ops.ea_attention(q[:, :T0].float(), k[:, :T0].float(), v[:, :T0].float(), output_final_state=True,
                                backend="torch")
    outs = []
    for t in range(T0, T):
        o_t, st = ea_ops.ea_recurrent_step(q[:, t], k[:, t], v[:, t], st, backend="triton")
        outs.append(o_t)
    assert rel(torch.stack(outs, 1), full[:, T0:]) < TOL[dtype]


def test_default_configuration_at_a_goal_shape():
    # B*H*D = 2^14 lanes: the default splits T; checked against the reference on one batch entry's worth
    q, k, v, _ = data((1, 8192, 16, 128), torch.bfloat16, seed=6)
    o, _ = ea_ops.ea_attention(q, k, v, backend="triton")
    ro, _ = ea_ops.ea_attention(q.float(), k.float(), v.float(), backend="torch")
    assert rel(o, ro) < TOL[torch.bfloat16]


def test_large_keys_stay_finite():
    q, k, v, go = data((2, 500, 2, 32), torch.float32, seed=7)
    k = k + 11.0
    q = q + 11.0
    o, _ = ea_ops.ea_attention(q, k, v, backend="triton")
    ro, _ = ea_ops.ea_attention(q, k, v, backend="torch")
    assert rel(o, ro) < 1e-3


def test_auto_picks_triton_on_cuda_and_compiles_under_inductor():
    from ea_ops import dispatch
    from ea_ops.backends.triton import backend

    q, k, v, _ = data((2, 64, 2, 32), torch.bfloat16, seed=8)
    assert dispatch.resolve("auto", q, causal=True, order=6, needs_grad=True).NAME == "triton"

    def f(q, k, v):
        return backend.attention(q, k, v, order=6, causal=True, scale=1.0, initial_state=None,
                                 output_final_state=False, cu_seqlens=None)[0].float().sum()

    torch._dynamo.reset()
    got = torch.compile(f, fullgraph=True)(q, k, v)
    assert torch.allclose(got, f(q, k, v))


def test_state_dtype_and_empty_state_roundtrip():
    st = EAState.empty(2, 2, 16, 6, device=DEV)
    q, k, v, _ = data((2, 2, 16), torch.bfloat16, seed=9)
    o, new = ea_ops.ea_recurrent_step(q, k, v, st, backend="triton")
    ro, rnew = torch_backend.recurrent_step(q.float(), k.float(), v.float(), st, order=6, scale=1.0)
    assert new.S.dtype == torch.float32 and rel(o, ro) < TOL[torch.bfloat16]
    assert rel(new.S, rnew.S) < TOL[torch.float32]


# ------------------------------------------------------------------------------- issue 14: the first GPU run
@pytest.mark.parametrize("cfg", [CONFIGS[0], {"variant": "chunked", "num_warps": 1, "chunk": 8}], ids=_ids)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("T, cu", [(1, None), (3, None), (5, None), (37, None), (13, [0, 5, 6, 13])])
def test_large_keys_at_tail_lengths(T, cu, causal, cfg):
    """|q|, |k| ~ 11-12 (exp(min y^2) overflows float32) at lengths that leave a partial row block or chunk:
    outputs, final state, gradients and a decode step finite and as the float64 torch backend."""
    from ea_ops.backends.triton import configs
    from tests.ea_ops import hostile as HX

    with configs.forced(cfg):
        HX.check_large_keys("triton", T, cu, causal, device=DEV)


@pytest.mark.parametrize("cfg", [CONFIGS[1], {"variant": "chunked", "num_warps": 4, "chunk": 8}], ids=_ids)
@pytest.mark.parametrize("fall", [8.0, 15.0, 40.0, 100.0, 300.0])
def test_the_minimum_falling_inside_a_block(fall, cfg):
    """The block form of the forward on the GPU (exp2 flushes below 2^-126: a fall of 100 without the exact
    rescan leaves the rows before it 0 / 0), H = 64 channels in one program."""
    from ea_ops.backends.triton import configs
    from tests.ea_ops import hostile as HX

    with configs.forced(cfg):
        HX.check_minimum_falls("triton", (100, 131), 70, fall, H=64, device=DEV)


def _run_every_launch(dtype=torch.bfloat16, H=16, D=64):
    """Forward, backward (causal with state, non-causal) and the step at H*D = 1024: the JIT builds them."""
    from ea_ops.backends.triton import configs

    q, k, v, go = data((1, 300, H, D), dtype, seed=30)
    for cfg in ({"variant": "scan", "num_warps": 4}, {"variant": "chunked", "num_warps": 4, "chunk": 64}):
        with configs.forced(cfg):
            for causal in (True, False):
                ins = [t.detach().requires_grad_() for t in (q, k, v)]
                st = EAState.empty(1, H, D, 6, device=DEV) if causal else None
                o, _ = ea_ops.ea_attention(*ins, causal=causal, initial_state=st, output_final_state=causal,
                                           backend="triton")
                torch.autograd.grad(o, ins, go)
    ea_ops.ea_recurrent_step(q[:, 0], k[:, 0], v[:, 0], EAState.empty(1, H, D, 6, device=DEV), backend="triton")
    torch.cuda.synchronize()


def test_the_kernels_the_jit_built_are_the_ahead_of_time_builds():
    """Registers, spills and shared memory read from the kernels the JIT actually built (its cache), against
    the build made ahead of time for the same launch: same attributes, same registers and shared memory, no
    spills (docs/triton_builds.md). Only the builds of ``_run_every_launch`` (order 6, bfloat16, 4 warps) are
    compared: the cache also holds every earlier test's, and each comparison is a compile."""
    from ea_ops.backends.triton import cuda_kernels
    from schedules.triton import aot

    _run_every_launch()
    seen, problems, done = set(), [], set()
    for name, fn in cuda_kernels.KERNELS.items():
        for cache in fn.device_caches.values():
            for ck in cache[0].values():
                ck._init_handles()
                b = aot.build_of(ck)
                assert b is not None and not b.divisible_ints, (name, b)
                sig = list(ck.src.signature.values())
                misaligned = any(t.startswith("*") and not ck.src.attrs.get((i,)) for i, t in enumerate(sig))
                ours = {aot.canonical(x) for x in aot.builds_for([6], ["bfloat16"], [4], [b.arch])}
                if b not in ours or misaligned or b in done:  # a misaligned view is another build, by design
                    continue
                done.add(b)
                ahead = aot.compile_build(b)
                use = aot.resource_usage(ahead.asm["cubin"])
                got = {"registers": ck.n_regs, "spills": ck.n_spills, "shared": ck.metadata.shared}
                attrs = [{k: v for k, v in x.src.attrs.items() if v} for x in (ck, ahead)]  # the JIT lists empty ones
                if (got["registers"] != use["registers"] or got["spills"] or got["shared"] != use["shared"]
                        or attrs[0] != attrs[1]):
                    problems.append((b.name, got, use))
                seen.add(b.kernel)
    assert seen == set(cuda_kernels.KERNELS), seen
    assert not problems, problems


def test_offsets_past_2_to_31_elements():
    """Two sequences of H*D = 1024 channels, the second starting past element 2^31 of each tensor: its output
    and gradients equal, bit for bit, a call on a copy of it alone (same configuration, same chunks)."""
    from ea_ops.backends.triton import configs

    B, T, H, D = 2, (1 << 20) + 40, 8, 128
    assert (B - 1) * T * H * D < 2**31 < B * T * H * D
    g = torch.Generator(device=DEV).manual_seed(31)
    q, k, v, go = (torch.randn((B, T, H, D), generator=g, device=DEV, dtype=torch.bfloat16) * s
                   for s in (0.7, 0.7, 1.0, 1.0))
    cfg = {"variant": "chunked", "num_warps": 4, "chunk": 256}
    with configs.forced(cfg):
        for causal in (True, False):
            ins = [t.requires_grad_() for t in (q, k, v)]
            o, _ = ea_ops.ea_attention(*ins, causal=causal, backend="triton")
            grads = torch.autograd.grad(o, ins, go)
            one = [t[1:].detach().clone().requires_grad_() for t in (q, k, v)]
            o1, _ = ea_ops.ea_attention(*one, causal=causal, backend="triton")
            grads1 = torch.autograd.grad(o1, one, go[1:].clone())
            assert torch.equal(o[1:], o1), causal
            for a, b in zip(grads, grads1):
                assert torch.equal(a[1:], b), causal
            del o, grads, o1, grads1
            torch.cuda.empty_cache()


def test_a_side_stream_gives_the_default_streams_answer():
    q, k, v, _ = data((2, 400, 4, 64), torch.bfloat16, seed=32)
    want, _ = ea_ops.ea_attention(q, k, v, backend="triton")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        got, _ = ea_ops.ea_attention(q, k, v, backend="triton")
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    assert torch.equal(got, want)


@pytest.mark.parametrize("cached", [True, False], ids=["plan-cached", "plan-built-in-capture"])
def test_cuda_graph_capture_and_replay(cached):
    """The forward and a decode step captured in CUDA graphs and replayed on new inputs: the eager answers.
    Without the plan cached, its tables are computed on the device inside the capture (no host copy)."""
    from ea_ops.backends.triton import plan

    q, k, v, _ = data((2, 256, 4, 64), torch.bfloat16, seed=33)
    st = EAState.empty(2, 4, 64, 6, device=DEV)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up: JIT builds, plan cache
        for _ in range(2):
            ea_ops.ea_attention(q, k, v, backend="triton")
            ea_ops.ea_recurrent_step(q[:, 0], k[:, 0], v[:, 0], st, backend="triton")
    torch.cuda.current_stream().wait_stream(side)
    if not cached:
        plan._CACHE.clear()
    graph, step_graph = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        o_static, _ = ea_ops.ea_attention(q, k, v, backend="triton")
    with torch.cuda.graph(step_graph):
        ot_static, st_static = ea_ops.ea_recurrent_step(q[:, 0], k[:, 0], v[:, 0], st, backend="triton")
    for seed in (34, 35):
        new = data((2, 256, 4, 64), torch.bfloat16, seed=seed)
        for dst, src in zip((q, k, v), new):
            dst.copy_(src)
        graph.replay()
        step_graph.replay()
        want, _ = ea_ops.ea_attention(q, k, v, backend="triton")
        want_t, want_st = ea_ops.ea_recurrent_step(q[:, 0], k[:, 0], v[:, 0], st, backend="triton")
        torch.cuda.synchronize()
        assert torch.equal(o_static, want) and torch.equal(ot_static, want_t)
        assert torch.equal(st_static.S, want_st.S) and torch.equal(st_static.m, want_st.m)


def test_torch_compile_reduce_overhead():
    def f(q, k, v):
        return ea_ops.ea_attention(q, k, v, backend="triton")[0]

    torch._dynamo.reset()
    fc = torch.compile(f, mode="reduce-overhead")
    for seed in (36, 37, 38):
        q, k, v, _ = data((2, 200, 4, 64), torch.bfloat16, seed=seed)
        got = fc(q, k, v).clone()
        assert torch.equal(got, f(q, k, v)), seed


def _misaligned(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of ``t`` whose data pointer is one element past 16-byte alignment."""
    buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    out = buf[1:].view(t.shape)
    out.copy_(t)
    assert out.is_contiguous() and out.data_ptr() % 16
    return out


@pytest.mark.parametrize("layout", ["transposed", "misaligned"])
@pytest.mark.parametrize("causal", [True, False])
def test_transposed_and_misaligned_inputs(layout, causal):
    """Inputs as [B, H, T, D] transposed views, or contiguous but not 16-byte aligned (the JIT builds the
    kernels without pointer divisibility for them): the contiguous answer, with NaN-poisoned outputs."""
    B, T, H, D = 2, 333, 4, 48
    q, k, v, go = data((B, T, H, D), torch.bfloat16, seed=39)
    if layout == "transposed":
        moved = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v, go)]
    else:
        moved = [_misaligned(t) for t in (q, k, v, go)]
    outs = []
    for qq, kk, vv, gg in ((q, k, v, go), moved):
        ins = [t.detach().requires_grad_() for t in (qq, kk, vv)]
        o, _ = ea_ops.ea_attention(*ins, causal=causal, backend="triton")
        outs.append((o, *torch.autograd.grad(o, ins, gg)))
    for name, a, b in zip(("o", "dq", "dk", "dv"), *outs):
        assert rel(a, b) < TOL[torch.bfloat16], (layout, name)
