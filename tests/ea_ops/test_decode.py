"""``ea_ops.EADecoder``: decoding with a state updated in place. Bit for bit ``ea_recurrent_step``'s outputs and
states on every backend, the caller's state tensors updated with nothing else allocated, errors naming the
argument, gradients through a copy of the state, and the backend and kernel chosen once."""

from __future__ import annotations

import math

import pytest
import torch

import ea_ops
from ea_ops import EADecoder, EAState, decode
from ea_ops.backends import common
from tests.helpers import qkv

B, H, D, ORDER = 3, 2, 8, 4


def _tvm():
    pytest.importorskip("tvm")


def _prefix_state(dtype=torch.float32, order=ORDER) -> EAState:
    """A state after a few tokens (not the empty one: the decay of the sums is exercised)."""
    q, k, v = qkv((B, 5, H, D), dtype=dtype, scale_q=0.5, scale_k=0.5, seed=1)
    _, st = ea_ops.ea_attention(q, k, v, order=order, output_final_state=True, backend="torch")
    return st


def _tokens(n: int, dtype: torch.dtype, seed: int = 2):
    q, k, v = qkv((B, n, H, D), dtype=dtype, scale_q=0.5, scale_k=0.5, seed=seed)
    return [(q[:, t], k[:, t], v[:, t]) for t in range(n)]  # non-contiguous views, as a model slices them


def _same(a: EAState, b: EAState) -> bool:
    return all(torch.equal(x, y) for x, y in ((a.S, b.S), (a.Z, b.Z), (a.m, b.m)))


@pytest.mark.parametrize("backend, dtype", [
    ("torch", torch.float32), ("torch", torch.float64), ("torch", torch.bfloat16),
    ("tvm", torch.float32), ("tvm", torch.bfloat16), ("tvm", torch.float16), ("auto", torch.float32)])
def test_steps_equal_ea_recurrent_step_bit_for_bit(backend, dtype):
    if backend == "tvm":
        _tvm()
    state = _prefix_state(torch.float64 if dtype == torch.float64 else torch.float32)
    ref = state.clone()
    dec = EADecoder(state, order=ORDER, scale=0.8, backend=backend)
    with common.poison_outputs():
        for q, k, v in _tokens(6, dtype):
            o_ref, ref = ea_ops.ea_recurrent_step(q, k, v, ref, order=ORDER, scale=0.8, backend=backend)
            o = dec.step(q, k, v)
            assert o.dtype == dtype and o.shape == (B, H, D) and torch.isfinite(o).all()
            assert torch.equal(o, o_ref)
            assert dec.state is state and _same(state, ref)


def test_the_callers_state_is_updated_in_place():
    state = EAState.empty(B, H, D, ORDER)
    ptrs = [t.data_ptr() for t in (state.S, state.Z, state.m)]
    dec = EADecoder(state, order=ORDER, backend="torch")
    (q, k, v), = _tokens(1, torch.float32)
    dec.step(q, k, v)
    assert [t.data_ptr() for t in (state.S, state.Z, state.m)] == ptrs
    assert torch.isfinite(state.m).all() and state.Z.abs().sum() > 0  # no longer the empty state
    dec.reset()
    assert _same(state, EAState.empty(B, H, D, ORDER))


def _allocated_bytes(fn) -> int:
    """Bytes allocated on the CPU while ``fn`` runs (the profiler's memory events, each counted once)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return sum(e.self_cpu_memory_usage for e in prof.events() if e.self_cpu_memory_usage > 0)


def test_tvm_steps_allocate_only_the_output_and_choose_the_kernel_once(monkeypatch):
    _tvm()
    from ea_ops.backends.tvm import build

    steps = [tuple(t.contiguous() for t in s) for s in _tokens(4, torch.float32)]
    dec = EADecoder(_prefix_state(), order=ORDER, backend="tvm")
    dec.step(*steps[0])  # checks everything, chooses the backend and builds the kernel
    out_bytes = B * H * D * 4
    # what a step through ea_recurrent_step allocates besides the output: a new state
    default = _allocated_bytes(lambda: ea_ops.ea_recurrent_step(*steps[1], dec.state, order=ORDER, backend="tvm"))
    assert default >= out_bytes + 4 * (2 * (ORDER + 1) + 1) * B * H * D
    for name in ("resolve", "choose"):
        if hasattr(decode.dispatch, name):
            monkeypatch.setattr(decode.dispatch, name, lambda *a, **k: pytest.fail("chose the backend again"))
    monkeypatch.setattr(build, "kernel_for", lambda *a, **k: pytest.fail("looked the kernel up again"))
    monkeypatch.setattr(decode, "ea_recurrent_step", lambda *a, **k: pytest.fail("took the checked path"))
    assert _allocated_bytes(lambda: dec.step(*steps[2])) == out_bytes
    dec.step(*steps[3])


@pytest.mark.parametrize("backend", ["torch", "tvm"])
def test_grads_go_through_a_copy_of_the_state_and_match_the_default_path(backend):
    if backend == "tvm":
        _tvm()
    state = _prefix_state()
    ref = state.clone()
    dec = EADecoder(state, order=ORDER, backend=backend)
    q, k, v = qkv((B, H, D), dtype=torch.float32, scale_q=0.5, scale_k=0.5, seed=5, requires_grad=True)
    outs = []
    for grad in (False, True, False):  # the first step sets up the fast path, which a step with grads must leave
        with torch.set_grad_enabled(grad):  # the last one moves the state on before the backward
            o_ref, ref = ea_ops.ea_recurrent_step(q, k, v, ref, order=ORDER, backend=backend)
            o = dec.step(q, k, v)
        assert o.requires_grad == grad and torch.equal(o, o_ref) and _same(state, ref)
        outs.append((o, o_ref))
    (o, o_ref) = outs[1]
    grads, grads_ref = (torch.autograd.grad(t.sum(), (q, k, v)) for t in (o, o_ref))
    assert all(torch.equal(a, b) for a, b in zip(grads, grads_ref))


def test_a_later_call_with_other_inputs_is_checked_again():
    _tvm()
    dec = EADecoder(_prefix_state(), order=ORDER, backend="tvm")
    (q, k, v), = _tokens(1, torch.float32)
    dec.step(q, k, v)
    with pytest.raises(ValueError, match=r"q_t must have shape \[B, H, D\] = \[3, 2, 8\] \(the decoder's state\)"):
        dec.step(q[:1], k[:1], v[:1])
    with pytest.raises(TypeError, match="k_t must have the dtype of q_t"):
        dec.step(q, k.half(), v)
    with pytest.raises(TypeError, match="v_t must be a torch.Tensor"):
        dec.step(q, k, v.tolist())
    with pytest.raises(TypeError, match=r"state.S must be torch.float64 for torch.float64 inputs"):
        dec.step(q.double(), k.double(), v.double())
    before = dec.state.clone()
    o = dec.step(q.half(), k.half(), v.half())  # another dtype: checked, then its own fast path
    o_ref, ref = ea_ops.ea_recurrent_step(q.half(), k.half(), v.half(), before, order=ORDER, backend="tvm")
    assert torch.equal(o, o_ref) and _same(dec.state, ref)


def _state(**change) -> EAState:
    st = EAState.empty(B, H, D, ORDER)
    return EAState(**{"S": st.S, "Z": st.Z, "m": st.m, **change})


@pytest.mark.parametrize("state, kw, exc, message", [
    ((1, 2, 3), {}, TypeError, "state must be an ea_ops.EAState, got tuple"),
    (_state(Z=None), {}, TypeError, "state.Z must be a torch.Tensor, got NoneType"),
    (_state(S=torch.zeros(B, H, ORDER + 1, D, dtype=torch.float16)), {}, TypeError,
     r"state.S must be float32 \(float64 for float64 inputs\), got torch.float16"),
    (_state(m=torch.zeros(B, H, D, dtype=torch.float64)), {}, TypeError, "state.m must be torch.float32"),
    (_state(S=torch.zeros(B, H, D)), {}, ValueError, r"state.S must have shape \[B, H, order\+1, D\], got \[3, 2, 8\]"),
    (_state(), {"order": 6}, ValueError, r"state.S must have shape \[B, H, order\+1, D\] = \[3, 2, 7, 8\] for order=6"),
    (_state(Z=torch.zeros(B, H, ORDER + 1, D + 1)), {}, ValueError, "state.Z must have shape"),
    (_state(m=torch.zeros(B, H)), {}, ValueError, r"state.m must have shape \[B, H, D\]"),
    (_state(m=torch.zeros(B, H, D, device="meta")), {}, ValueError, r"state.m must be on the device of state.S"),
    (_state(S=torch.zeros(D, ORDER + 1, H, B).permute(3, 2, 1, 0)), {}, ValueError,
     "state.S must be contiguous to be updated in place"),
    (_state(m=torch.zeros(B, H, D, requires_grad=True)), {}, ValueError, "state.m requires grad"),
    (_state(Z=_state().S), {}, None, None),  # separate tensors of equal values: fine
    (EAState(*(lambda S: (S, S, torch.zeros(B, H, D)))(torch.zeros(B, H, ORDER + 1, D))), {}, ValueError,
     "state.S and state.Z share memory"),
    (_state(m=torch.zeros(B, D, H).transpose(1, 2)), {}, ValueError, "state.m must be contiguous"),
    (EAState(*(lambda flat: (flat[:B * H * (ORDER + 1) * D].view(B, H, ORDER + 1, D),
                             flat[B * H * (ORDER + 1) * D:2 * B * H * (ORDER + 1) * D].view(B, H, ORDER + 1, D),
                             flat[-B * H * D - 1:-1].view(B, H, D)))(torch.zeros(2 * B * H * (ORDER + 1) * D + 5))),
     {}, ValueError, "state.Z and state.m share memory"),
    (_state(), {"order": 3}, ValueError, "order must be even"),
    (_state(), {"scale": 0.0}, ValueError, "scale must be a finite number > 0"),
    (_state(), {"backend": "cuda"}, ValueError, "backend must be one of"),
])
def test_bad_states_and_arguments_name_what_is_wrong(state, kw, exc, message):
    kw = {"order": ORDER, **kw}
    if exc is None:
        EADecoder(state, **kw)
        return
    with pytest.raises(exc, match=message):
        EADecoder(state, **kw)


@pytest.mark.parametrize("shape", [(0, H, D), (B, 0, D), (B, H, 0)])
def test_no_channel_gives_an_empty_output_and_leaves_the_state(shape):
    b, h, d = shape
    state = EAState.empty(b, h, d, ORDER)
    dec = EADecoder(state, order=ORDER)
    q = torch.randn(shape, requires_grad=True)
    o = dec.step(q, torch.randn(shape), torch.randn(shape))
    assert o.shape == shape and dec.state is state
    o.sum().backward()
    assert q.grad.shape == shape


def test_float64_runs_the_torch_backend_only():
    dec = EADecoder(_prefix_state(torch.float64), order=ORDER, backend="tvm")
    (q, k, v), = _tokens(1, torch.float64)
    with pytest.raises(TypeError, match="float64 inputs run on the torch backend only"):
        dec.step(q, k, v)


def test_reset_starts_over():
    steps = _tokens(3, torch.float32)
    dec = EADecoder(EAState.empty(B, H, D, ORDER), order=ORDER, backend="torch")
    first = [dec.step(*s) for s in steps]
    dec.reset()
    assert all(torch.equal(dec.step(*s), o) for s, o in zip(steps, first))
    assert not math.isinf(dec.state.m.max().item())


def test_under_torch_compile_the_state_is_updated_in_place_too():
    _tvm()
    steps = _tokens(3, torch.float32)
    state = _prefix_state()
    ref = state.clone()
    dec = EADecoder(state, order=ORDER, backend="tvm")
    compiled = torch.compile(dec.step, fullgraph=True)  # the custom op, then a copy into the state
    for q, k, v in steps:
        o_ref, ref = ea_ops.ea_recurrent_step(q, k, v, ref, order=ORDER, backend="tvm")
        assert torch.equal(compiled(q, k, v), o_ref) and _same(state, ref)
