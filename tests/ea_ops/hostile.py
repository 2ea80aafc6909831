"""Hostile inputs shared by the TVM tests (tests/ea_ops/test_tvm_hostile.py) and the Triton interpreter tests
(tests/ea_ops/triton_interp/interp_hostile.py), issue 10: strided layouts of every tensor a call takes (the
backend must give on them exactly what it gives on contiguous copies), second derivatives (the torch backend's), the
recurrent step's gradients, zero-size shapes, non-finite inputs (they stay in their channel and, causal, after
their position) and large keys (finite, and as the float64 reference)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from hypothesis import strategies as st

import ea_ops
from ea_ops.backends.torch import backend as torch_backend
from ea_ops.state import EAState
from tests.helpers import rel_err

# Gradients and second derivatives of a float32 call against the torch backend in float64 (order 2, T = 5,
# check_double_backward_matches_torch): measured at most 1.04e-6 (TVM); tolerance about 10x.
GRAD_TOL = 1e-5
EPS32 = torch.finfo(torch.float32).eps
# One float32 recurrent step (order 4, |q|, |k| ~ 0.7) against the torch backend in float64, max-norm relative
# error of o, dq, dk, dv over 30 seeds: measured at most 6.2 eps (TVM) and 10.9 eps (Triton, interpreter);
# tolerance 8x the larger.
STEP_TOL = 88 * EPS32
# From the empty state dq and dk vanish; what is left is the rounding of the cancelling terms, which are
# O(|g|): measured at most 1.9e-6 (TVM) and 5.1e-6 (Triton) of max|g| over 30 seeds; tolerance 8x the larger.
STEP_ZERO_GRAD_TOL = 4e-5


@dataclass(frozen=True)
class Layout:
    """How a tensor lies in memory: ``perm`` lists the logical dims outermost first, ``steps[d]`` keeps every
    ``steps[d]``-th element of a padded dim ``d`` (a slice with a step), ``offset`` is the storage offset and
    ``expand`` a dim broadcast with stride 0 (``None``: none)."""

    perm: tuple[int, ...]
    steps: tuple[int, ...]
    offset: int
    expand: int | None


def layouts(rank: int, expand_dims: tuple[int, ...] | None = None):
    """Layouts of a rank-``rank`` tensor: transposes, channels-last-like permutations, sliced steps, storage
    offsets, stride-0 expansion along one of ``expand_dims`` (default: any dim), and plain contiguous."""
    dims = tuple(range(rank)) if expand_dims is None else expand_dims
    return st.builds(
        Layout,
        perm=st.permutations(range(rank)).map(tuple),
        steps=st.lists(st.sampled_from([1, 1, 2, 3]), min_size=rank, max_size=rank).map(tuple),
        offset=st.integers(0, 3),
        expand=st.sampled_from((None, *dims)),
    )


def strided(x: torch.Tensor, layout: Layout) -> torch.Tensor:
    """A leaf tensor with the values of ``x`` (along ``layout.expand``: its first slice, repeated) laid out as
    ``layout`` says; every storage element the view skips is NaN, so a kernel that ignores the strides reads
    NaN."""
    expand = layout.expand if layout.expand is not None and x.shape[layout.expand] > 0 else None
    src = x if expand is None else x.narrow(expand, 0, 1)
    padded = [src.shape[d] * layout.steps[d] for d in layout.perm]
    flat = torch.full((layout.offset + math.prod(padded),), math.nan, dtype=x.dtype)
    phys = flat[layout.offset:].view(padded)
    view = phys.permute([layout.perm.index(d) for d in range(x.dim())])
    view = view[tuple(slice(None, None, s) for s in layout.steps)]
    view.copy_(src)
    if expand is not None:
        view = view.expand(x.shape)
    return view.detach()


def true_state(n: int, H: int, D: int, order: int, seed: int) -> EAState:
    """The torch backend's state after 4 random tokens (float32)."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(n, 4, H, D, generator=g) * 0.7 for _ in range(3))
    _, st = torch_backend.attention(q, k, v, order=order, causal=True, scale=1.0, initial_state=None,
                                    output_final_state=True, cu_seqlens=None)
    return st


@st.composite
def stride_cases(draw, heads=(1, 2), dims=(1, 3)):
    """A call of every entry point with a drawn layout for each tensor it takes."""
    varlen = draw(st.booleans())
    B = 1 if varlen else draw(st.integers(1, 2))
    T = draw(st.integers(0, 5))
    H, D = draw(st.sampled_from(heads)), draw(st.sampled_from(dims))
    cuts = sorted(draw(st.lists(st.integers(0, T), max_size=2))) if varlen else None
    seq = [layouts(4) for _ in range(4)]  # q, k, v, g
    state = [layouts(4, (0, 1)), layouts(4, (0, 1)), layouts(3, (0, 1))]  # S, Z, m: expanded over B or H only
    tok = [layouts(3) for _ in range(4)]  # q_t, k_t, v_t, g_t
    return dict(
        shape=(B, T, H, D), causal=draw(st.booleans()), order=draw(st.sampled_from([0, 2])),
        cu=None if cuts is None else [0, *cuts, T], seed=draw(st.integers(0, 2**16)),
        seq=[draw(s) for s in seq], state=[draw(s) for s in state], tok=[draw(s) for s in tok],
    )


def check_double_backward_matches_torch(backend: str, causal: bool) -> None:
    """Under ``create_graph=True`` a compiled backend's gradients are differentiable (the torch backend's
    formulas, ``common.graphed_grads``): first derivatives equal the plain ones to rounding, and second
    derivatives (a backward through the gradients) match the torch backend's in float64, which
    tests/ea_ops/test_gradients.py checks with ``gradgradcheck``. The recurrent step too."""
    g = torch.Generator().manual_seed(40)
    q, k, v = (torch.randn(1, 5, 1, 2, generator=g).requires_grad_() for _ in range(3))
    go = torch.randn(q.shape, generator=g)
    ws = [torch.randn(q.shape, generator=g) for _ in range(3)]

    def second(backend, q, k, v, step=False):
        if step:  # the last token from the state of the first four (from the empty state dq and dk vanish)
            _, st = ea_ops.ea_attention(*(t.detach()[:, :4] for t in (q, k, v)), order=2, backend="torch",
                                        output_final_state=True)
            o, _ = ea_ops.ea_recurrent_step(q[:, 4], k[:, 4], v[:, 4], st, order=2, backend=backend)
            o = o[:, None]
        else:
            o = ea_ops.ea_attention(q, k, v, order=2, causal=causal, backend=backend)[0]
        plain = torch.autograd.grad(o, (q, k, v), go[:, -o.shape[1]:].to(o.dtype), retain_graph=True)
        graphed = torch.autograd.grad(o, (q, k, v), go[:, -o.shape[1]:].to(o.dtype), create_graph=True)
        penalty = sum((d * w.to(d.dtype)).sum() for d, w in zip(graphed, ws))
        return plain, graphed, torch.autograd.grad(penalty, (q, k, v))

    leaves64 = [t.detach().double().requires_grad_() for t in (q, k, v)]
    for step in ((False, True) if causal else (False,)):
        plain, graphed, got = second(backend, q, k, v, step)
        *_, want = second("torch", *leaves64, step)
        for a, b in zip(plain, graphed):
            assert rel_err(b.detach(), a) < GRAD_TOL
        for a, b in zip(got, want):
            assert torch.isfinite(a).all() and rel_err(a, b) < GRAD_TOL

def _step(backend: str, dtype, q, k, v, go, state: EAState | None, order: int):
    leaves = tuple(t.to(dtype, copy=True).requires_grad_() for t in (q, k, v))
    st = None if state is None else state.to(dtype)
    o, _ = ea_ops.ea_recurrent_step(*leaves, st, order=order, scale=0.8, backend=backend)
    return (o.detach(), *_grads(o, leaves, go.to(dtype)))


def check_step_gradients_match_torch(backend: str, seeds) -> None:
    """One recurrent step (float32, order 4) is differentiable in ``q_t, k_t, v_t``: output and gradients
    against the torch backend's step in float64 on the same inputs, from a true state and from the empty one
    (one key: ``o = v`` whatever ``q, k``, so ``dv = g`` and ``dq = dk = 0``)."""
    B, H, D, order = 2, 2, 3, 4
    for seed in seeds:
        g = torch.Generator().manual_seed(seed)
        q, k, v, go = (torch.randn(B, H, D, generator=g) * s for s in (0.7, 0.7, 1.0, 1.0))
        for state in (true_state(B, H, D, order, seed), None):
            got = _step(backend, torch.float32, q, k, v, go, state, order)
            want = _step("torch", torch.float64, q, k, v, go, state, order)
            for name, a, b in zip(("o", "dq", "dk", "dv"), got, want):
                assert torch.isfinite(a).all(), name
                if state is None and name in ("dq", "dk"):
                    err = (a.double() - b).abs().max().item() / go.abs().max().item()
                    assert err < STEP_ZERO_GRAD_TOL, f"{backend}: {name} = {err:.3g} max|g| from the empty state"
                else:
                    err = rel_err(a, b)
                    assert err < STEP_TOL, f"{backend}: {name} relative error {err:.3g} (seed {seed})"


ZERO_SHAPES = [(0, 3, 2, 4), (2, 3, 0, 4), (2, 3, 2, 0), (0, 0, 0, 0), (2, 0, 2, 4)]  # B, H, D, all, T = 0


def check_zero_size_ops(ops, shape, causal: bool, *, want_state: bool | None = None) -> None:
    """The ops module's forward, backward and step (impl and custom op) called directly on a shape with no
    element: outputs of the input's shape, and (causal) the initial state handed through as a copy. ``ops`` is
    ``ea_ops.backends.tvm.ops`` or ``ea_ops.backends.triton.ops`` (``common.define_ops``: same signatures)."""
    B, T, H, D = shape
    order = 2
    gen = torch.Generator().manual_seed(2)
    q, k, v, g = (torch.randn(shape, generator=gen) for _ in range(4))
    st = true_state(B, H, D, order, seed=3) if B * H * D else EAState.empty(B, H, D, order)
    state = (st.S, st.Z, st.m) if causal else tuple(torch.empty(0) for _ in range(3))
    extra = () if want_state is None else (want_state,)
    for fwd, bwd, step in ((ops.forward_impl, ops.backward_impl, ops.step_impl),
                           (ops.forward_op, ops.backward_op, ops.step_op)):
        o, *fin = fwd(q, k, v, *state, order, causal, 1.0, [], *extra)
        assert o.shape == shape and o.dtype == q.dtype
        if causal and want_state is not False:
            for got, want in zip(fin, state):
                assert got.shape == want.shape and torch.equal(got, want)
                assert got.numel() == 0 or got.data_ptr() != want.data_ptr()  # a copy, not the caller's
        for d in bwd(q, k, v, g, *state, order, causal, 1.0, []):
            assert d.shape == shape and d.dtype == q.dtype
        if T:
            o_t, *new = step(q[:, 0], k[:, 0], v[:, 0], st.S, st.Z, st.m, order, 1.0)
            assert o_t.shape == (B, H, D)
            for got, want in zip(new, (st.S, st.Z, st.m)):
                assert got.shape == want.shape
    if T == 0 and B * H * D and causal and want_state is not False:  # no token: the final state is the initial one
        o, *fin = ops.forward_op(q, k, v, *state, order, causal, 1.0, [], *extra)
        assert all(torch.equal(a, b) for a, b in zip(fin, state))
    if B and T and causal:  # packed sequences (cu_seqlens [0, 1, T]): one state row each
        o, *fin = ops.forward_op(q[:1], k[:1], v[:1], *(t[:1].expand(2, *t.shape[1:]) for t in state), order,
                                 causal, 1.0, [0, 1, T], *extra)
        assert o.shape == (1, T, H, D)
        if want_state is not False:
            assert [t.shape[0] for t in fin] == [2, 2, 2]
        for d in ops.backward_op(q[:1], k[:1], v[:1], g[:1], *(t[:1].expand(2, *t.shape[1:]) for t in state),
                                 order, causal, 1.0, [0, 1, T]):
            assert d.shape == (1, T, H, D)


def _grads(out: torch.Tensor, inputs: tuple, g: torch.Tensor) -> tuple:
    assert out.requires_grad, "the output lost its autograd graph"
    # an input the output does not depend on (q at order 0 on the torch backend) has gradient zero
    return torch.autograd.grad(out, inputs, g, allow_unused=True, materialize_grads=True)


def entry_points(backend: str, case: dict, q, k, v, g, state: EAState, q_t, k_t, v_t, g_t, st_t: EAState):
    """Every result of the public API on these tensors: the output, final state and gradients of one call,
    then one recurrent step's output, state and gradients."""
    q, k, v, q_t, k_t, v_t = (t.detach().requires_grad_() for t in (q, k, v, q_t, k_t, v_t))
    causal = case["causal"]
    cu = None if case["cu"] is None else torch.tensor(case["cu"], dtype=torch.int32)
    o, fin = ea_ops.ea_attention(q, k, v, order=case["order"], causal=causal, scale=0.8, cu_seqlens=cu,
                                 initial_state=state if causal else None, output_final_state=causal,
                                 backend=backend)
    out = {"o": o, **({"S": fin.S, "Z": fin.Z, "m": fin.m} if causal else {})}
    out.update(zip(("dq", "dk", "dv"), _grads(o, (q, k, v), g)))
    o_t, new = ea_ops.ea_recurrent_step(q_t, k_t, v_t, st_t, order=case["order"], scale=0.8, backend=backend)
    out.update(o_t=o_t, S_t=new.S, Z_t=new.Z, m_t=new.m)
    out.update(zip(("dq_t", "dk_t", "dv_t"), _grads(o_t, (q_t, k_t, v_t), g_t)))
    return {name: t.detach() for name, t in out.items()}


def check_strided_equals_contiguous(backend: str, case: dict) -> None:
    """``backend`` on the drawn layouts gives bit for bit what it gives on contiguous copies."""
    B, T, H, D = case["shape"]
    order, seed = case["order"], case["seed"]
    g = torch.Generator().manual_seed(seed)
    seq = [torch.randn(B, T, H, D, generator=g) * 0.7 for _ in range(4)]
    tok = [torch.randn(B, H, D, generator=g) * 0.7 for _ in range(4)]
    n_state = B if case["cu"] is None else len(case["cu"]) - 1
    st0, st1 = true_state(n_state, H, D, order, seed), true_state(B, H, D, order, seed + 1)
    seq_s = [strided(x, lay) for x, lay in zip(seq, case["seq"])]
    tok_s = [strided(x, lay) for x, lay in zip(tok, case["tok"])]
    st0_s, st1_s = (EAState(*(strided(x, lay) for x, lay in zip((st.S, st.Z, st.m), case["state"])))
                    for st in (st0, st1))

    def dense(st: EAState) -> EAState:
        return EAState(st.S.contiguous(), st.Z.contiguous(), st.m.contiguous())

    got = entry_points(backend, case, *seq_s, st0_s, *tok_s, st1_s)
    want = entry_points(backend, case, *(x.contiguous() for x in seq_s), dense(st0_s),
                        *(x.contiguous() for x in tok_s), dense(st1_s))
    assert got.keys() == want.keys()
    for name in want:
        w = want[name]
        assert torch.isfinite(w).all(), f"{name}: the contiguous run itself is not finite"
        assert got[name].shape == w.shape, name
        assert torch.equal(got[name], w), f"{backend}: {name} differs on strided inputs (case {case})"


# ------------------------------------------------------------------------------------- non-finite inputs
def results(backend: str, dtype, q, k, v, go, *, order: int, causal: bool, cu: list[int] | None,
            device: str = "cpu") -> dict:
    """Named results of one call on ``device``: ``o``, (causal) the final ``S, Z, m``, and ``dq, dk, dv`` of
    ``sum(go * o)``, all returned on the CPU."""
    ins = [t.to(device, dtype, copy=True).requires_grad_() for t in (q, k, v)]
    cut = None if cu is None else torch.tensor(cu, dtype=torch.int32, device=device)
    o, st = ea_ops.ea_attention(*ins, order=order, causal=causal, cu_seqlens=cut, output_final_state=causal,
                                backend=backend)
    out = {"o": o.detach(), **dict(zip(("dq", "dk", "dv"), _grads(o, ins, go.to(device, dtype))))}
    if causal:
        out.update(S=st.S, Z=st.Z, m=st.m)
    return {name: t.cpu() for name, t in out.items()}


@st.composite
def poison_cases(draw, H: int = 2, D: int = 3, max_T: int = 9):
    """A NaN, +Inf or -Inf in one of q, k, v at a drawn position and channel, causal or not, maybe varlen."""
    varlen = draw(st.booleans())
    B = 1 if varlen else draw(st.integers(1, 2))
    T = draw(st.integers(1, max_T))
    return dict(
        shape=(B, T, H, D), causal=draw(st.booleans()), order=draw(st.sampled_from([2, 4])),
        cu=[0, *sorted(draw(st.lists(st.integers(0, T), max_size=2))), T] if varlen else None,
        pos=draw(st.integers(0, T - 1)), chan=(draw(st.integers(0, B - 1)), draw(st.integers(0, H - 1)),
                                               draw(st.integers(0, D - 1))),
        which=draw(st.integers(0, 2)), value=draw(st.sampled_from([math.nan, math.inf, -math.inf])),
        seed=draw(st.integers(0, 2**16)),
    )


def check_non_finite_stays_put(backend: str, case: dict) -> None:
    """A non-finite input at ``(b, pos, h, d)`` may change only its own channel of its own sequence: outputs
    there at positions ``>= pos`` (causal; the whole sequence otherwise), gradients anywhere in that sequence
    (``dk_j`` for ``j < pos`` sums over outputs at ``pos``), that sequence's final state. Everything else stays
    bit for bit as in the clean run."""
    B, T, H, D = case["shape"]
    b, h, d = case["chan"]
    pos, causal = case["pos"], case["causal"]
    g = torch.Generator().manual_seed(case["seed"])
    ins = [torch.randn(B, T, H, D, generator=g) * s for s in (0.7, 0.7, 1.0, 1.0)]
    kw = dict(order=case["order"], causal=causal, cu=case["cu"])
    clean = results(backend, torch.float32, *ins, **kw)
    for name, t in clean.items():  # (an empty sequence's m is +inf: no key yet)
        assert (torch.isfinite(t) | (t == math.inf) if name == "m" else torch.isfinite(t)).all(), name
    ins[case["which"]][b, pos, h, d] = case["value"]
    dirty = results(backend, torch.float32, *ins, **kw)
    bounds = list(zip(case["cu"][:-1], case["cu"][1:])) if case["cu"] else [(0, T)]
    n, (s, e) = next((i, se) for i, se in enumerate(bounds) if se[0] <= pos < se[1])
    n = n if case["cu"] else b
    reach = {"o": torch.zeros(B, T, H, D, dtype=torch.bool), "g": torch.zeros(B, T, H, D, dtype=torch.bool),
             "S": torch.zeros(len(bounds) if case["cu"] else B, H, case["order"] + 1, D, dtype=torch.bool)}
    reach["o"][b, (pos if causal else s):e, h, d] = True
    reach["g"][b, s:e, h, d] = True
    reach["S"][n, h, :, d] = True
    reach["m"] = reach["S"][:, :, 0]
    where = {"o": "o", "dq": "g", "dk": "g", "dv": "g", "S": "S", "Z": "S", "m": "m"}
    for name, want in clean.items():
        keep = ~reach[where[name]]
        assert torch.equal(dirty[name][keep], want[keep]), (
            f"{backend}: {case['value']} in {'qkv'[case['which']]} at t={pos}, channel {case['chan']} reached "
            f"{name} outside its channel{' or before its position' if causal else ''} (case {case})")


# ---------------------------------------------------------------------------------------------- large keys
LARGE_CASES = [(1, None), (3, None), (5, None), (37, None), (13, [0, 5, 6, 13])]  # (T, cu_seqlens): tails
LONG_LARGE_CASES = [(150, None), (150, [0, 70, 150])]  # blocks of 64 steps and their tails (TVM, H = 4)
# Keys (and queries) near 11-12: exp(-y^2) is 0 in float32 and exp(min y^2) overflows, so only the stabilised
# state keeps the sums finite. Against the torch backend in float64 on the same inputs, orders 4 and 6, 3 seeds,
# every case above, causal (with the final state) and not, TVM and every Triton configuration: max-norm relative
# error of o, dv, S, Z, m measured at most 7.2e-6 (60 eps, TVM's dv); tolerance 4x.
LARGE_TOL = 240 * EPS32
# dq and dk cancel the y ~ 12 part of their terms (sum_j w_ij (v_j - o_i) = 0; with one key they vanish), so
# their error is judged against the terms summed, 2 max(|q|, |k|) max|g| max|v|: measured at most 1.2e-6 of
# that (TVM's dk at T = 37); tolerance 4x.
LARGE_GRAD_TOL = 5e-6


def large_inputs(T: int, seed: int, B: int = 1, H: int = 1, D: int = 4):
    g = torch.Generator().manual_seed(seed)
    q = 11 + 0.5 * torch.randn(B, T, H, D, generator=g)
    k = 11.5 + 0.5 * torch.randn(B, T, H, D, generator=g)
    v, go = (torch.randn(B, T, H, D, generator=g) for _ in range(2))
    return q, k, v, go


def _check_large(backend: str, got: dict, want: dict, inputs, where: str) -> dict:
    """``got`` (float32) against ``want`` (float64) by name: finite, ``dq, dk`` within ``LARGE_GRAD_TOL`` of
    their terms' size (``2 max(|q|, |k|) max|go| max|v|``: they cancel), the rest within ``LARGE_TOL``
    relative. Returns the errors by name."""
    q, k, v, go = inputs
    terms = (2 * torch.maximum(q.abs().max(), k.abs().max()) * go.abs().max() * v.abs().max()).item()
    errs = {}
    for name, w in want.items():
        a = got[name]
        assert torch.isfinite(a).all(), f"{backend}: {name} not finite ({where})"
        if name in ("dq", "dk"):
            errs[name] = (a.double() - w).abs().max().item() / terms
            assert errs[name] < LARGE_GRAD_TOL, f"{backend}: {name} error {errs[name]:.3g} of its terms ({where})"
        else:
            errs[name] = rel_err(a, w)
            assert errs[name] < LARGE_TOL, f"{backend}: {name} relative error {errs[name]:.3g} ({where})"
    return errs


def check_large_keys(backend: str, T: int, cu: list[int] | None, causal: bool, *, order: int = 4,
                     seed: int = 0, H: int = 1, device: str = "cpu") -> None:
    """Outputs, final state, gradients and one decoding step from that state: finite, and within the measured
    tolerance of the torch backend in float64 (on the CPU). ``H``: heads (4 on 2 threads gives TVM's blocked
    schedule, whose causal forward is stabilised per block of 64 steps from T = 64 on); ``device``: where
    ``backend`` runs."""
    q, k, v, go = large_inputs(T, seed, H=H)
    kw = dict(order=order, causal=causal, cu=cu)
    got = results(backend, torch.float32, q, k, v, go, device=device, **kw)
    want = results("torch", torch.float64, q, k, v, go, **kw)
    _check_large(backend, got, want, (q, k, v, go), f"T={T}, cu={cu}, causal={causal}")
    if causal and cu is None:  # decode one more large token from the final state
        qt, kt, vt, _ = (t[:, 0] for t in large_inputs(1, seed + 1, H=H))
        st32 = EAState(*(got[n].to(device) for n in ("S", "Z", "m")))
        o32, s32 = ea_ops.ea_recurrent_step(qt.to(device), kt.to(device), vt.to(device), st32, order=order,
                                            backend=backend)
        o32, s32 = o32.cpu(), EAState(s32.S.cpu(), s32.Z.cpu(), s32.m.cpu())
        st64 = EAState(want["S"], want["Z"], want["m"])
        o64, s64 = ea_ops.ea_recurrent_step(qt.double(), kt.double(), vt.double(), st64, order=order,
                                            backend="torch")
        for name, a, w in (("o_t", o32, o64), ("S_t", s32.S, s64.S), ("Z_t", s32.Z, s64.Z), ("m_t", s32.m, s64.m)):
            assert torch.isfinite(a).all(), f"{backend}: step {name} not finite"
            assert rel_err(a, w) < LARGE_TOL, f"{backend}: step {name} relative error {rel_err(a, w):.3g}"


# ----------------------------------------------------------------------------- the minimum falling in a block
FALLS = [8.0, 15.0, 40.0, 300.0]  # below and above the Triton block form's limit (DROP_MAX = 16); 300: exp = 0


def falling_inputs(lengths, at: int, fall: float, *, H: int = 1, D: int = 3, seed: int = 21):
    """``q, k, v, go`` of sequences of ``lengths`` (``[1, sum, H, D]``, ``cu_seqlens`` from them) whose keys
    sit at ``y^2`` about ``fall + 2`` (scale 1) until row ``at`` of each sequence, where the running minimum
    falls to 2: the rows before ``at`` in the same block of a block-stabilised scan see their sums scaled by
    ``exp(-fall)``."""
    g = torch.Generator().manual_seed(seed)
    T = sum(lengths)
    q = torch.randn(1, T, H, D, generator=g) * 0.7
    v, go = (torch.randn(1, T, H, D, generator=g) for _ in range(2))
    k = (fall + 2.0) ** 0.5 + 0.01 * torch.randn(1, T, H, D, generator=g)
    first = 0
    for n in lengths:
        k[:, first + at] = 2.0 ** 0.5
        first += n
    return q, k, v, go


def check_minimum_falls(backend: str, lengths, at: int, fall: float, *, order: int = 6, H: int = 1,
                        device: str = "cpu") -> dict:
    """Outputs, final states and gradients of ``falling_inputs`` in float32 against the torch backend in
    float64: finite and within ``LARGE_TOL`` (``dq, dk`` against their terms, as ``check_large_keys``).
    ``H = 4`` on 2 threads gives TVM's blocked schedule (blocks of 64 steps). Returns the errors by name."""
    q, k, v, go = falling_inputs(lengths, at, fall, H=H)
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    kw = dict(order=order, causal=True, cu=cu)
    got = results(backend, torch.float32, q, k, v, go, device=device, **kw)
    want = results("torch", torch.float64, q, k, v, go, **kw)
    return _check_large(backend, got, want, (q, k, v, go), f"fall {fall}, lengths {lengths}")
