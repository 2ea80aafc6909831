"""The explicit backward against autograd of the literal formula, and gradcheck in float64."""

import pytest
import torch

import ea_ops
from ea_ops.backends.torch import kernels as torch_kernels
from ea_ops.backends.torch import ops as torch_ops
from ea_ops.naive import naive_attention
from tests.helpers import qkv, rel_err


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("order", [0, 2, 6, 10])
@pytest.mark.parametrize("chunk", [7, 64])
@pytest.mark.parametrize("max_spread", [None, -1.0])  # default, or every chunk on the C x C path
def test_backward_matches_autograd_of_naive(causal, order, chunk, max_spread, monkeypatch):
    if max_spread is not None:
        monkeypatch.setattr(torch_kernels, "_max_spread", lambda dtype: max_spread)
    q, k, v = qkv((2, 29, 2, 3), seed=order, requires_grad=True)
    o, _ = torch_ops.attention(q, k, v, order=order, causal=causal, scale=0.6, initial_state=None,
                                   output_final_state=False, cu_seqlens=None, chunk=chunk)
    ref = naive_attention(q, k, v, order=order, causal=causal, scale=0.6)
    g = torch.randn_like(ref)
    got = torch.autograd.grad(o, (q, k, v), g)
    want = torch.autograd.grad(ref, (q, k, v), g)
    for name, a, b in zip("qkv", got, want):
        assert rel_err(a, b) < 1e-10, name


@pytest.mark.parametrize("causal", [True, False])
def test_gradcheck_float64(causal):
    q, k, v = qkv((1, 9, 2, 2), seed=5, requires_grad=True)

    def f(q, k, v):
        return ea_ops.ea_attention(q, k, v, order=4, causal=causal, scale=0.9, backend="torch")[0]

    assert torch.autograd.gradcheck(f, (q, k, v), eps=1e-6, atol=1e-7)


def test_gradcheck_with_state_and_varlen():
    q, k, v = qkv((1, 11, 1, 2), seed=6, requires_grad=True)
    cu = torch.tensor([0, 4, 4, 11])
    _, st = ea_ops.ea_attention(*(t.detach()[:, :3].repeat(3, 1, 1, 1) for t in (q, k, v)), order=2,
                                output_final_state=True)

    def f(q, k, v):
        return ea_ops.ea_attention(q, k, v, order=2, initial_state=st, cu_seqlens=cu)[0]

    assert torch.autograd.gradcheck(f, (q, k, v), eps=1e-6, atol=1e-7)


def test_large_keys_gradients_match_float64():
    # Keys near |k| = 12: exp(-k^2) underflows float32, the stabilised backward must not.
    # Both runs see the same float32-representable inputs, so only the kernels' rounding differs.
    gen = torch.Generator().manual_seed(107)
    q, k, v, g = (t.float().double() for t in (*qkv((1, 40, 2, 3), scale_q=0.3, scale_k=0.3, shift_k=12.0,
                                                     seed=7), torch.randn(1, 40, 2, 3, dtype=torch.float64,
                                                                          generator=gen)))
    grads = {}
    for dt in (torch.float32, torch.float64):
        ins = [t.to(dt).requires_grad_() for t in (q, k, v)]
        o, _ = ea_ops.ea_attention(*ins, order=6)
        grads[dt] = torch.autograd.grad(o, ins, g.to(dt))
    for name, a in zip("qkv", grads[torch.float32]):
        assert torch.isfinite(a).all(), name
    dq32, dq64 = grads[torch.float32][0].double(), grads[torch.float64][0]
    assert rel_err(grads[torch.float32][1], grads[torch.float64][1]) < 2e-5
    assert rel_err(grads[torch.float32][2], grads[torch.float64][2]) < 2e-5
    # dq_i = c_i sum_j w_ij 2 y_j (v_j - o_i) cancels its y ~ 12 part (sum_j w_ij (v_j - o_i) = 0), so its
    # float32 error is relative to the terms summed, |g| 2 |y| spread(v), not to dq itself (seen: 1e-7..5e-7
    # of that over 12 seeds, 1e-4..1e-3 of max |dq|).
    terms = 2 * k.abs().max() * g.abs().max() * (v.max() - v.min())
    assert (dq32 - dq64).abs().max() < 2e-6 * terms


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_gradients_keep_dtype(dtype):
    q, k, v = qkv((1, 20, 2, 4), dtype=dtype, seed=8, requires_grad=True)
    o, _ = ea_ops.ea_attention(q, k, v, order=4)
    o.float().sum().backward()
    for t in (q, k, v):
        assert t.grad.dtype == dtype and torch.isfinite(t.grad.float()).all()


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("chunk", [3, 64])
def test_double_backward_is_correct(causal, chunk, monkeypatch):
    # create_graph=True differentiates the gradients themselves (Hessian-vector products, gradient
    # penalties). The explicit backward treats the saved o and den as constants, so differentiating it would
    # be wrong; gradgradcheck compares against finite differences of the first derivative in float64.
    monkeypatch.setattr(torch_kernels, "chunk_size", lambda n_rows, T: min(chunk, T))
    q, k, v = qkv((1, 8, 2, 2), seed=9, requires_grad=True)

    def f(q, k, v):
        return ea_ops.ea_attention(q, k, v, order=4, causal=causal, scale=0.9, backend="torch")[0]

    assert torch.autograd.gradgradcheck(f, (q, k, v), eps=1e-6, atol=1e-6)


def test_double_backward_with_state_and_varlen():
    q, k, v = qkv((1, 9, 1, 2), seed=10, requires_grad=True)
    cu = torch.tensor([0, 4, 4, 9])
    _, st = ea_ops.ea_attention(*qkv((3, 3, 1, 2), seed=11), order=2, output_final_state=True)

    def f(q, k, v):
        return ea_ops.ea_attention(q, k, v, order=2, initial_state=st, cu_seqlens=cu, backend="torch")[0]

    assert torch.autograd.gradgradcheck(f, (q, k, v), eps=1e-6, atol=1e-6)


def test_double_backward_of_the_step():
    q, k, v = qkv((2, 1, 2, 3), seed=12, requires_grad=True)
    _, st = ea_ops.ea_attention(*qkv((2, 4, 2, 3), seed=13), order=4, output_final_state=True)

    def f(q, k, v):
        return ea_ops.ea_recurrent_step(q[:, 0], k[:, 0], v[:, 0], st, order=4, backend="torch")[0]

    assert torch.autograd.gradgradcheck(f, (q, k, v), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", ["torch", "tvm"])
def test_states_are_data_on_every_backend(backend):
    # The contract: gradients flow to this call's q, k, v only. A decode chain must not differentiate
    # through earlier tokens' states on one backend and not on another.
    if backend == "tvm":
        pytest.importorskip("tvm")
    q, k, v = qkv((1, 3, 2, 4), dtype=torch.float32, seed=14, requires_grad=True)
    _, st = ea_ops.ea_attention(q, k, v, order=2, output_final_state=True, backend=backend)
    o1, st1 = ea_ops.ea_recurrent_step(q[:, 0], k[:, 0], v[:, 0], st, order=2, backend=backend)
    o2, st2 = ea_ops.ea_recurrent_step(q[:, 1], k[:, 1], v[:, 1], st1, order=2, backend=backend)
    for s in (st, st1, st2):
        assert not any(t.requires_grad for t in (s.S, s.Z, s.m))
    assert o1.requires_grad and o2.requires_grad
    dk = torch.autograd.grad(o2.sum(), k)[0]
    assert (dk[:, 0] == 0).all() and (dk[:, 2] == 0).all() and (dk[:, 1] != 0).any()
