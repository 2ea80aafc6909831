"""``backend="triton"`` through the public API under the interpreter: dispatch, autograd, states that cross
backends (torch prefill -> triton decode and back), custom ops, configuration choice, and the tuner."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

import ea_ops
from ea_ops import dispatch, records
from ea_ops.backends import common
from ea_ops.backends.triton import backend, configs, cuda_kernels
from ea_ops.backends.triton.ops import forward_op
from ea_ops.backends.triton.target import fingerprint
from ea_ops.state import EAState
from tests.ea_ops.triton_interp.common import DTYPES, TOL, inputs, random_state, rel, state_rel


@pytest.fixture(autouse=True)
def _poison():
    with common.poison_outputs():
        yield


def test_cpu_tensors_are_supported_but_not_preferred():
    q = torch.zeros(1, 4, 1, 2)
    assert backend.supports(q, causal=True, order=6, needs_grad=True) is None
    assert backend.prefers(q, 6) is False
    assert dispatch.resolve("auto", q, causal=True, order=6, needs_grad=False).NAME != "triton"
    assert "order 16" in backend.supports(q, causal=True, order=16, needs_grad=False)
    assert "dtype" in backend.supports(q.double(), causal=True, order=6, needs_grad=False)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("causal", [True, False])
def test_attention_and_gradients_match_torch_backend(causal, dtype):
    dt = DTYPES[dtype]
    q, k, v = (t.requires_grad_() for t in inputs((2, 14, 2, 4), dt, seed=30))
    qf, kf, vf = (t.detach().float().requires_grad_() for t in (q, k, v))
    o, st = ea_ops.ea_attention(q, k, v, order=6, causal=causal, scale=0.9, backend="triton",
                                output_final_state=causal)
    ref, ref_st = ea_ops.ea_attention(qf, kf, vf, order=6, causal=causal, scale=0.9, backend="torch",
                                      output_final_state=causal)
    assert rel(o, ref) < TOL[dt]
    if causal:
        assert isinstance(st, EAState) and st.S.dtype == torch.float32
        assert state_rel((st.S, st.Z, st.m), ref_st) < TOL[torch.float32]
    else:
        assert st is None
    g = torch.randn(o.shape, generator=torch.Generator().manual_seed(31)).to(dt)
    got = torch.autograd.grad(o, (q, k, v), g)
    want = torch.autograd.grad(ref, (qf, kf, vf), g.float())
    for name, a, b in zip(("dq", "dk", "dv"), got, want):
        assert rel(a, b) < TOL[dt], name


def test_cu_seqlens_with_initial_and_final_state():
    cu = torch.tensor([0, 6, 6, 17], dtype=torch.int32)
    q, k, v = inputs((1, 17, 2, 3), torch.float32, seed=32)
    init = random_state(3, 2, 3, 4, seed=33)
    o, st = ea_ops.ea_attention(q, k, v, order=4, initial_state=init, output_final_state=True, cu_seqlens=cu,
                                backend="triton")
    ref, ref_st = ea_ops.ea_attention(q, k, v, order=4, initial_state=init, output_final_state=True,
                                      cu_seqlens=cu, backend="torch")
    assert rel(o, ref) < TOL[torch.float32]
    assert state_rel((st.S, st.Z, st.m), ref_st) < TOL[torch.float32]


@pytest.mark.parametrize("T", [0, 1])
def test_empty_and_single_token(T):
    q, k, v = inputs((2, T, 1, 3), torch.float32, seed=34)
    init = random_state(2, 1, 3, 2, seed=35)
    o, st = ea_ops.ea_attention(q, k, v, order=2, initial_state=init, output_final_state=True, backend="triton")
    ref, ref_st = ea_ops.ea_attention(q, k, v, order=2, initial_state=init, output_final_state=True,
                                      backend="torch")
    assert o.shape == q.shape
    if T:
        assert rel(o, ref) < TOL[torch.float32]
    assert state_rel((st.S, st.Z, st.m), ref_st) < TOL[torch.float32]


def test_torch_prefill_then_triton_decode_and_back():
    B, T0, T, H, D, order = 2, 9, 14, 2, 3, 6
    q, k, v = inputs((B, T, H, D), torch.float32, seed=36)
    full, _ = ea_ops.ea_attention(q, k, v, order=order, backend="torch")
    _, st = ea_ops.ea_attention(q[:, :T0], k[:, :T0], v[:, :T0], order=order, output_final_state=True,
                                backend="torch")
    outs = []
    for t in range(T0, T):
        o_t, st = ea_ops.ea_recurrent_step(q[:, t], k[:, t], v[:, t], st, order=order, backend="triton")
        outs.append(o_t)
    assert rel(torch.stack(outs, 1), full[:, T0:]) < TOL[torch.float32]
    # triton prefill (chunked and scan give the same state), torch decode
    for cfg in ({"variant": "chunked", "num_warps": 1, "chunk": 4}, {"variant": "scan", "num_warps": 1}):
        with configs.forced(cfg, "forward"):
            _, st2 = ea_ops.ea_attention(q[:, :T0], k[:, :T0], v[:, :T0], order=order, output_final_state=True,
                                         backend="triton")
        o_t, _ = ea_ops.ea_recurrent_step(q[:, T0], k[:, T0], v[:, T0], st2, order=order, backend="torch")
        assert rel(o_t, full[:, T0]) < TOL[torch.float32]


class _Counting:
    """Counts launches of a kernel (``kernel[grid](...)``) and passes them on."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __getitem__(self, grid):
        self.calls += 1
        return self.fn[grid]


@pytest.mark.parametrize("variant", ["scan", "chunked"])
def test_forced_and_default_configurations_are_what_runs(variant, monkeypatch):
    spy = _Counting(cuda_kernels.ea_chunk_prefix)
    monkeypatch.setattr(cuda_kernels, "ea_chunk_prefix", spy)
    q, k, v = inputs((1, 40, 1, 2), torch.float32, seed=37)
    cfg = {"variant": variant, "num_warps": 1, **({"chunk": 16} if variant == "chunked" else {})}
    with configs.forced(cfg, "forward"):
        ea_ops.ea_attention(q, k, v, order=2, backend="triton")
    assert spy.calls == (1 if variant == "chunked" else 0)
    # the untuned default for 2 channels and T = 40 splits T (far fewer than 2^17 lanes)
    spy.calls = 0
    ea_ops.ea_attention(q, k, v, order=2, backend="triton")
    assert configs.default("forward", causal=True, HD=2, n_seqs=1, rows=40)["variant"] == "chunked"
    assert spy.calls == 1


def test_a_chunked_backward_takes_the_chunk_reverse_sums_from_the_dx_scan(monkeypatch):
    # one reverse scan (the gradients), not two: each chunk's own reverse sums come out of ea_bwd_dx_scan
    spies = {name: _Counting(getattr(cuda_kernels, name)) for name in ("ea_bwd_dx_scan", "ea_bwd_rev_scan")}
    for name, spy in spies.items():
        monkeypatch.setattr(cuda_kernels, name, spy)
    q, k, v = inputs((1, 40, 1, 2), torch.float32, seed=39)
    q.requires_grad_()
    with configs.forced({"variant": "chunked", "num_warps": 1, "chunk": 16}, "backward"):
        ea_ops.ea_attention(q, k, v, order=2, backend="triton")[0].sum().backward()
    assert (spies["ea_bwd_dx_scan"].calls, spies["ea_bwd_rev_scan"].calls) == (1, 1)


def test_custom_op_opcheck():
    q, k, v = inputs((1, 6, 1, 2), torch.float32, seed=38)
    st = EAState.empty(1, 1, 2, 2)
    args = (q.requires_grad_(), k, v, st.S, st.Z, st.m, 2, True, 1.0, [], True)
    torch.library.opcheck(forward_op, args)


def test_torch_compile_without_graph_breaks():
    # the backend's entry point (the public ea_attention resolves its backend with importlib first)
    q, k, v = inputs((1, 5, 1, 2), torch.float32, seed=39)

    def f(q, k, v):
        o, _ = backend.attention(q, k, v, order=2, causal=True, scale=1.0, initial_state=None,
                                 output_final_state=False, cu_seqlens=None)
        return o * 2

    torch._dynamo.reset()
    got = torch.compile(f, backend="aot_eager", fullgraph=True)(q, k, v)
    assert torch.equal(got, f(q, k, v))  # the same kernels on the same inputs


def test_tuner_writes_records_the_runtime_applies(tmp_path, monkeypatch):
    from schedules.triton import cli_tune

    monkeypatch.setenv("EA_OPS_CACHE_DIR", str(tmp_path))
    args = argparse.Namespace(target="cpu", orders=[2], trials=3, time_budget=None, workloads="interp",
                              out=None, json=True)
    assert cli_tune.run(args) == 0
    fp = fingerprint("cpu")
    assert fp.startswith("interpreter-cpu-triton")
    recs = records.load_records("triton", fp)
    assert {(r["kernel"]["name"], r["kernel"]["causal"]) for r in recs} == {("forward", True), ("step", True)}
    for rec in recs:
        assert set(rec["workload"]) <= {"HD", "lanes", "T_bucket"}  # never T itself
        assert rec["latency_us"]["chosen"] <= rec["latency_us"]["default"]
        assert configs.validate(rec["kernel"]["name"], rec["config"]) == rec["config"]
    fwd = next(r for r in recs if r["kernel"]["name"] == "forward")
    # a call in the record's buckets (another T in the same power-of-4 bucket) gets the record's config
    got = configs.choose("forward", causal=True, order=2, dtype="float32", HD=32, n_seqs=1, rows=60, fp=fp)
    assert got == fwd["config"]
    # resumable: a second run measures nothing new
    out = cli_tune.run(args)
    assert out == 0
    assert len(records.load_records("triton", fp)) == len(recs)
    summary = json.loads(json.dumps(fwd))  # records are plain JSON data
    assert summary["fingerprint"] == fp


def test_decoder_steps_equal_ea_recurrent_step_and_update_the_state_in_place():
    B, H, D, order = 2, 2, 3, 4
    q, k, v = inputs((B, 4, H, D), torch.float32, seed=38)
    state = random_state(B, H, D, order, seed=39)
    ptrs = [t.data_ptr() for t in (state.S, state.Z, state.m)]
    ref = state.clone()
    dec = ea_ops.EADecoder(state, order=order, backend="triton")
    for t in range(4):
        q_t = q[:, t].clone().requires_grad_(t == 2)  # a step with grads runs on a copy of the state
        o_ref, ref = ea_ops.ea_recurrent_step(q_t, k[:, t], v[:, t], ref, order=order, backend="triton")
        o = dec.step(q_t, k[:, t], v[:, t])
        assert torch.equal(o, o_ref) and o.requires_grad == (t == 2)
        assert all(torch.equal(a, b) for a, b in ((state.S, ref.S), (state.Z, ref.Z), (state.m, ref.m)))
    assert [t.data_ptr() for t in (state.S, state.Z, state.m)] == ptrs
