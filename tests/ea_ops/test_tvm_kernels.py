"""TVM kernels against the torch reference: forward, backward, states, varlen, dtypes, stabilisation."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("tvm")

import ea_ops  # noqa: E402
from ea_ops import EAState  # noqa: E402
from ea_ops.backends import common  # noqa: E402
from ea_ops.backends.tvm import build, cpu_kernels, ops  # noqa: E402
from tests.helpers import qkv, rel_err  # noqa: E402

pytestmark = pytest.mark.tvm
EPS32 = torch.finfo(torch.float32).eps
# Max-norm relative error of outputs, states and gradients against the torch backend (float64, or float32 for
# the hand-off and step tests) on the same rounded inputs. float32: the kernels' own rounding, measured at most
# 7.3e-7 (6.1 eps, causal gradients) over this module; tolerance 64 eps (10x). bfloat16, float16: one rounding of
# the result to the dtype (unit roundoff 2^-8, 2^-11; measured 3.2e-3 and 3.7e-4 for outputs and gradients alike)
# plus the float32 part.
TOL = {torch.float32: 64 * EPS32, torch.bfloat16: 2**-8 + 64 * EPS32, torch.float16: 2**-11 + 64 * EPS32}
# m = min y^2 takes one or two float32 roundings (y = sqrt(s) k, y^2), nothing else: measured 0 and 1.2e-7.
M_TOL = 2 * EPS32


@pytest.fixture(autouse=True)
def _poison():
    """Outputs and scratch start as NaN: an element a kernel forgets to write fails the comparisons."""
    with common.poison_outputs():
        yield


def ref(q, k, v, **kw):
    """The torch backend in float64 on the same (rounded) inputs."""
    qq, kk, vv = (t.detach().double().requires_grad_(t.requires_grad) for t in (q, k, v))
    st = kw.pop("initial_state", None)
    if st is not None:
        st = EAState(st.S.double(), st.Z.double(), st.m.double())
    o, fs = ea_ops.ea_attention(qq, kk, vv, backend="torch", initial_state=st, **kw)
    return o, fs, (qq, kk, vv)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("order", [0, 2, 6])
def test_kernel_writes_every_output_nan_poisoned(causal, order):
    """Call the compiled kernel directly with NaN-filled outputs: every element must be written."""
    B, T, H, D = 2, 23, 3, 8
    q, k, v = qkv((B, T, H, D), dtype=torch.float32, seed=order)
    comp = build.kernel_for("forward", causal, order, "float32", H, D, T)
    o = torch.full_like(q, math.nan)
    S, Z, M = ops._empty_state(B, H, order + 1, D, "cpu")
    comp.fn(q, k, v, o, S, Z, M, math.sqrt(0.8))
    want, fs, _ = ref(q, k, v, order=order, causal=causal, scale=0.8, output_final_state=causal)
    assert not o.isnan().any()
    assert rel_err(o, want) < TOL[torch.float32]
    if causal:
        for got, exp in ((S, fs.S), (Z, fs.Z), (M, fs.m)):
            assert rel_err(got, exp) < TOL[torch.float32]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("causal", [True, False])
def test_forward_and_gradients_match_reference(dtype, causal):
    q, k, v = qkv((2, 37, 2, 16), dtype=dtype, requires_grad=True, seed=1)
    o, _ = ea_ops.ea_attention(q, k, v, order=4, causal=causal, scale=0.7, backend="tvm")
    assert o.dtype == dtype and o.shape == q.shape
    g = torch.randn(o.shape, generator=torch.Generator().manual_seed(5)).to(dtype)
    grads = torch.autograd.grad(o, (q, k, v), g)
    want, _, leaves = ref(q, k, v, order=4, causal=causal, scale=0.7)
    wgrads = torch.autograd.grad(want, leaves, g.double())
    assert rel_err(o, want) < TOL[dtype]
    for got, exp in zip(grads, wgrads):
        assert got.dtype == dtype
        assert rel_err(got, exp) < TOL[dtype]


def test_backward_kernel_nan_poisoned_scratch_and_grads():
    B, T, H, D, order = 1, 19, 2, 8, 2
    q, k, v = qkv((B, T, H, D), dtype=torch.float32, seed=3)
    g = torch.randn(B, T, H, D, generator=torch.Generator().manual_seed(2))
    comp = build.kernel_for("backward", True, order, "float32", H, D, T)
    S, Z, M = ops._empty_state(B, H, order + 1, D, "cpu")
    nan = lambda: torch.full((B, T, H, D), math.nan)  # noqa: E731
    C, CO, MM, dq, dk, dv = (nan() for _ in range(6))
    U, W = torch.zeros(B, H, order + 1, D), torch.zeros(B, H, order + 1, D)
    MN = torch.full((B, H, D), -math.inf)
    comp.fn(q, k, v, g, S, Z, M, C, CO, MM, U, W, MN, dq, dk, dv, 1.0)
    qq, kk, vv = (t.double().requires_grad_() for t in (q, k, v))
    o, _ = ea_ops.ea_attention(qq, kk, vv, order=order, backend="torch")
    want = torch.autograd.grad(o, (qq, kk, vv), g.double())
    for got, exp in zip((dq, dk, dv), want):
        assert not got.isnan().any()
        assert rel_err(got, exp) < TOL[torch.float32]


@pytest.mark.parametrize("first, second", [("torch", "tvm"), ("tvm", "torch")])
def test_state_hand_off_between_backends(first, second):
    """Prefill on one backend, continue on the other (same EAState convention), then decode steps."""
    q, k, v = qkv((2, 30, 2, 8), dtype=torch.float32, seed=4)
    full, full_state = ea_ops.ea_attention(q, k, v, order=4, backend="torch", output_final_state=True)
    o1, st = ea_ops.ea_attention(q[:, :20], k[:, :20], v[:, :20], order=4, backend=first,
                                 output_final_state=True)
    o2, st2 = ea_ops.ea_attention(q[:, 20:27], k[:, 20:27], v[:, 20:27], order=4, backend=second,
                                  initial_state=st, output_final_state=True)
    outs = [o1, o2]
    for t in range(27, 30):
        ot, st2 = ea_ops.ea_recurrent_step(q[:, t], k[:, t], v[:, t], st2, order=4, backend=first)
        outs.append(ot[:, None])
    assert rel_err(torch.cat(outs, 1), full) < TOL[torch.float32]
    for name in ("S", "Z", "m"):
        assert rel_err(getattr(st2, name), getattr(full_state, name)) < TOL[torch.float32]


def test_recurrent_step_matches_torch_and_leaves_input_state_alone():
    q, k, v = qkv((3, 1, 2, 8), dtype=torch.float32, seed=6)
    _, st = ea_ops.ea_attention(*qkv((3, 9, 2, 8), dtype=torch.float32, seed=7), order=6, backend="torch",
                                output_final_state=True)
    before = st.clone()
    o, new = ea_ops.ea_recurrent_step(q[:, 0], k[:, 0], v[:, 0], st, order=6, backend="tvm")
    ro, rnew = ea_ops.ea_recurrent_step(q[:, 0], k[:, 0], v[:, 0], st, order=6, backend="torch")
    assert rel_err(o, ro) < TOL[torch.float32] and rel_err(new.S, rnew.S) < TOL[torch.float32]
    assert rel_err(new.m, rnew.m) < M_TOL
    assert torch.equal(st.S, before.S) and torch.equal(st.m, before.m)
    o0, s0 = ea_ops.ea_recurrent_step(q[:, 0], k[:, 0], v[:, 0], None, order=2, backend="tvm")
    r0, _ = ea_ops.ea_recurrent_step(q[:, 0], k[:, 0], v[:, 0], None, order=2, backend="torch")
    assert rel_err(o0, r0) < TOL[torch.float32] and s0.m.isfinite().all()


@pytest.mark.parametrize("causal", [True, False])
def test_cu_seqlens_with_states_and_an_empty_sequence(causal):
    q, k, v = qkv((1, 25, 2, 8), dtype=torch.float32, seed=8, requires_grad=True)
    cu = torch.tensor([0, 7, 7, 25])
    kw = dict(order=2, causal=causal, cu_seqlens=cu, output_final_state=causal)
    init = None
    if causal:
        _, init = ea_ops.ea_attention(*qkv((3, 5, 2, 8), dtype=torch.float32, seed=9), order=2,
                                      backend="torch", output_final_state=True)
    o, st = ea_ops.ea_attention(q, k, v, backend="tvm", initial_state=init, **kw)
    want, wst, leaves = ref(q, k, v, initial_state=init, **kw)
    assert rel_err(o, want) < TOL[torch.float32]
    if causal:
        assert st.S.shape == (3, 2, 3, 8)
        assert rel_err(st.S, wst.S) < TOL[torch.float32] and rel_err(st.m, wst.m) < M_TOL
    g = torch.randn(o.shape, generator=torch.Generator().manual_seed(1))
    got = torch.autograd.grad(o, (q, k, v), g)
    exp = torch.autograd.grad(want, leaves, g.double())
    for a, b in zip(got, exp):
        assert rel_err(a, b) < TOL[torch.float32]


def test_large_keys_stay_finite_thanks_to_the_running_minimum():
    """Keys near 12 underflow exp(-y^2) in float32: only the stabilised state keeps 0/0 away."""
    q, k, v = qkv((1, 40, 2, 8), dtype=torch.float32, shift_k=12.0, scale_k=0.3, seed=10, requires_grad=True)
    o, _ = ea_ops.ea_attention(q, k, v, order=6, backend="tvm")
    want, _, leaves = ref(q, k, v, order=6)
    assert o.isfinite().all()
    # |x y| ~ 8 at order 6: the sums cancel more than for small keys; measured 2.6e-6 (22 eps), tolerance 4x
    assert rel_err(o, want) < 88 * EPS32
    g = torch.ones_like(o)
    for a in torch.autograd.grad(o, (q, k, v), g):
        assert a.isfinite().all()


def test_empty_and_single_token_and_non_contiguous_inputs():
    q, k, v = qkv((2, 0, 2, 8), dtype=torch.float32)
    o, st = ea_ops.ea_attention(q, k, v, order=2, backend="tvm", output_final_state=True)
    assert o.shape == q.shape and torch.isinf(st.m).all()
    q, k, v = qkv((2, 1, 2, 8), dtype=torch.float32, seed=11)
    o, _ = ea_ops.ea_attention(q, k, v, order=2, backend="tvm")
    assert rel_err(o, ref(q, k, v, order=2)[0]) < TOL[torch.float32]
    base = qkv((2, 8, 13, 2), dtype=torch.float32, seed=12)
    q, k, v = (t.transpose(1, 2) for t in base)  # [2, 13, 8, 2] views, not contiguous
    assert not q.is_contiguous()
    o, _ = ea_ops.ea_attention(q, k, v, order=2, backend="tvm")
    assert rel_err(o, ref(q, k, v, order=2)[0]) < TOL[torch.float32]


def test_compiled_modules_are_cached_across_shapes_and_calls():
    q, k, v = qkv((1, 10, 2, 8), dtype=torch.float32, seed=13)
    ea_ops.ea_attention(q, k, v, order=2, backend="tvm")
    n = len(build.BUILD_LOG)
    for T in (3, 10, 17):
        for B in (1, 2):
            ea_ops.ea_attention(*qkv((B, T, 2, 8), dtype=torch.float32), order=2, backend="tvm")
    assert len(build.BUILD_LOG) == n  # symbolic B and T: one module serves every length


def test_custom_ops_pass_opcheck():
    q, k, v = qkv((1, 6, 2, 4), dtype=torch.float32, seed=14, requires_grad=True)
    S, Z, M = ops._empty_state(1, 2, 3, 4, "cpu")
    torch.library.opcheck(ops.forward_op, (q, k, v, S, Z, M, 2, True, 1.0, [], True))
    g = torch.randn(1, 6, 2, 4, generator=torch.Generator().manual_seed(3))
    torch.library.opcheck(ops.backward_op, (q.detach(), k.detach(), v.detach(), g, S, Z, M, 2, True, 1.0, []))


def test_build_func_rejects_bad_arguments():
    with pytest.raises(ValueError, match="order"):
        cpu_kernels.build_func("forward", 3, "float32", True, 1, 4)
    with pytest.raises(ValueError, match="dtype"):
        cpu_kernels.build_func("forward", 2, "float64", True, 1, 4)
    with pytest.raises(ValueError, match="kernel"):
        cpu_kernels.build_func("sideways", 2, "float32", True, 1, 4)


def test_torch_compile_holds_the_custom_op_without_graph_breaks():
    q, k, v = qkv((1, 12, 2, 8), dtype=torch.float32, requires_grad=True, seed=15)
    ea_ops.ea_attention(q, k, v, order=2, backend="tvm")  # dispatch's module cache: importlib is untraceable
    fn = torch.compile(lambda q, k, v: ea_ops.ea_attention(q, k, v, order=2, backend="tvm")[0],
                       backend="aot_eager", fullgraph=True)
    o = fn(q, k, v)
    g = torch.randn(o.shape, generator=torch.Generator().manual_seed(2))
    got = torch.autograd.grad(o, (q, k, v), g)
    want, _, leaves = ref(q, k, v, order=2)
    assert rel_err(o, want) < TOL[torch.float32]
    for a, b in zip(got, torch.autograd.grad(want, leaves, g.double())):
        assert rel_err(a, b) < TOL[torch.float32]


def _exp_neg_kernel(n: int):
    """``out[i] = exp_neg(z[i])``, vectorised by 16 lanes as in the kernels."""
    import tvm
    from tvm import s_tir
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T

    from ea_ops.backends.tvm import tir_math as tm
    from ea_ops.backends.tvm.target import cpu_target

    with IRBuilder() as ib:
        with T.prim_func(s_tir=True):
            T.func_name("main")
            z = T.match_buffer(T.arg("z", T.handle()), (n,), "float32")
            out = T.match_buffer(T.arg("out", T.handle()), (n,), "float32")
            with T.serial(n) as i:
                with T.sblock("e"):
                    vi = T.axis.spatial(n, i)
                    T.reads(z[vi])
                    T.writes(out[vi])
                    T.buffer_store(out, tm.exp_neg(z[vi]), [vi])
    sch = s_tir.Schedule(ib.get())
    (i,) = sch.get_loops(sch.get_sblock("e"))
    sch.vectorize(sch.split(i, factors=[None, 16])[1])
    return tvm.compile(sch.mod, target=cpu_target())["main"]


def test_polynomial_exp_against_float64():
    """The kernels' vectorised exp: relative error within 2.5e-7 (about 2 ulp; measured 8.3e-8, margin 3x) on
    [-86, 0], and exactly 0 below the floor and at -inf (the empty state's weight)."""
    from ea_ops.backends.tvm.tir_math import EXP_FLOOR

    tiny = -torch.rand(4_000, generator=torch.Generator().manual_seed(0)) * 1e-3
    z = torch.cat([torch.linspace(EXP_FLOOR, 0.0, 200_000), tiny,
                   torch.tensor([0.0, -0.5 * math.log(2), 0.5 * math.log(2) - 1.0, EXP_FLOOR - 0.5, -1e4,
                                 -math.inf])])
    z = torch.cat([z, torch.zeros((-len(z)) % 16)])
    out = torch.full_like(z, math.nan)
    _exp_neg_kernel(len(z))(z, out)
    ok = z >= EXP_FLOOR
    want = torch.exp(z[ok].double())
    assert ((out[ok].double() - want).abs() / want).max().item() < 2.5e-7
    assert (out[~ok] == 0).all()
