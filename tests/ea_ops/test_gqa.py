"""Grouped-query attention (issue 15, item 1): ``k, v`` with ``H_kv`` heads dividing ``H``, query head ``h``
reading kv head ``h // (H / H_kv)``, on every entry point and backend; the state has ``H_kv`` heads.

Each result is checked against the float64 O(T^2) formula (``ea_ops.naive``) on kv heads repeated by hand, and
the state against the one the ungrouped call builds for kv head ``j`` (query head ``j G``)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import ea_ops
from ea_ops import EADecoder, EAState
from ea_ops.naive import naive_attention
from tests.helpers import rel_err

B, T, H, D, ORDER = 2, 21, 6, 8, 4
BACKENDS = ["torch", "tvm"]


def _inputs(H_kv: int, dtype=torch.float64, seed=0, T=T, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, D, generator=g, dtype=torch.float64) * 0.7
    k = torch.randn(B, T, H_kv, D, generator=g, dtype=torch.float64) * 0.7
    v = torch.randn(B, T, H_kv, D, generator=g, dtype=torch.float64)
    return tuple(t.to(dtype).requires_grad_(requires_grad) for t in (q, k, v))


def _repeat(t, groups, dim=2):
    return t.repeat_interleave(groups, dim=dim)


def _backend(name):
    if name == "tvm":
        pytest.importorskip("tvm")
    return name, (torch.float64 if name == "torch" else torch.float32), (1e-10 if name == "torch" else 2e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("H_kv", [1, 2, 3])
@pytest.mark.parametrize("causal", [True, False])
def test_grouped_heads_match_the_formula_on_repeated_heads(backend, H_kv, causal):
    name, dtype, tol = _backend(backend)
    q, k, v = _inputs(H_kv, dtype)
    o, _ = ea_ops.ea_attention(q, k, v, order=ORDER, causal=causal, scale=0.8, backend=name)
    want = naive_attention(*(t.double() for t in (q, _repeat(k, H // H_kv), _repeat(v, H // H_kv))), order=ORDER,
                           causal=causal, scale=0.8)
    assert o.shape == q.shape and rel_err(o, want) < tol


@pytest.mark.parametrize("backend", BACKENDS)
def test_grouped_gradients_sum_over_the_group(backend):
    """``dk, dv [B, T, H_kv, D]``: the gradient of the repeated heads summed over each group."""
    name, dtype, tol = _backend(backend)
    H_kv, G = 2, H // 2
    q, k, v = _inputs(H_kv, dtype, requires_grad=True)
    g = torch.randn(B, T, H, D, dtype=dtype)
    o, _ = ea_ops.ea_attention(q, k, v, order=ORDER, backend=name)
    got = torch.autograd.grad(o, (q, k, v), g)
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    want_o = naive_attention(leaves[0], _repeat(leaves[1], G), _repeat(leaves[2], G), order=ORDER)
    want = torch.autograd.grad(want_o, leaves, g.double())
    assert got[1].shape == (B, T, H_kv, D)
    for x, w in zip(got, want):
        assert rel_err(x, w) < 10 * tol


def test_grouped_gradcheck_in_float64():
    q, k, v = (t[:1, :6, :, :3] for t in _inputs(2, requires_grad=False))
    args = [t.clone().requires_grad_() for t in (q, k, v)]
    assert torch.autograd.gradcheck(lambda *a: ea_ops.ea_attention(*a, order=ORDER, backend="torch")[0], args)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_state_has_the_kv_heads_and_continues_a_split_sequence(backend):
    name, dtype, tol = _backend(backend)
    H_kv, G = 2, H // 2
    q, k, v = _inputs(H_kv, dtype)
    o, st = ea_ops.ea_attention(q, k, v, order=ORDER, output_final_state=True, backend=name)
    assert st.S.shape == (B, H_kv, ORDER + 1, D) and st.m.shape == (B, H_kv, D)
    _, full = ea_ops.ea_attention(q, _repeat(k, G), _repeat(v, G), order=ORDER, output_final_state=True,
                                  backend=name)
    for a, b in ((st.S, full.S), (st.Z, full.Z), (st.m, full.m)):
        assert torch.equal(a, b[:, ::G])
    cut = 8
    o1, s1 = ea_ops.ea_attention(q[:, :cut], k[:, :cut], v[:, :cut], order=ORDER, output_final_state=True,
                                 backend=name)
    o2, s2 = ea_ops.ea_attention(q[:, cut:], k[:, cut:], v[:, cut:], order=ORDER, initial_state=s1,
                                 output_final_state=True, backend=name)
    assert rel_err(torch.cat([o1, o2], 1), o) < tol
    assert rel_err(s2.S, st.S) < tol and rel_err(s2.Z, st.Z) < tol


@pytest.mark.parametrize("backend", BACKENDS)
def test_grouped_packed_sequences(backend):
    name, dtype, tol = _backend(backend)
    q, k, v = (t[:1] for t in _inputs(3, dtype))
    cu = torch.tensor([0, 5, 5, 21])
    o, st = ea_ops.ea_attention(q, k, v, order=ORDER, cu_seqlens=cu, output_final_state=True, backend=name)
    assert st.S.shape == (3, 3, ORDER + 1, D)
    for i, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        want, ws = ea_ops.ea_attention(q[:, a:b], k[:, a:b], v[:, a:b], order=ORDER, output_final_state=True,
                                       backend=name)
        if b > a:
            assert rel_err(o[:, a:b], want) < tol
        assert torch.allclose(st.S[i], ws.S[0], rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_grouped_decoding_steps_equal_the_sequence(backend):
    name, dtype, tol = _backend(backend)
    H_kv = 2
    q, k, v = _inputs(H_kv, dtype, T=9)
    o, st = ea_ops.ea_attention(q, k, v, order=ORDER, output_final_state=True, backend=name)
    state = None
    for t in range(9):
        o_t, state = ea_ops.ea_recurrent_step(q[:, t], k[:, t], v[:, t], state, order=ORDER, backend=name)
        assert o_t.shape == (B, H, D) and state.S.shape == (B, H_kv, ORDER + 1, D)
        assert rel_err(o_t, o[:, t]) < tol
    assert rel_err(state.S, st.S) < tol and torch.equal(state.m, st.m)


@pytest.mark.parametrize("backend", BACKENDS)
def test_grouped_in_place_decoder_equals_the_step_bit_for_bit(backend):
    name, dtype, _ = _backend(backend)
    H_kv = 3
    q, k, v = _inputs(H_kv, dtype, T=6)
    state = EAState.empty(B, H_kv, D, ORDER, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    dec = EADecoder(state.clone(), order=ORDER, backend=name)
    held = dec.state.S.data_ptr()
    ref = state
    for t in range(6):
        o = dec.step(q[:, t], k[:, t], v[:, t])
        o_ref, ref = ea_ops.ea_recurrent_step(q[:, t], k[:, t], v[:, t], ref, order=ORDER, backend=name)
        assert torch.equal(o, o_ref)
        assert all(torch.equal(getattr(dec.state, f), getattr(ref, f)) for f in ("S", "Z", "m"))
    assert dec.state.S.data_ptr() == held and dec._plan is not None  # in place, on the planned path
    with pytest.raises(ValueError, match=r"k_t must have shape \[B, H_kv, D\]"):
        dec.step(q[:, 0], q[:, 0], q[:, 0])


def test_grouped_exact_attention_and_out():
    q, k, v = _inputs(2)
    want = naive_attention(q, _repeat(k, 3), _repeat(v, 3), order=None)
    assert rel_err(ea_ops.ea_attention_exact(q, k, v), want) < 1e-12
    out = torch.empty_like(q)
    o, _ = ea_ops.ea_attention(q, k, v, order=ORDER, out=out)
    assert o is out and rel_err(out, naive_attention(q, _repeat(k, 3), _repeat(v, 3), order=ORDER)) < 1e-10


def test_grouped_zero_sizes():
    q = torch.randn(0, 4, H, D, requires_grad=True)
    k = torch.randn(0, 4, 2, D, requires_grad=True)
    v = torch.randn(0, 4, 2, D, requires_grad=True)
    o, st = ea_ops.ea_attention(q, k, v, output_final_state=True)
    assert o.shape == q.shape and st.S.shape == (0, 2, 7, D)
    o.sum().backward()
    assert k.grad.shape == k.shape
    q, k, v = torch.randn(1, 0, H, D), torch.randn(1, 0, 3, D), torch.randn(1, 0, 3, D)
    _, st = ea_ops.ea_attention(q, k, v, output_final_state=True)
    assert st.S.shape == (1, 3, 7, D) and torch.isinf(st.m).all()


def test_grouped_under_torch_compile_fullgraph():
    q, k, v = (t.float() for t in _inputs(2))
    fn = torch.compile(lambda q, k, v: ea_ops.ea_attention(q, k, v, order=ORDER, backend="torch")[0],
                       fullgraph=True)
    assert rel_err(fn(q, k, v), ea_ops.ea_attention(q, k, v, order=ORDER, backend="torch")[0]) < 1e-6


@pytest.mark.parametrize("k_heads, v_heads, match, step_match", [
    (4, 4, r"k and v must have a number of heads dividing q's H = 6",
     r"k_t and v_t must have a number of heads dividing q_t's H = 6"),
    (2, 3, r"v must have the shape of q \(2, 21, 6, 8\), or of it with fewer heads",
     r"v_t must have the shape of q_t \(2, 6, 8\), or of it with fewer heads"),
    (12, 12, r"k and v must have a number of heads dividing q's H = 6",
     r"k_t and v_t must have a number of heads dividing q_t's H = 6"),
])
def test_bad_head_counts_are_named(k_heads, v_heads, match, step_match):
    q = torch.randn(B, T, H, D)
    with pytest.raises(ValueError, match=match):
        ea_ops.ea_attention(q, torch.randn(B, T, k_heads, D), torch.randn(B, T, v_heads, D))
    with pytest.raises(ValueError, match=step_match):
        ea_ops.ea_recurrent_step(q[:, 0], torch.randn(B, k_heads, D), torch.randn(B, v_heads, D), None)


def test_a_state_with_the_query_heads_is_refused():
    q, k, v = _inputs(2, torch.float32)
    wrong = EAState.empty(B, H, D, ORDER)
    with pytest.raises(ValueError, match=r"initial_state.S must have shape \[B, H, order\+1, D\] = \[2, 2, 5, 8\]"):
        ea_ops.ea_attention(q, k, v, order=ORDER, initial_state=wrong)
    with pytest.raises(ValueError, match=r"state.S must have shape"):
        ea_ops.ea_recurrent_step(q[:, 0], k[:, 0], v[:, 0], wrong, order=ORDER)


def test_triton_grouped_heads_under_the_interpreter(tmp_path):
    """The Triton backend gets the same grouped calls (its kernels see the broadcast heads)."""
    pytest.importorskip("triton")
    script = textwrap.dedent("""
        import torch, ea_ops
        from ea_ops.naive import naive_attention
        from ea_ops.testing import rel_err
        torch.manual_seed(0)
        q = torch.randn(1, 13, 4, 8) * 0.7
        k, v = torch.randn(1, 13, 2, 8) * 0.7, torch.randn(1, 13, 2, 8)
        for causal in (True, False):
            o, st = ea_ops.ea_attention(q, k, v, order=4, causal=causal, output_final_state=causal,
                                        backend="triton")
            want = naive_attention(q.double(), k.double().repeat_interleave(2, 2),
                                   v.double().repeat_interleave(2, 2), order=4, causal=causal)
            assert rel_err(o, want) < 2e-5, (causal, rel_err(o, want))
            assert st is None or st.S.shape == (1, 2, 5, 8)
        o_t, st = ea_ops.ea_recurrent_step(q[:, 0], k[:, 0], v[:, 0], None, order=4, backend="triton")
        assert st.S.shape == (1, 2, 5, 8) and rel_err(o_t, v[:, 0].repeat_interleave(2, 1)) < 1e-6
        print("ok")
    """)
    env = {**os.environ, "TRITON_INTERPRET": "1", "EA_OPS_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[2], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), (proc.stdout + proc.stderr)[-4000:]
