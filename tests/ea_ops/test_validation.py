"""Bad input raises ValueError/TypeError naming the argument; edge shapes and layouts work."""

import pytest
import torch

import ea_ops
from ea_ops.naive import naive_attention
from tests.helpers import qkv, rel_err

Q, K, V = qkv((2, 6, 3, 4), dtype=torch.float32)


def call(**kw):
    args = {"q": Q, "k": K, "v": V}
    args.update(kw)
    return ea_ops.ea_attention(**args)


@pytest.mark.parametrize("kw, exc, words", [
    ({"q": Q.numpy()}, TypeError, "q must be a torch.Tensor"),
    ({"k": Q[0]}, ValueError, "k must have shape [B, T, H, D]"),
    ({"v": torch.randn(2, 6, 3, 5)}, ValueError, "v must have the shape of q"),
    ({"k": K.double()}, TypeError, "k must have the dtype of q"),
    ({"q": Q.int(), "k": K.int(), "v": V.int()}, TypeError, "q must be float16, bfloat16, float32 or float64"),
    ({"order": 3}, ValueError, "order must be even"),
    ({"order": -2}, ValueError, "order must be a non-negative"),
    ({"order": 2.0}, TypeError, "order must be an int"),
    ({"order": True}, TypeError, "order must be an int"),
    ({"order": 40}, ValueError, "order must be at most"),
    ({"scale": 0.0}, ValueError, "scale must be a finite number > 0"),
    ({"scale": -1.0}, ValueError, "scale must be"),
    ({"scale": float("nan")}, ValueError, "scale must be"),
    ({"scale": "1"}, TypeError, "scale must be a real number"),
    ({"causal": 1}, TypeError, "causal must be a bool"),
    ({"backend": "cuda"}, ValueError, "backend must be one of"),
    ({"backend": None}, TypeError, "backend must be a str"),
    ({"causal": False, "output_final_state": True}, ValueError, "output_final_state needs causal=True"),
    ({"cu_seqlens": torch.tensor([0, 6])}, ValueError, "cu_seqlens needs batch size 1"),
    ({"initial_state": (1, 2)}, TypeError, "initial_state must be an ea_ops.EAState"),
    ({"out": Q.numpy()}, TypeError, "out must be a torch.Tensor"),
    ({"out": torch.empty(2, 6, 3, 5)}, ValueError, "out must have the shape of q"),
    ({"out": torch.empty(2, 6, 3, 4, dtype=torch.float64)}, ValueError, "out must be torch.float32"),
    ({"out": torch.empty(2, 6, 4, 3).transpose(2, 3)}, ValueError, "out must be contiguous"),
    ({"out": Q}, ValueError, "out must not share memory with q"),
    ({"out": V}, ValueError, "out must not share memory with v"),
    ({"q": Q.clone().requires_grad_(), "out": torch.empty_like(Q)}, ValueError, "out= takes calls without gradients"),
])
def test_bad_arguments(kw, exc, words):
    with pytest.raises(exc, match=None) as info:
        call(**kw)
    assert words in str(info.value)


def test_bad_cu_seqlens():
    q, k, v = Q[:1], K[:1], V[:1]
    cases = [
        (torch.tensor([0.0, 6.0]), TypeError, "cu_seqlens must be int32 or int64"),
        (torch.tensor([[0, 6]]), ValueError, "cu_seqlens must have shape [N+1]"),
        (torch.tensor([0, 4]), ValueError, "end at T=6"),
        (torch.tensor([1, 6]), ValueError, "start at 0"),
        (torch.tensor([0, 5, 3, 6]), ValueError, "non-decreasing"),
        ([0, 6], TypeError, "cu_seqlens must be a torch.Tensor"),
    ]
    for cu, exc, words in cases:
        with pytest.raises(exc) as info:
            ea_ops.ea_attention(q, k, v, cu_seqlens=cu)
        assert words in str(info.value)


def test_bad_states():
    good = ea_ops.EAState.empty(2, 3, 4, 6)
    with pytest.raises(ValueError, match=r"initial_state.S must have shape .* for order=4, got .*order 6"):
        call(order=4, initial_state=good)
    with pytest.raises(ValueError, match="initial_state needs causal=True"):
        call(causal=False, initial_state=good)
    with pytest.raises(TypeError, match="initial_state.S must be torch.float32"):
        call(initial_state=good.to(torch.float64))
    with pytest.raises(ValueError, match="initial_state.m must have shape"):
        call(initial_state=ea_ops.EAState(good.S, good.Z, good.m[:, :, :2]))
    with pytest.raises(ValueError, match=r"initial_state.S must have shape"):
        call(initial_state=ea_ops.EAState.empty(1, 3, 4, 6))
    with pytest.raises(ValueError, match="state.S must have shape"):
        ea_ops.ea_recurrent_step(Q[:, 0], K[:, 0], V[:, 0], ea_ops.EAState.empty(2, 3, 4, 2), order=6)
    with pytest.raises(ValueError, match=r"q_t must have shape \[B, H, D\]"):
        ea_ops.ea_recurrent_step(Q, K, V, None)


def test_mismatched_devices():
    meta = torch.empty(2, 6, 3, 4, device="meta")
    with pytest.raises(ValueError, match="v must be on the device of q"):
        ea_ops.ea_attention(Q, K, meta)


def test_exact_validates_too():
    with pytest.raises(ValueError, match="k must have the shape of q"):
        ea_ops.ea_attention_exact(Q, K[:, :3], V)
    with pytest.raises(ValueError, match="scale must be"):
        ea_ops.ea_attention_exact(Q, K, V, scale=0)


def test_float64_refused_on_compiled_backends():
    q, k, v = qkv((1, 4, 1, 2))
    with pytest.raises(TypeError, match="float64 inputs run on the torch backend only"):
        ea_ops.ea_attention(q, k, v, backend="tvm")


@pytest.mark.parametrize("causal", [True, False])
def test_empty_and_single_token(causal):
    for T in (0, 1):
        q, k, v = qkv((2, T, 3, 4))
        o, st = ea_ops.ea_attention(q, k, v, order=4, causal=causal, output_final_state=causal)
        assert o.shape == q.shape
        if T == 1:
            assert rel_err(o, v) < 1e-15  # one key: the output is its value
        if causal:
            assert st.S.shape == (2, 3, 5, 4)
            if T == 0:
                assert torch.isinf(st.m).all() and (st.S == 0).all()
    assert ea_ops.ea_attention_exact(*qkv((1, 0, 1, 1))).shape == (1, 0, 1, 1)


def test_empty_sequence_keeps_initial_state():
    q, k, v = qkv((1, 5, 1, 2))
    _, st = ea_ops.ea_attention(q, k, v, order=2, output_final_state=True)
    e = torch.empty(1, 0, 1, 2, dtype=torch.float64)
    _, st2 = ea_ops.ea_attention(e, e, e, order=2, initial_state=st, output_final_state=True)
    assert torch.equal(st.S, st2.S) and torch.equal(st.m, st2.m)


def test_non_contiguous_inputs():
    base = torch.randn(2, 3, 10, 8, dtype=torch.float64)  # [B, H, T, 2D]
    q = base[..., :4].transpose(1, 2)
    k = base[..., 4:].transpose(1, 2)
    v = torch.randn(2, 4, 10, 3, dtype=torch.float64).permute(0, 2, 3, 1)
    assert not (q.is_contiguous() or k.is_contiguous() or v.is_contiguous())
    o, _ = ea_ops.ea_attention(q, k, v, order=4)
    ref = naive_attention(q.contiguous(), k.contiguous(), v.contiguous(), order=4)
    assert rel_err(o, ref) < 1e-12


@pytest.mark.parametrize("shape", [(0, 5, 2, 3), (2, 5, 0, 3), (2, 5, 2, 0), (0, 0, 0, 0)])
@pytest.mark.parametrize("backend", ["torch", "tvm", "auto"])
def test_no_channels_give_empty_outputs_states_and_gradients(shape, backend):
    if backend == "tvm":
        pytest.importorskip("tvm")
    B, T, H, D = shape
    q, k, v = qkv(shape, dtype=torch.float32, requires_grad=True)
    for causal in (True, False):
        o, st = ea_ops.ea_attention(q, k, v, order=4, causal=causal, output_final_state=causal, backend=backend)
        assert o.shape == q.shape and o.dtype == q.dtype
        if causal:
            assert st.S.shape == st.Z.shape == (B, H, 5, D) and st.m.shape == (B, H, D)
        grads = torch.autograd.grad(o.sum(), (q, k, v))
        assert all(g.shape == q.shape for g in grads)
    o_t, st = ea_ops.ea_recurrent_step(q[:, 0] if T else q.sum(1), k.sum(1), v.sum(1), None, order=2,
                                       backend=backend)
    assert o_t.shape == (B, H, D) and st.S.shape == (B, H, 3, D)
    assert ea_ops.ea_attention_exact(q, k, v).shape == q.shape


def test_no_channels_with_cu_seqlens_and_an_initial_state():
    q = torch.zeros(1, 6, 0, 4)
    cu = torch.tensor([0, 2, 6])
    init = ea_ops.EAState.empty(2, 0, 4, 2)
    o, st = ea_ops.ea_attention(q, q, q, order=2, cu_seqlens=cu, initial_state=init, output_final_state=True)
    assert o.shape == q.shape and st.S.shape == (2, 0, 3, 4) and st.S is not init.S


def test_cu_seqlens_must_be_readable_on_the_host():
    q, k, v = Q[:1], K[:1], V[:1]
    with pytest.raises(ValueError, match="cu_seqlens must be on the CPU or on the device of q"):
        ea_ops.ea_attention(q, k, v, cu_seqlens=torch.tensor([0, 6], device="meta"))


def test_step_errors_name_the_step_arguments():
    q, k, v = qkv((2, 3, 4), dtype=torch.float32)
    cases = [
        ((q, k[..., :2], v), ValueError, "k_t must have the shape of q_t"),
        ((q, k, v.double()), TypeError, "v_t must have the dtype of q_t"),
        ((q[0], k, v), ValueError, "q_t must have shape [B, H, D]"),
        ((q.numpy(), k, v), TypeError, "q_t must be a torch.Tensor"),
    ]
    for args, exc, words in cases:
        with pytest.raises(exc) as info:
            ea_ops.ea_recurrent_step(*args, None, order=2)
        assert words in str(info.value)
    st = ea_ops.EAState.empty(2, 3, 4, 2, device="meta")
    with pytest.raises(ValueError, match="state.S must be on the device of q_t"):
        ea_ops.ea_recurrent_step(q, k, v, st, order=2)


@pytest.mark.parametrize("backend", ["torch", "tvm"])
def test_out_with_packed_sequences_a_state_and_no_channels(backend):
    if backend == "tvm":
        pytest.importorskip("tvm")
    q, k, v = qkv((1, 9, 2, 4), dtype=torch.float32)
    cu = torch.tensor([0, 4, 9])
    want, want_state = ea_ops.ea_attention(q, k, v, cu_seqlens=cu, output_final_state=True, backend=backend)
    out = torch.full_like(q, float("nan"))
    got, state = ea_ops.ea_attention(q, k, v, cu_seqlens=cu, output_final_state=True, backend=backend, out=out)
    assert got is out and rel_err(out, want) < 1e-6 and rel_err(state.S, want_state.S) < 1e-6
    with torch.no_grad():  # inputs that require grad are fine under no_grad
        qg = q.clone().requires_grad_()
        assert ea_ops.ea_attention(qg, k, v, backend=backend, out=out)[0] is out
    empty = torch.empty(1, 9, 0, 4)
    none = torch.empty_like(empty)
    assert ea_ops.ea_attention(empty, empty, empty, backend=backend, out=none)[0] is none
