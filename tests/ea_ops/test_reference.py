"""The torch backend and the exact reference against the literal float64 formulas (ea_ops.naive)."""

import pytest
import torch

import ea_ops
from ea_ops.backends.torch import kernels as torch_kernels
from ea_ops.backends.torch import ops as torch_ops
from ea_ops.naive import naive_attention
from tests.helpers import qkv, rel_err


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("order", [0, 2, 4, 6, 8, 12, 16])
@pytest.mark.parametrize("chunk", [5, 64])
@pytest.mark.parametrize("max_spread", [None, -1.0])  # default, or every chunk on the C x C path
def test_taylor_matches_naive(causal, order, chunk, max_spread, monkeypatch):
    if max_spread is not None:
        monkeypatch.setattr(torch_kernels, "_max_spread", lambda dtype: max_spread)
    q, k, v = qkv((2, 37, 3, 4), seed=order)
    o, _ = torch_ops.attention(q, k, v, order=order, causal=causal, scale=0.8, initial_state=None,
                                   output_final_state=False, cu_seqlens=None, chunk=chunk)
    ref = naive_attention(q, k, v, order=order, causal=causal, scale=0.8)
    assert rel_err(o, ref) < 1e-12


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("scale", [0.3, 1.0, 2.5])
def test_exact_matches_naive(causal, scale):
    q, k, v = qkv((2, 300, 2, 3), seed=1)
    o = ea_ops.ea_attention_exact(q, k, v, causal=causal, scale=scale)
    ref = naive_attention(q, k, v, order=None, causal=causal, scale=scale)
    assert rel_err(o, ref) < 1e-12


def test_exact_far_apart_inputs_stay_finite():
    # exp(-(q-k)^2) underflows for |q-k| > ~27 even in float64; the row-max shift keeps the ratio.
    q, k, v = qkv((1, 16, 1, 2), seed=2)
    o = ea_ops.ea_attention_exact(q, k + 40.0, v)
    assert torch.isfinite(o).all()
    assert (o >= v.cummin(1).values - 1e-12).all() and (o <= v.cummax(1).values + 1e-12).all()


def test_high_order_converges_to_exact():
    q, k, v = qkv((1, 64, 2, 4), scale_q=0.5, scale_k=0.5, seed=3)
    exact = ea_ops.ea_attention_exact(q, k, v)
    errs = [rel_err(ea_ops.ea_attention(q, k, v, order=t)[0], exact) for t in (2, 6, 12, 20, 28)]
    assert all(b < a for a, b in zip(errs, errs[1:])), errs
    assert errs[-1] < 1e-14  # at t = 28 only float64 rounding is left


def _poisoned(monkeypatch):
    """The torch backend's output buffers start as NaN, so any position a scan leaves unwritten shows."""
    monkeypatch.setattr(torch_kernels, "new_out", lambda x, *shape: x.new_full(shape, float("nan")))


def _outputs_and_grads(causal: bool):
    q, k, v = qkv((1, 131, 1, 3), seed=4, requires_grad=True)
    o, _ = ea_ops.ea_attention(q, k, v, order=4, causal=causal, backend="torch")
    o.backward(torch.ones_like(o))
    return o, q.grad, k.grad, v.grad


@pytest.mark.parametrize("causal", [True, False])
def test_torch_backend_writes_every_output_and_gradient(causal, monkeypatch):
    _poisoned(monkeypatch)
    for t in _outputs_and_grads(causal):
        assert torch.isfinite(t).all()


@pytest.mark.parametrize("causal", [True, False])
def test_the_poisoned_check_catches_a_scan_that_skips_its_last_chunk(causal, monkeypatch):
    # The mutant: every scan walks all chunks but the last. Without the NaN poison its outputs would be
    # whatever the allocator left there (often zeros or old values), and the check above would pass.
    _poisoned(monkeypatch)
    walk = torch_kernels.chunks
    monkeypatch.setattr(torch_kernels, "chunks", lambda T, chunk: walk(T, chunk)[:-1])
    o, *grads = _outputs_and_grads(causal)
    assert torch.isnan(o[:, -1]).all()
    assert any(not torch.isfinite(g).all() for g in grads)
