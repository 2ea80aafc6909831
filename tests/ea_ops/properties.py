"""EA's properties (docs/math.md) as plain checks on one backend, shared by the Hypothesis tests of every
backend: in this process (torch, tvm: tests/ea_ops/test_properties.py) and under the Triton interpreter
(tests/ea_ops/triton_interp/interp_properties.py). Each check compares against the independent float64
formulas of ``ea_ops.naive`` or against the same backend on clean inputs, never a backend against itself alone.
"""

from __future__ import annotations

import contextlib
import math
from unittest import mock

import torch

import ea_ops
from ea_ops.backends.torch import kernels as torch_kernels
from ea_ops.naive import naive_attention
from tests.helpers import rel_err

EPS32 = torch.finfo(torch.float32).eps
# Max-norm relative error against the float64 formulas on the same inputs, rounded to the dtype first.
# float32: measured at most 16 eps (1.9e-6) over 160 draws (spreads <= 0.75, T < 100, orders 2 and 6, causal
# and not, torch and tvm backends); the tolerance is 8x that. float64: float64 rounding of the order-t sums.
TOL = {torch.float64: 1e-12, torch.float32: 128 * EPS32}
# How much later inputs may move earlier outputs: none, but for the torch backend's per-chunk stabilising
# reference (the chunk's smallest y^2), which rescales every earlier output of the chunk by rounding.
CAUSAL_TOL = {torch.float64: 1e-12, torch.float32: 16 * EPS32}


def make(shape, seed: int, spread: float, dtype=torch.float64):
    """``q, k ~ N(0, spread^2)``, ``v ~ N(0, 1)`` of ``shape``, in ``dtype``."""
    g = torch.Generator().manual_seed(seed)
    return tuple((torch.randn(shape, generator=g, dtype=torch.float64) * s).to(dtype) for s in (spread, spread, 1.0))


@contextlib.contextmanager
def torch_chunks(chunk: int | None):
    """Force the torch backend's chunk length, so short sequences still cross several chunk boundaries (where
    the state and the stabiliser are carried). ``None`` keeps the default."""
    if chunk is None:
        yield
        return
    with mock.patch.object(torch_kernels, "chunk_size", lambda n_rows, T: max(1, min(chunk, T))):
        yield


def attention(backend: str, q, k, v, **kw):
    """``ea_attention`` on ``backend``; the references too: ``"naive"`` (the float64 formula of EA-t) and
    ``"exact"`` (``ea_attention_exact``, which ignores the order)."""
    if backend == "naive":
        return naive_attention(q, k, v, order=kw["order"], causal=kw.get("causal", True)).to(q.dtype), None
    if backend == "exact":
        return ea_ops.ea_attention_exact(q, k, v, causal=kw.get("causal", True)), None
    return ea_ops.ea_attention(q, k, v, backend=backend, **kw)


def check_matches_naive(backend: str, q, k, v, *, order: int, causal: bool, scale: float = 1.0) -> None:
    """EA-t on ``backend`` equals the literal float64 formula within the dtype's tolerance."""
    o, _ = attention(backend, q, k, v, order=order, causal=causal, scale=scale)
    ref = naive_attention(q, k, v, order=order, causal=causal, scale=scale)
    err = rel_err(o, ref)
    assert err < TOL[q.dtype], f"{backend}: relative error {err:.3g} against float64 (tolerance {TOL[q.dtype]:.3g})"


def check_later_inputs_do_not_move_earlier_outputs(backend: str, q, k, v, *, order: int, i: int) -> None:
    """Causality: new values at positions > i leave outputs at positions <= i as they were."""
    o, _ = attention(backend, q, k, v, order=order)
    g = torch.Generator().manual_seed(i)
    changed = []
    for t in (q, k, v):
        t2 = t.clone()
        t2[:, i + 1:] = (torch.randn(t2[:, i + 1:].shape, generator=g, dtype=torch.float64) * 3).to(t.dtype)
        changed.append(t2)
    o2, _ = attention(backend, *changed, order=order)
    err = rel_err(o2[:, : i + 1], o[:, : i + 1])
    assert err < CAUSAL_TOL[q.dtype], f"{backend}: outputs up to {i} moved by {err:.3g}"


def check_non_finite_input_stays_causal(backend: str, q, k, v, *, order: int, causal: bool, which: int,
                                        pos: int, chan: tuple[int, int, int], value: float) -> None:
    """A NaN or Inf in ``(q, k, v)[which]`` at time ``pos`` and channel ``chan = (b, h, d)`` reaches only its
    own channel, and there (causal) only positions ``>= pos``; everything else keeps its clean value."""
    clean, _ = attention(backend, q, k, v, order=order, causal=causal)
    ins = [q.clone(), k.clone(), v.clone()]
    b, h, d = chan
    ins[which][b, pos, h, d] = value
    o, _ = attention(backend, *ins, order=order, causal=causal)
    tol = CAUSAL_TOL[q.dtype]
    same = torch.ones(o.shape, dtype=torch.bool)
    same[b, pos if causal else 0:, h, d] = False
    assert torch.isfinite(o[same]).all(), f"{backend}: a non-finite input at t={pos} reached other outputs"
    err = rel_err(o[same], clean[same]) if same.any() else 0.0
    assert err < tol, f"{backend}: outputs outside the reach of t={pos} moved by {err:.3g}"


def check_parallel_equals_recurrent_equals_split(backend: str, q, k, v, *, order: int, cut: int) -> None:
    """One parallel pass == T recurrent steps == two passes with the state handed off at ``cut``, and all
    equal the float64 formula."""
    T = q.shape[1]
    tol = TOL[q.dtype]
    o, final = attention(backend, q, k, v, order=order, output_final_state=True)
    ref = naive_attention(q, k, v, order=order)
    assert rel_err(o, ref) < tol
    state = None
    steps = []
    for i in range(T):
        o_i, state = ea_ops.ea_recurrent_step(q[:, i], k[:, i], v[:, i], state, order=order, backend=backend)
        steps.append(o_i)
    if T:
        assert rel_err(torch.stack(steps, 1), ref) < tol
        for a, b in zip((state.S, state.Z, state.m), (final.S, final.Z, final.m)):
            assert rel_err(a, b) < tol
    o1, s1 = attention(backend, q[:, :cut], k[:, :cut], v[:, :cut], order=order, output_final_state=True)
    o2, s2 = attention(backend, q[:, cut:], k[:, cut:], v[:, cut:], order=order, initial_state=s1,
                       output_final_state=True)
    assert rel_err(torch.cat([o1, o2], 1), ref) < tol
    assert rel_err(s2.S, final.S) < tol and rel_err(s2.Z, final.Z) < tol


def check_cu_seqlens_equals_separate_calls(backend: str, q, k, v, lengths: list[int], *, order: int,
                                           causal: bool, init: ea_ops.EAState | None) -> None:
    """Packed sequences (``cu_seqlens``) equal one call per sequence, each from its own initial state."""
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    o, fin = attention(backend, q, k, v, order=order, causal=causal, cu_seqlens=cu, initial_state=init,
                       output_final_state=causal)
    tol = TOL[q.dtype]
    for n, (b, e) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        st_n = None if init is None else ea_ops.EAState(init.S[n:n + 1], init.Z[n:n + 1], init.m[n:n + 1])
        o_n, f_n = attention(backend, q[:, b:e], k[:, b:e], v[:, b:e], order=order, causal=causal,
                             initial_state=st_n, output_final_state=causal)
        if e > b:
            assert rel_err(o[:, b:e], o_n) < tol
        if causal:
            assert rel_err(fin.S[n:n + 1], f_n.S) < tol and rel_err(fin.Z[n:n + 1], f_n.Z) < tol
            assert torch.equal(fin.m[n:n + 1], f_n.m)


def check_convex(backend: str, q, k, v, *, order: int, causal: bool) -> None:
    """Even orders: every output lies within the range of the values it averages."""
    o, _ = attention(backend, q, k, v, order=order, causal=causal)
    if causal:
        lo, hi = v.cummin(1).values, v.cummax(1).values
    else:
        lo, hi = v.amin(1, keepdim=True), v.amax(1, keepdim=True)
    slack = TOL[q.dtype] * (1 + v.abs().max())
    assert (o >= lo - slack).all() and (o <= hi + slack).all()


def check_scale_equals_prescaling(backend: str, q, k, v, *, order: int, causal: bool, scale: float) -> None:
    """``scale`` s equals running with ``sqrt(s) q, sqrt(s) k`` (both against the float64 formula)."""
    r = math.sqrt(scale)
    o, _ = attention(backend, q, k, v, order=order, causal=causal, scale=scale)
    ref = naive_attention(q * r, k * r, v, order=order, causal=causal)
    assert rel_err(o, ref) < TOL[q.dtype]
