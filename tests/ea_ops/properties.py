"""EA's properties on this library's backends, shared by the tests of every backend: in this process (torch,
tvm: tests/ea_ops/test_properties.py) and under the Triton interpreter
(tests/ea_ops/triton_interp/interp_properties.py).

The properties themselves live once, in ``analysis.properties.check_implementation`` (the checker any outside
implementation runs too): :func:`check` runs it on a backend and fails with its report. What is left here is
the library's own API beyond ``fn(q, k, v)``: packed sequences (``cu_seqlens``), checked against one call per
sequence.
"""

from __future__ import annotations

import contextlib
from unittest import mock

import torch

import ea_ops
from analysis.properties import PROPERTIES, Report, check_implementation  # noqa: F401  (re-exported)
from ea_ops.backends.torch import kernels as torch_kernels
from ea_ops.naive import naive_attention
from tests.helpers import rel_err

EPS32 = torch.finfo(torch.float32).eps
# cu_seqlens against separate calls: max-norm relative error. float32: the backends' measured error against
# the float64 formula was at most 16 eps (1.9e-6) over 160 draws (spreads <= 0.75, T < 100, orders 2 and 6,
# causal and not, torch and tvm backends); the tolerance is 8x that. float64: float64 rounding of the sums.
TOL = {torch.float64: 1e-12, torch.float32: 128 * EPS32}


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
        return naive_attention(q, k, v, order=kw["order"], causal=kw.get("causal", True),
                               scale=kw.get("scale", 1.0)).to(q.dtype), None
    if backend == "exact":
        return ea_ops.ea_attention_exact(q, k, v, causal=kw.get("causal", True), scale=kw.get("scale", 1.0)), None
    return ea_ops.ea_attention(q, k, v, backend=backend, **kw)


def implementation(backend: str, *, order: int, causal: bool, scale: float = 1.0, chunk: int | None = None,
                   context=contextlib.nullcontext):
    """``(fn, step_fn)`` for :func:`analysis.properties.check_implementation`: ``backend`` (or ``"naive"``,
    ``"exact"``) at ``order``, ``causal``, ``scale``, with the torch chunk length forced to ``chunk`` and every
    call inside ``context()`` (a forced Triton configuration). ``fn`` takes ``initial_state=`` and returns the
    final state when causal; ``step_fn`` is ``None`` for the references."""

    stateful = causal and backend not in ("naive", "exact")

    def fn(q, k, v, initial_state=None):
        kw = {"initial_state": initial_state, "output_final_state": True} if stateful else {}
        with torch_chunks(chunk), context():
            return attention(backend, q, k, v, order=order, causal=causal, scale=scale, **kw)

    def step_fn(q_t, k_t, v_t, state):
        with torch_chunks(chunk), context():
            return ea_ops.ea_recurrent_step(q_t, k_t, v_t, state, order=order, scale=scale, backend=backend)

    return fn, (step_fn if stateful else None)


def check(backend: str, *, order: int | None, causal: bool, scale: float = 1.0, chunk: int | None = None,
          context=contextlib.nullcontext, **kw) -> Report:
    """Every property of ``analysis.properties`` (or ``properties=[...]``) on ``backend``; fails with the
    report (its shrunk counterexamples) unless all hold."""
    fn, step_fn = implementation(backend, order=order, causal=causal, scale=scale, chunk=chunk, context=context)
    report = check_implementation(fn, order=order, causal=causal, scale=scale, step_fn=step_fn, **kw)
    assert report.passed, f"{backend}:\n{report}"
    return report


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
