"""Check any EA implementation against EA's properties (docs/math.md), the way ``torch.library.opcheck``
checks a custom op: one call, every property a Hypothesis test, the smallest input that breaks each.

    from analysis.properties import check_implementation
    report = check_implementation(my_attention, order=6)     # my_attention(q, k, v) -> o or (o, state)
    print(report)                                             # pass / fail per property, counterexamples

Inputs are ``[B, T, H, D]`` with ``T`` from 0 (odd lengths too), channel offsets and spreads in units of
``x = sqrt(s) q``, ``y = sqrt(s) k`` up to ``|y| = MAGNITUDE`` (12), values of any sign, and three memory
layouts (contiguous, transposed, every other element of a NaN-filled buffer). Every comparison is per output
position against a float64 evaluation (``analysis.dense``), with a tolerance derived from the dtype and the
keys that position sees (:func:`rounding_tolerance`), plus the proven approximation bounds of
``analysis.bounds`` where the reference is exact EA. ``ea-ops check`` runs it from the command line; the
library's own property tests (tests/ea_ops/test_properties.py) run it on every backend.
"""

from __future__ import annotations

import inspect
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from typing import Any

import torch
from hypothesis import HealthCheck, Verbosity, given, settings
from hypothesis import errors as hyp_errors
from hypothesis import strategies as st

from ea_ops.domain import finite_radius
from ea_ops.testing import rel_err

from .bounds import _log_factor_range, mean_shift_bound, posterior_bound_rows
from .dense import dense_rows, rows_of
from .rounding import UNIT_ROUNDOFF, accumulation_dtype, dtype_name, parse_dtype
from .taylor import min_taylor_even, taylor_poly

PROPERTIES = ("agreement", "worst_case", "causality", "non_finite", "convexity", "value_shift", "qk_shift",
              "recurrent", "finite")
MAGNITUDE = 12.0  # largest |x|, |y| drawn (keys near 12 underflow exp(-y^2) in float32: the stabiliser's job)
VALUE_BOUND = 8.0  # |v| <= this
MAX_T = 24
LAYOUTS = ("contiguous", "transposed", "strided")
# Rounding tolerance = SAFETY x the first-order error model of rounding_tolerance. Measured against the model
# (SAFETY = 1) on this library's backends, the strategies below: torch float64 0.48 and float32 0.44 (300 draws
# of each property), TVM float32 0.23 (150), Triton float32 under the interpreter 0.21 (25); 4x is the margin.
# The output's rounding to a half precision is counted as 2 u |o| (round to nearest gives u; truncation, as the
# Triton interpreter does, 2u): torch bfloat16 and float16 reached 0.97 of u |o| plus the model.
SAFETY = 4.0


class _Violation(Exception):
    """A property failed on one example (``error``, ``tolerance`` in units of v; ``where`` says where)."""

    def __init__(self, message: str, error: float | None = None, tolerance: float | None = None,
                 channel: tuple[int, int, int] | None = None, position: int | None = None):
        super().__init__(message)
        self.error, self.tolerance, self.channel, self.position = error, tolerance, channel, position
        self.counterexample: dict | None = None


# ----------------------------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Problem:
    """One drawn input: ``q, k, v`` of ``shape [B, T, H, D]`` in ``dtype`` from ``seed``, with
    ``x = sqrt(s) q ~ x_offset + x_std N(0, 1)`` (likewise ``y``, ``v``), ``|x|, |y|`` clamped to ``bound``,
    ``|v|`` to ``VALUE_BOUND``, laid out as ``layout``. :meth:`tensors` rebuilds the tensors exactly. The
    normals are the ``[:B, :H, :D, :T]`` corner of one draw of ``pool`` (the largest ``[B, H, D, T]``), so a
    shape shrunk by Hypothesis keeps the values of the positions and channels it keeps; ``channel`` ``(b, h, d)``
    takes that one channel of the draw instead (``shape`` is then ``[1, T, 1, 1]``)."""

    shape: tuple[int, int, int, int]
    dtype: str
    seed: int
    x_offset: float
    x_std: float
    y_offset: float
    y_std: float
    v_offset: float
    v_std: float
    bound: float
    layout: str
    pool: tuple[int, int, int, int]
    channel: tuple[int, int, int] | None = None

    def tensors(self, scale: float = 1.0, device: str | torch.device = "cpu"
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``q, k, v [B, T, H, D]`` (``q = x / sqrt(scale)``) in ``self.dtype`` on ``device``."""
        g = torch.Generator().manual_seed(self.seed)
        dt = parse_dtype(self.dtype)
        out = []
        for off, std, lim, r in ((self.x_offset, self.x_std, self.bound, math.sqrt(scale)),
                                 (self.y_offset, self.y_std, self.bound, math.sqrt(scale)),
                                 (self.v_offset, self.v_std, VALUE_BOUND, 1.0)):
            B, T, H, D = self.shape
            n = torch.randn(self.pool, generator=g, dtype=torch.float64)
            if self.channel is not None:
                b, h, d = self.channel
                n = n[b:b + 1, h:h + 1, d:d + 1]
            n = n[:B, :H, :D, :T].permute(0, 3, 1, 2)
            t = (off + std * n).clamp(-lim, lim) / r
            out.append(_layout(t.to(dt), self.layout).to(device))
        return tuple(out)

    def describe(self, values_up_to: int = 12) -> dict:
        """The fields, plus the values of ``q, k, v`` when each has at most ``values_up_to`` elements."""
        d = asdict(self)
        d["shape"], d["pool"] = list(self.shape), list(self.pool)
        if self.channel is None:
            del d["channel"]
        if math.prod(self.shape) <= values_up_to:
            q, k, v = self.tensors()
            d["values"] = {n: [round(float(a), 6) for a in t.double().flatten()] for n, t in zip("qkv", (q, k, v))}
        return d


def _layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "transposed":  # stored [B, H, T, D]
        return t.transpose(1, 2).contiguous().transpose(1, 2)
    if layout == "strided":  # every other element of a NaN-filled buffer: a kernel that ignores strides reads NaN
        B, T, H, D = t.shape
        buf = torch.full((B, T, H, 2 * D), math.nan, dtype=t.dtype)
        buf[..., ::2] = t
        return buf[..., ::2]
    return t.contiguous()


@dataclass(frozen=True)
class _Spec:
    dtypes: tuple[str, ...]
    order: int | None
    causal: bool
    scale: float
    max_T: int
    heads: tuple[int, ...]
    dims: tuple[int, ...]


def _magnitudes(bound: float) -> st.SearchStrategy[float]:
    return st.one_of(st.just(0.0), st.floats(-bound, bound))


@st.composite
def _problems(draw, spec: _Spec, *, min_T: int = 0, edge: float | None = None) -> Problem:
    """Shapes (``T`` from ``min_T``), channel offsets and spreads, values, dtype and layout; ``edge``: offsets
    may also sit at ``+-edge`` (the finite domain's radius), and ``|x|, |y|`` are clamped to it."""
    T = draw(st.integers(min_T, spec.max_T))
    shape = (draw(st.integers(1, 2)), T, draw(st.sampled_from(spec.heads)), draw(st.sampled_from(spec.dims)))
    dtype = draw(st.sampled_from(spec.dtypes))
    offsets = _magnitudes(MAGNITUDE)
    if edge is not None:  # up to the radius, and at it; a failure with |y| <= 12 shrinks into the first branch
        offsets = st.one_of(offsets, st.floats(-edge, edge), st.sampled_from([edge, -edge]))
    x_offset, x_std = draw(offsets), draw(st.floats(0.0, 1.0))
    y_offset, y_std = draw(offsets), draw(st.floats(0.0, 1.0))
    v_offset, v_std = draw(_magnitudes(2.0)), draw(st.floats(0.0, 2.0))
    layout = draw(st.sampled_from(LAYOUTS))
    seed = draw(st.integers(0, 2**16))
    return Problem(shape, dtype, seed, x_offset, x_std, y_offset, y_std, v_offset, v_std,
                   MAGNITUDE if edge is None else max(edge, MAGNITUDE), layout,
                   (2, max(spec.heads), max(spec.dims), spec.max_T))


# ------------------------------------------------------------------------------------------ tolerances


def _visible(T: int, causal: bool) -> torch.Tensor:
    """``[T, T]``: key ``j`` is visible to query ``i``."""
    full = torch.ones(T, T, dtype=torch.bool)
    return full.tril() if causal else full


def rounding_tolerance(x: torch.Tensor, y: torch.Tensor, v: torch.Tensor, order: int | None, *, causal: bool,
                       dtype: torch.dtype, safety: float | None = None) -> torch.Tensor:
    """Per-position tolerance ``[N, T]`` (units of v) for an implementation in ``dtype`` against the float64
    formula, on rows ``x, y, v [N, T]`` (``x, y`` already scaled by ``sqrt(s)``).

    A first-order error model: with ``u`` the accumulator's unit roundoff, ``L`` visible keys, ``V`` the
    largest visible ``|v|`` and ``E = max_j E_ij`` over the visible keys,

        tol = safety * u * V * (L + E) + 2 u_out * V
        E_ij = (t + 4 + 2 |z|) K(z) + 4 y_j^2          EA-t, z = 2 x_i y_j, K(z) = P_t(|z|) / |P_t(z)|
        E_ij = 4 + 2 d^2 + 4 |d| max(|x_i|, |y_j|)      exact EA, d = x_i - y_j

    plus ``safety (L + E) tiny_acc / min P_t + sub_out`` for values near zero: the accumulator's smallest
    normal number (kernels may flush subnormals) amplified by the division by a denominator of at least
    ``min P_t`` (``analysis.min_taylor_even``; 1 for exact EA, order 0 and odd orders), and the output dtype's
    smallest subnormal. ``L`` counts the sums' roundings, ``K`` the cancellation of the Taylor terms
    (analysis.taylor.cancellation at one ``z``), ``|z|`` and ``y^2`` the rounding of the arguments of ``P_t``
    and ``exp(m - y^2)``, and ``2 u_out`` the rounding of the output to ``dtype`` (to nearest or by truncation).
    Infinite where ``P_t(z) = 0`` (odd orders).
    """
    x, y, v = x.double(), y.double(), v.double()
    N, T = x.shape
    if T == 0:
        return x.new_zeros(N, 0)
    vis = _visible(T, causal)
    xi, yj = x[:, :, None], y[:, None, :]
    if order is None:
        d = xi - yj
        E = 4 + 2 * d * d + 4 * d.abs() * torch.maximum(xi.abs(), yj.abs())
    else:
        z = 2 * xi * yj
        K = taylor_poly(z.abs(), order) / taylor_poly(z, order).abs()
        E = (order + 4 + 2 * z.abs()) * K + 4 * yj * yj
    E = E.masked_fill(~vis, 0.0).amax(-1)
    L = vis.sum(-1).double()
    V = v.abs()[:, None, :].expand(N, T, T).masked_fill(~vis, 0.0).amax(-1)
    divide = 1 / min_taylor_even(order)[1] if order is not None and order >= 2 and order % 2 == 0 else 1.0
    acc = accumulation_dtype(dtype)
    u, tiny_acc = UNIT_ROUNDOFF[acc], torch.finfo(acc).tiny
    sub_out = torch.finfo(dtype).tiny * torch.finfo(dtype).eps
    return ((SAFETY if safety is None else safety) * (L + E) * (u * V + divide * tiny_acc)
            + 2 * UNIT_ROUNDOFF[dtype] * V + sub_out)


def _spread(v: torch.Tensor, causal: bool) -> torch.Tensor:
    if causal:
        return torch.cummax(v, 1).values - torch.cummin(v, 1).values
    return (v.amax(1, keepdim=True) - v.amin(1, keepdim=True)).expand_as(v)


def worst_case_rows(x: torch.Tensor, y: torch.Tensor, v: torch.Tensor, order: int, *, causal: bool = True
                    ) -> torch.Tensor:
    """The proven worst-case bound per position ``[N, T]`` (units of v): ``analysis.worst_case_error(order,
    |x_i|, max visible |y_j|)`` times the spread of the visible values."""
    x, y = x.double(), y.double()
    ab = torch.cummax(y.abs(), 1).values if causal else y.abs().amax(1, keepdim=True).expand_as(y)
    Z = 2 * x.abs() * ab
    factor = mean_shift_bound(_log_factor_range(-Z, Z, order))
    factor = torch.where(torch.isnan(factor), math.inf, factor)
    return _spread(v.double(), causal) * factor


# ------------------------------------------------------------------------------------------------ report


@dataclass
class PropertyResult:
    """One property: ``status`` ``"pass"``, ``"fail"`` or ``"skip"``; ``examples`` checked (up to the first
    failure); ``error`` and ``tolerance`` at the worst position (of the counterexample when it failed), in units
    of v; ``counterexample`` the shrunk input (``Problem.describe()`` plus the property's own draws)."""

    name: str
    status: str
    examples: int = 0
    error: float | None = None
    tolerance: float | None = None
    counterexample: dict | None = None
    message: str = ""
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status != "fail"

    def line(self) -> str:
        head = f"{self.status.upper():4} {self.name:<12}"
        if self.status == "skip":
            return f"{head} {self.message}"
        err = "" if self.error is None else f"  error {self.error:.3g} (tolerance {self.tolerance:.3g})"
        text = f"{head} {self.examples:>4} examples{err}  {self.seconds:.1f}s"
        if self.status == "fail":
            text += f"\n     {self.message}\n     counterexample: {json.dumps(_strict(self.counterexample))}"
        return text


@dataclass
class Report:
    """What :func:`check_implementation` found: one :class:`PropertyResult` per property."""

    order: int | None
    causal: bool
    reference: str
    dtypes: list[str]
    results: list[PropertyResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    def __getitem__(self, name: str) -> PropertyResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(name)

    def failures(self) -> list[PropertyResult]:
        return [r for r in self.results if r.status == "fail"]

    def to_json(self) -> dict:
        """A dict that ``json.dumps`` writes as strict JSON (NaN and infinities as strings)."""
        d = asdict(self)
        d["passed"] = self.passed
        return _strict(d)

    def __str__(self) -> str:
        order = "exact EA" if self.order is None else f"order {self.order}"
        n_fail = len(self.failures())
        head = (f"EA property check: {order}, {'causal' if self.causal else 'non-causal'}, reference "
                f"{self.reference}, {', '.join(self.dtypes)}: {'PASSED' if self.passed else f'{n_fail} FAILED'}")
        return "\n".join([head, *(r.line() for r in self.results)])


def _strict(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    return obj


# ------------------------------------------------------------------------------------------- the checks


class _Checker:
    """The implementation under test, the settings of the run, and the float64 references."""

    def __init__(self, fn, step_fn, spec: _Spec, reference: str, device):
        self.fn, self.step_fn, self.spec, self.reference, self.device = fn, step_fn, spec, reference, device
        self.takes_state = _accepts(fn, "initial_state")
        self.worst: tuple[float, float, float] | None = None  # (ratio, error, tolerance)

    # --- calling the implementation

    def call(self, q, k, v, **kw) -> tuple[torch.Tensor, Any]:
        try:
            out = self.fn(q, k, v, **kw)
        except Exception as exc:
            raise _Violation(f"fn raised {type(exc).__name__}: {exc}") from exc
        o, state = (out[0], out[1]) if isinstance(out, (tuple, list)) and len(out) == 2 else (out, None)
        _check_output(o, q, "fn")
        return o, state

    def step(self, q_t, k_t, v_t, state) -> tuple[torch.Tensor, Any]:
        try:
            o_t, state = self.step_fn(q_t, k_t, v_t, state)
        except Exception as exc:
            raise _Violation(f"step_fn raised {type(exc).__name__}: {exc}") from exc
        _check_output(o_t, q_t, "step_fn")
        return o_t, state

    def inputs(self, prob: Problem):
        self.shape = prob.shape
        return prob.tensors(self.spec.scale, self.device)

    def once(self, prob: Problem):
        """``(q, o, rows (x, y, v))`` of one call on ``prob``; ``None`` for ``T = 0`` (an empty output of the
        right shape and dtype is all there is to check)."""
        q, k, v = self.inputs(prob)
        o, _ = self.call(q, k, v)
        return None if q.shape[1] == 0 else (q, o, self.rows(q, k, v))

    # --- references

    def rows(self, q, k, v) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        r = math.sqrt(self.spec.scale)
        return rows_of(q.cpu()) * r, rows_of(k.cpu()) * r, rows_of(v.cpu())

    def reference_rows(self, x, y, v, *, exact: bool) -> torch.Tensor:
        order = self.spec.order
        res = dense_rows(x, y, v, orders=[] if (exact or order is None) else [order],
                         exact=exact or order is None, causal=self.spec.causal)
        return res.exact if (exact or order is None) else res.taylor[order]

    def tolerance(self, x, y, v, dtype) -> torch.Tensor:
        return rounding_tolerance(x, y, v, self.spec.order, causal=self.spec.causal, dtype=dtype)

    # --- judging

    def compare(self, got: torch.Tensor, ref: torch.Tensor, tol: torch.Tensor, what: str,
                mask: torch.Tensor | None = None) -> None:
        """``|got - ref| <= tol`` (rows ``[N, T]``) where ``mask`` (everywhere by default); records the worst
        ratio; raises otherwise."""
        got = got.detach().cpu().double()
        if mask is not None:
            if not bool(mask.any()):
                return
            got, ref = torch.where(mask, got, 0.0), torch.where(mask, ref, 0.0)
        if got.numel() == 0:
            return
        finite_ref = torch.isfinite(ref)
        bad = ~torch.isfinite(got) & finite_ref
        if bool(bad.any()):
            n, i = (int(a) for a in bad.nonzero()[0])
            raise _Violation(f"{what}: non-finite output {got[n, i].item()} at {self.where(n, i)} where the "
                             f"reference is {ref[n, i].item():.6g}", math.inf, float(tol[n, i]), self.channel(n), i)
        err = torch.where(finite_ref, (got - ref).abs(), 0.0)
        ratio = torch.where(err > 0, err / tol, 0.0)
        if mask is not None:
            ratio = torch.where(mask, ratio, -1.0)
        flat = int(torch.argmax(ratio))
        n, i = divmod(flat, ratio.shape[1])
        worst = (float(ratio[n, i]), float(err[n, i]), float(tol[n, i]))
        if self.worst is None or worst[0] > self.worst[0]:
            self.worst = worst
        if worst[0] > 1:
            raise _Violation(f"{what}: error {worst[1]:.3g} at {self.where(n, i)} above the tolerance "
                             f"{worst[2]:.3g}", worst[1], worst[2], self.channel(n), i)

    def channel(self, n: int) -> tuple[int, int, int]:
        """Row ``n`` of the ``[B*H*D, T]`` layout -> its channel ``(b, h, d)``."""
        _, _, H, D = self.shape
        return n // (H * D), n // D % H, n % D

    def where(self, n: int, i: int) -> str:
        return f"channel (b, h, d) = {self.channel(n)}, position {i}"


def _check_output(o, like: torch.Tensor, who: str) -> None:
    if not isinstance(o, torch.Tensor):
        raise _Violation(f"{who} returned {type(o).__name__}, expected a tensor of shape {list(like.shape)}")
    if o.shape != like.shape:
        raise _Violation(f"{who} returned shape {list(o.shape)}, expected {list(like.shape)}")
    if o.dtype != like.dtype:
        raise _Violation(f"{who} returned {dtype_name(o.dtype)} for {dtype_name(like.dtype)} inputs")


def _accepts(fn, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in params)


def _rows(o: torch.Tensor) -> torch.Tensor:
    return rows_of(o.detach().cpu())


# Each property: (strategy factory, body, reason to skip or None). Bodies raise _Violation.

def _agreement(c: _Checker, prob: Problem, extra: dict) -> None:
    run = c.once(prob)
    if run is None:
        return
    q, o, (x, y, vv) = run
    tol = c.tolerance(x, y, vv, q.dtype)
    exact = c.reference == "exact"
    if exact and c.spec.order is not None:
        tol = tol + posterior_bound_rows(x, y, vv, c.spec.order, causal=c.spec.causal)
    c.compare(_rows(o), c.reference_rows(x, y, vv, exact=exact), tol, f"against the float64 {c.reference} reference")


def _worst_case(c: _Checker, prob: Problem, extra: dict) -> None:
    run = c.once(prob)
    if run is None:
        return
    q, o, (x, y, vv) = run
    tol = c.tolerance(x, y, vv, q.dtype) + worst_case_rows(x, y, vv, c.spec.order, causal=c.spec.causal)
    c.compare(_rows(o), c.reference_rows(x, y, vv, exact=True), tol, "against exact EA (worst-case bound)")


def _causality(c: _Checker, prob: Problem, extra: dict) -> None:
    q, k, v = c.inputs(prob)
    i = extra["i"]
    o, _ = c.call(q, k, v)
    g = torch.Generator().manual_seed(extra["seed"])
    changed = []
    for t in (q, k, v):
        t2 = t.clone()
        t2[:, i + 1:] = (3 * torch.randn(t2[:, i + 1:].shape, generator=g, dtype=torch.float64)).to(t.dtype)
        changed.append(t2)
    o2, _ = c.call(*changed)
    x, y, vv = c.rows(q[:, : i + 1], k[:, : i + 1], v[:, : i + 1])
    c.compare(_rows(o2[:, : i + 1]), _rows(o[:, : i + 1]), 2 * c.tolerance(x, y, vv, q.dtype),
              f"new inputs after position {i}: outputs up to {i} moved")


def _non_finite(c: _Checker, prob: Problem, extra: dict) -> None:
    q, k, v = c.inputs(prob)
    o, _ = c.call(q, k, v)
    ins = [q.clone(), k.clone(), v.clone()]
    b, h, d = extra["channel"]
    pos = extra["pos"]
    ins["qkv".index(extra["which"])][b, pos, h, d] = extra["value"]
    o2, _ = c.call(*ins)
    reach = torch.zeros(o.shape, dtype=torch.bool)
    reach[b, pos if c.spec.causal else 0:, h, d] = True
    x, y, vv = c.rows(q, k, v)
    tol = 2 * c.tolerance(x, y, vv, q.dtype)  # two outputs, each within the tolerance of the formula
    outside = _rows(reach.to(torch.float64)) == 0  # outside the reach: as on clean inputs
    c.compare(_rows(o2), _rows(o), tol, f"{extra['value']} in {extra['which']} at position {pos}, channel "
              f"(b, h, d) = {(b, h, d)}: outputs outside its reach changed", mask=outside)


def _convexity(c: _Checker, prob: Problem, extra: dict) -> None:
    run = c.once(prob)
    if run is None:
        return
    q, o, (x, y, vv) = run
    if c.spec.causal:
        lo, hi = vv.cummin(1).values, vv.cummax(1).values
    else:
        lo, hi = vv.amin(1, keepdim=True).expand_as(vv), vv.amax(1, keepdim=True).expand_as(vv)
    got = _rows(o).double()
    # distance outside [lo, hi] (0 inside), compared with 0
    c.compare(torch.clamp(lo - got, min=0) + torch.clamp(got - hi, min=0), torch.zeros_like(got),
              c.tolerance(x, y, vv, q.dtype), "output outside the range of the values it averages")


def _value_shift(c: _Checker, prob: Problem, extra: dict) -> None:
    q, k, v = c.inputs(prob)
    shift = extra["shift"]
    o, _ = c.call(q, k, v)
    v2 = (v.double() + shift).to(v.dtype)
    o2, _ = c.call(q, k, v2)
    x, y, vv = c.rows(q, k, v)
    vv2 = rows_of(v2.cpu())
    tol = c.tolerance(x, y, vv, q.dtype) + c.tolerance(x, y, vv2, q.dtype)
    # v2 - shift is v up to the rounding of v + shift in the input dtype, which moves a mean by at most that
    if vv.numel():
        tol = tol + (vv2 - shift - vv).abs().amax(1, keepdim=True)
    c.compare(_rows(o2) - shift, _rows(o), tol, f"v + {shift:g} did not move the outputs by {shift:g}")


def _qk_shift(c: _Checker, prob: Problem, extra: dict) -> None:
    q, k, v = c.inputs(prob)
    shift = extra["shift"] / math.sqrt(c.spec.scale)
    o, _ = c.call(q, k, v)
    q2, k2 = (q.double() + shift).to(q.dtype), (k.double() + shift).to(k.dtype)
    o2, _ = c.call(q2, k2, v)
    x, y, vv = c.rows(q, k, v)
    x2, y2, _ = c.rows(q2, k2, v)
    tol = c.tolerance(x, y, vv, q.dtype) + c.tolerance(x2, y2, vv, q.dtype)
    # rounding of q + c, k + c moves each x - y by delta; |d o / d(x - y)| <= 2 max|x - y| spread, per side
    if x.numel():
        s = extra["shift"]
        delta = torch.maximum((x2 - s - x).abs().amax(1), (y2 - s - y).abs().amax(1))[:, None]
        span = (x[:, :, None] - y[:, None, :]).abs().amax((1, 2))[:, None]
        tol = tol + 4 * span * delta * _spread(vv, c.spec.causal)
    c.compare(_rows(o2), _rows(o), tol, f"q + c, k + c (c = {extra['shift']:g} in units of sqrt(s) q) moved "
                                        f"the outputs")


def _recurrent(c: _Checker, prob: Problem, extra: dict) -> None:
    q, k, v = c.inputs(prob)
    T = q.shape[1]
    cut = min(extra["cut"], T)
    o, state = c.call(q, k, v)
    x, y, vv = c.rows(q, k, v)
    ref = c.reference_rows(x, y, vv, exact=False)
    tol = c.tolerance(x, y, vv, q.dtype)
    c.compare(_rows(o), ref, tol, "parallel pass against the float64 reference")
    st_rec, steps = None, []
    for t in range(T):
        o_t, st_rec = c.step(q[:, t], k[:, t], v[:, t], st_rec)
        steps.append(o_t)
    if T:
        c.compare(_rows(torch.stack(steps, 1)), ref, tol, "recurrent steps from no state against the reference")
    finals = {"recurrent": st_rec, "parallel": state}
    o1, s1 = c.call(q[:, :cut], k[:, :cut], v[:, :cut])
    if s1 is not None:
        st_split, steps = s1, []
        for t in range(cut, T):
            o_t, st_split = c.step(q[:, t], k[:, t], v[:, t], st_split)
            steps.append(o_t)
        if steps:
            c.compare(_rows(torch.stack(steps, 1)), ref[:, cut:], tol[:, cut:],
                      f"steps from fn's state after the first {cut} positions against the reference")
        finals["split into steps"] = st_split
        if c.takes_state:
            o2, s2 = c.call(q[:, cut:], k[:, cut:], v[:, cut:], initial_state=s1)
            c.compare(_rows(o2), ref[:, cut:], tol[:, cut:],
                      f"fn from its own state after the first {cut} positions against the reference")
            finals["split into two passes"] = s2
    _same_states(finals, T, y, q.dtype, c.spec.order)


def _same_states(finals: dict, T: int, y: torch.Tensor, dtype: torch.dtype, order: int) -> None:
    """Final states that are tensors (or a dataclass, tuple or dict of them) agree leaf by leaf."""
    leaves = {name: _leaves(s) for name, s in finals.items() if s is not None}
    leaves = {name: ls for name, ls in leaves.items() if ls is not None}
    if "recurrent" not in leaves or T == 0:
        return
    ymax2 = float((y.double() ** 2).max()) if y.numel() else 0.0
    tol = SAFETY * UNIT_ROUNDOFF[accumulation_dtype(dtype)] * (T + order + 4 + 4 * ymax2)
    base = leaves.pop("recurrent")
    for name, ls in leaves.items():
        if len(ls) != len(base):
            raise _Violation(f"the final state of the {name} has {len(ls)} tensors, the recurrent one {len(base)}")
        for j, (a, b) in enumerate(zip(ls, base)):
            err = rel_err(a.cpu(), b.cpu())
            if not err <= tol:
                raise _Violation(f"final state of the {name}, tensor {j}: relative error {err:.3g} against the "
                                 f"state after {T} recurrent steps (tolerance {tol:.3g})", err, tol)


def _leaves(s) -> list[torch.Tensor] | None:
    if isinstance(s, torch.Tensor):
        return [s]
    if is_dataclass(s) and not isinstance(s, type):
        items = [getattr(s, f.name) for f in fields(s)]
    elif isinstance(s, dict):
        items = list(s.values())
    elif isinstance(s, (tuple, list)):
        items = list(s)
    else:
        return None
    out = []
    for item in items:
        sub = _leaves(item)
        if sub is None:
            return None
        out += sub
    return out


def _finite(c: _Checker, prob: Problem, extra: dict) -> None:
    q, k, v = c.inputs(prob)
    o, _ = c.call(q, k, v)
    bad = ~torch.isfinite(_rows(o))
    if bool(bad.any()):
        n, i = (int(a) for a in bad.nonzero()[0])
        raise _Violation(f"non-finite output at {c.where(n, i)} inside the finite domain (|sqrt(s) q|, "
                         f"|sqrt(s) k| <= {prob.bound:.4g}, ea_ops.finite_radius)", math.inf, 0.0, c.channel(n), i)


# ------------------------------------------------------------------------------------------- strategies


def _cases(spec: _Spec, name: str, radius: float | None) -> st.SearchStrategy:
    """``(Problem, extra)`` for property ``name``."""
    min_T = 1 if name in ("causality", "non_finite") else 0
    probs = _problems(spec, min_T=min_T, edge=radius if name == "finite" else None)

    @st.composite
    def cases(draw):
        prob = draw(probs)
        B, T, H, D = prob.shape
        extra: dict[str, Any] = {}
        if name == "causality":
            extra = {"i": draw(st.integers(0, T - 1)), "seed": draw(st.integers(0, 2**16))}
        elif name == "non_finite":
            extra = {"which": draw(st.sampled_from("qkv")), "pos": draw(st.integers(0, T - 1)),
                     "channel": (draw(st.integers(0, B - 1)), draw(st.integers(0, H - 1)),
                                 draw(st.integers(0, D - 1))),
                     "value": draw(st.sampled_from([math.nan, math.inf, -math.inf]))}
        elif name in ("value_shift", "qk_shift"):
            extra = {"shift": draw(st.floats(-4.0, 4.0))}
        elif name == "recurrent":
            extra = {"cut": draw(st.integers(0, T))}
        return prob, extra

    return cases()


_BODIES: dict[str, Callable[[_Checker, Problem, dict], None]] = {
    "agreement": _agreement, "worst_case": _worst_case, "causality": _causality, "non_finite": _non_finite,
    "convexity": _convexity, "value_shift": _value_shift, "qk_shift": _qk_shift, "recurrent": _recurrent,
    "finite": _finite,
}


def _skip_reason(name: str, order: int | None, causal: bool, step_fn) -> str | None:
    if name == "worst_case" and order is None:
        return "exact EA has no approximation error to bound"
    if name == "causality" and not causal:
        return "non-causal: every output sees every key"
    if name == "convexity" and order is not None and order % 2:
        return f"odd order {order}: weights can be negative, outputs may leave the values' range"
    if name == "qk_shift" and order is not None:
        return "EA-t is not invariant to shifting q and k (exact EA is: order=None)"
    if name == "recurrent":
        if step_fn is None:
            return "no step_fn given"
        if not causal:
            return "the recurrent form is causal"
        if order is None:
            return "exact EA has no recurrent form"
    return None


# ------------------------------------------------------------------------------------------------ entry


def check_implementation(
    fn: Callable[..., Any],
    *,
    order: int | None = 6,
    causal: bool = True,
    dtypes: Sequence[torch.dtype | str] = (torch.float32,),
    max_examples: int | None = None,
    reference: str = "exact",
    step_fn: Callable[..., Any] | None = None,
    budget: float | None = None,
    scale: float = 1.0,
    properties: Sequence[str] | None = None,
    max_T: int = MAX_T,
    heads: Sequence[int] = (1, 2),
    dims: Sequence[int] = (1, 2, 3, 4),
    device: str | torch.device = "cpu",
    progress: Callable[[PropertyResult], None] | None = None,
) -> Report:
    """Run EA's properties on ``fn(q, k, v) -> o`` or ``(o, state)`` (``[B, T, H, D]`` in, ``o`` of the same
    shape and dtype out), which claims EA-``order`` (exact EA for ``order=None``) with ``causal`` and ``scale``.

    ``reference``: ``"exact"`` compares with exact EA within the proven a-posteriori bound plus rounding,
    ``"taylor"`` with the float64 EA-t formula within rounding. ``step_fn(q_t, k_t, v_t, state) -> (o_t,
    state)`` (``[B, H, D]``, ``state=None`` first) adds parallel == recurrent == split; ``fn`` accepting
    ``initial_state=`` adds a split into two passes. ``max_examples`` per property (default: the loaded
    Hypothesis profile's); ``budget`` seconds in all (properties not reached are skipped, and a property stops
    drawing new examples once its share is spent; the first property and example always run). ``properties``
    selects some of :data:`PROPERTIES`; ``max_T``, ``heads`` and ``dims`` bound the shapes drawn (``B`` is 1 or
    2); inputs live on ``device``.
    Deterministic: the same call draws the same examples. ``progress`` is called after each property.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    if step_fn is not None and not callable(step_fn):
        raise TypeError(f"step_fn must be callable or None, got {type(step_fn).__name__}")
    if order is not None and (isinstance(order, bool) or not isinstance(order, int) or not 0 <= order <= 32):
        raise ValueError(f"order must be an int in [0, 32] or None (exact EA), got {order!r}")
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    if reference not in ("exact", "taylor"):
        raise ValueError(f"reference must be 'exact' or 'taylor', got {reference!r}")
    if isinstance(dtypes, (torch.dtype, str)) or not dtypes:
        raise ValueError(f"dtypes must be a non-empty sequence of dtypes, got {dtypes!r}")
    names = tuple(dtype_name(parse_dtype(d)) for d in dtypes)
    if max_examples is not None and (isinstance(max_examples, bool) or not isinstance(max_examples, int)
                                     or max_examples < 1):
        raise ValueError(f"max_examples must be an int >= 1, got {max_examples!r}")
    if budget is not None and not (isinstance(budget, (int, float)) and budget > 0):
        raise ValueError(f"budget must be a number of seconds > 0, got {budget!r}")
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
    if isinstance(max_T, bool) or not isinstance(max_T, int) or max_T < 1:
        raise ValueError(f"max_T must be an int >= 1, got {max_T!r}")
    for arg, val in (("heads", heads), ("dims", dims)):
        if isinstance(val, (int, str)) or not val or not all(isinstance(n, int) and n >= 1 for n in val):
            raise ValueError(f"{arg} must be a non-empty sequence of ints >= 1, got {val!r}")
    chosen = PROPERTIES if properties is None else tuple(properties)
    unknown = [p for p in chosen if p not in PROPERTIES]
    if unknown or isinstance(properties, str):
        raise ValueError(f"properties must be names from {PROPERTIES}, got {properties!r}")

    spec = _Spec(names, order, causal, float(scale), max_T, tuple(heads), tuple(dims))
    base = settings.default
    run_settings = settings(base, max_examples=max_examples or base.max_examples, derandomize=True,
                            database=None, deadline=None, print_blob=False, verbosity=Verbosity.quiet,
                            report_multiple_bugs=False,
                            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                   HealthCheck.filter_too_much])
    radius = None
    if order is not None:
        # the finite domain of the widest accumulator among the dtypes, at the longest T and |v|
        radius = min(finite_radius(order, max_T, value_bound=VALUE_BOUND, dtype=parse_dtype(d)) for d in names)
    report = Report(order, causal, reference, list(names))
    start = time.monotonic()
    for n, name in enumerate(chosen):
        reason = _skip_reason(name, order, causal, step_fn)
        if reason is None and budget is not None and n and time.monotonic() - start > budget:
            reason = f"not run: the budget of {budget:g} s was spent"
        if reason is not None:
            result = PropertyResult(name, "skip", message=reason)
        else:
            until = None if budget is None else start + budget * (n + 1) / len(chosen)
            result = _run(name, fn, step_fn, spec, reference, device, radius, run_settings, until)
        report.results.append(result)
        if progress is not None:
            progress(result)
    return report


# properties whose failure at position i of a causal implementation needs no later position
_PREFIX = ("agreement", "worst_case", "convexity", "value_shift", "finite")


def _one_channel(checker: _Checker, name: str, body, prob: Problem, extra: dict, v: _Violation) -> _Violation:
    """The failing channel of Hypothesis' shrunk example alone (and, causal, its positions up to the failing
    one), when that fails too (EA's channels are independent, so it usually does): a smaller counterexample
    than shrinking the shape can reach."""
    B, T, H, D = prob.shape
    if v.channel is None or extra.get("channel", v.channel) != v.channel:
        return v
    if checker.spec.causal and name in _PREFIX and v.position is not None:
        T = v.position + 1
    if (B * H * D, T) == (1, prob.shape[1]):
        return v
    small = replace(prob, shape=(1, T, 1, 1), channel=v.channel)
    extra = {**extra, "channel": (0, 0, 0)} if "channel" in extra else extra
    try:
        body(checker, small, extra)
    except _Violation as w:
        w.counterexample = {**small.describe(), **extra}
        return w
    return v


def _run(name, fn, step_fn, spec, reference, device, radius, run_settings, until) -> PropertyResult:
    checker = _Checker(fn, step_fn, spec, reference, device)
    body = _BODIES[name]
    count = {"examples": 0, "failed": False}
    t0 = time.monotonic()

    @run_settings
    @given(_cases(spec, name, radius))
    def prop(case):
        if until is not None and count["examples"] and not count["failed"] and time.monotonic() > until:
            return  # the property's share of the budget is spent: no new examples
        prob, extra = case
        count["examples"] += not count["failed"]  # up to the first failure; shrinking is not counted
        try:
            body(checker, prob, extra)
        except _Violation as v:
            count["failed"] = True
            count["last"] = (prob, extra)
            v.counterexample = {**prob.describe(), **extra}
            raise

    result = PropertyResult(name, "pass")
    try:
        prop()
    except _Violation as v:
        v = _one_channel(checker, name, body, *count["last"], v)
        result.status, result.message = "fail", str(v)
        result.error, result.tolerance, result.counterexample = v.error, v.tolerance, v.counterexample
    except (hyp_errors.HypothesisException, hyp_errors.FlakyFailure) as exc:
        result.status, result.message = "fail", f"{type(exc).__name__}: {exc} (is fn deterministic?)"
    result.examples = count["examples"]
    if result.status == "pass" and checker.worst is not None:
        result.error, result.tolerance = checker.worst[1], checker.worst[2]
    result.seconds = time.monotonic() - t0
    return result


__all__ = ["LAYOUTS", "MAGNITUDE", "PROPERTIES", "Problem", "PropertyResult", "Report", "check_implementation",
           "rounding_tolerance", "worst_case_rows"]
