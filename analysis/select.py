"""Choose the smallest even Taylor order that meets an error budget, with the evidence, or refuse.

Errors are ``|o_kernel - o_exactEA|`` relative to the spread ``max v - min v`` of the channel's values.
Three modes (exactly one of ``scale``, ``sigma``, ``sample``):

- ``scale=A`` (worst case): every ``|q|, |k| <= A``. Proven approximation bound
  (:func:`analysis.worst_case_error`) plus the rounding estimate of :mod:`analysis.rounding`.
- ``sigma=S`` (distribution): ``q, k ~ N(0, S^2)``, ``v ~ N(0, 1)``. Monte Carlo: the torch kernel in
  ``dtype`` against exact EA in float64 on random query positions; the predicted error is a distribution-free
  upper confidence bound (95%) on the ``confidence`` quantile of the per-position error.
- ``sample=...`` (data): the user's ``q, k`` (and ``v`` if given), cast to ``dtype``; the predicted error is the
  largest error over the evaluated positions (all positions when ``T <= rows``). Without ``v`` the
  approximation part is the worst over all values of spread 1 (the total variation between the EA-t and exact
  attention weights) and rounding is measured with random values.

``ea_scale`` is the ``scale`` argument the user will pass to ``ea_attention`` (``x = sqrt(ea_scale) q``).
A refusal raises :class:`BudgetUnreachable` (a ``ValueError``), saying why and which channel scale would work.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ea_ops.checks import MAX_ORDER

from .bounds import posterior_factor_rows, worst_case_error
from .dense import dense_rows, rows_of
from .rounding import UNIT_ROUNDOFF, dtype_name, parse_dtype, rounding_estimate


@dataclass(frozen=True)
class OrderChoice:
    """The chosen order, its predicted error (relative to the spread of v), how it was predicted, why."""

    order: int
    predicted_error: float
    method: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class BudgetUnreachable(ValueError):
    """No even order up to the cap meets the budget in this dtype. ``evidence`` holds the numbers,
    ``suggestion`` the channel scale that would work (or None when no scale helps)."""

    def __init__(self, message: str, *, evidence: dict[str, Any], suggestion: dict[str, Any] | None):
        super().__init__(message)
        self.evidence = evidence
        self.suggestion = suggestion

    def to_json(self) -> dict[str, Any]:
        best = self.evidence.get("best") or {}
        return {"order": None, "predicted_error": best.get("predicted_error"), "refused": True,
                "message": str(self), "suggestion": self.suggestion, "evidence": self.evidence}


# ------------------------------------------------------------------------------------------ validation
def _check_positive(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return value


def _check_max_order(max_order: object) -> int:
    if isinstance(max_order, bool) or not isinstance(max_order, int) or max_order < 0 or max_order % 2:
        raise ValueError(f"max_order must be a non-negative even int, got {max_order!r}")
    if max_order > MAX_ORDER:
        raise ValueError(f"max_order must be at most {MAX_ORDER} (the kernels' limit), got {max_order}")
    return max_order


def _as_qkv(t: object, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"sample[{name!r}] must be a tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"sample[{name!r}] must be a floating-point tensor, got {t.dtype}")
    if t.dim() == 2:  # [T, D] -> [1, T, 1, D]
        t = t[None, :, None, :]
    if t.dim() != 4:
        raise ValueError(f"sample[{name!r}] must have shape [B, T, H, D] (or [T, D]), got {tuple(t.shape)}")
    if t.shape[1] < 1:
        raise ValueError(f"sample[{name!r}] must have at least one position (T >= 1), got {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"sample[{name!r}] holds NaN or Inf")
    return t.detach().cpu()


def load_sample(sample: object) -> dict[str, torch.Tensor]:
    """A path to a ``.pt`` file, a dict with ``q``, ``k`` (and optional ``v``) tensors, or one tensor stacking
    them as ``[2 or 3, B, T, H, D]``, -> ``{"q", "k"[, "v"]}`` as ``[B, T, H, D]`` CPU tensors, validated.

    Files are read with ``torch.load(weights_only=True)``: tensors and plain containers only, never
    arbitrary pickled objects."""
    if isinstance(sample, str | Path):
        path = Path(sample)
        if not path.is_file():
            raise ValueError(f"sample file {str(path)!r} does not exist")
        try:
            sample = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a corrupt file, or one holding objects other than tensors/containers
            raise ValueError(f"cannot read sample file {str(path)!r} as tensors (weights_only): {exc}") from exc
    if isinstance(sample, torch.Tensor):
        if sample.dim() not in (3, 5) or sample.shape[0] not in (2, 3):
            raise ValueError("a sample tensor must stack q, k (and v) as [2 or 3, B, T, H, D] (or [2 or 3, T, D]), "
                             f"got shape {tuple(sample.shape)}")
        sample = dict(zip(("q", "k", "v"), sample.unbind(0), strict=False))
    if not isinstance(sample, dict):
        raise TypeError(f"sample must be a path, a dict with 'q' and 'k', or a tensor, got {type(sample).__name__}")
    unknown = set(sample) - {"q", "k", "v"}
    if unknown:
        raise ValueError(f"sample has unexpected keys {sorted(map(str, unknown))}; expected 'q', 'k' and optional 'v'")
    for key in ("q", "k"):
        if key not in sample:
            raise ValueError(f"sample must contain {key!r} (and 'k'/'q', optional 'v'), got keys {sorted(sample)}")
    out = {key: _as_qkv(val, key) for key, val in sample.items()}
    for key in out:
        if out[key].shape != out["q"].shape:
            raise ValueError(f"sample[{key!r}] must have the shape of q {tuple(out['q'].shape)}, "
                             f"got {tuple(out[key].shape)}")
    return out


# ------------------------------------------------------------------------------------------- worst case
def _worst_case_table(A: float, dtype: torch.dtype, max_order: int) -> list[dict[str, float]]:
    rows = []
    for t in range(0, max_order + 1, 2):
        approx = worst_case_error(t, A, A)
        rnd = rounding_estimate(dtype, t, 2 * A * A)
        rows.append({"order": t, "approximation": approx, "rounding": rnd["total"],
                     "cancellation": rnd["cancellation"], "predicted_error": approx + rnd["total"]})
    return rows


def _first_meeting(table: list[dict[str, float]], budget: float) -> dict[str, float] | None:
    return next((r for r in table if r["predicted_error"] <= budget), None)


def _floor3(x: float) -> float:
    """``x`` rounded down to 3 significant digits (a suggested bound must not exceed the one that works)."""
    e = math.floor(math.log10(x)) - 2
    return math.floor(x / 10.0**e) * 10.0**e


def _wider(dtype: torch.dtype, budget: float) -> str:
    """Advice naming the narrowest dtype whose output rounding fits in the budget."""
    for wider in (torch.float16, torch.float32, torch.float64):
        if UNIT_ROUNDOFF[wider] < UNIT_ROUNDOFF[dtype] and UNIT_ROUNDOFF[wider] < budget / 2:
            return f"use {dtype_name(wider)} inputs/outputs"
    return "no dtype helps"


def _largest_working_bound(budget: float, dtype: torch.dtype, max_order: int, hi: float) -> float | None:
    """Largest channel bound ``A <= hi`` for which some order meets the budget (bisection; the error of
    every order grows with A), or None when even ``A -> 0`` fails (output rounding above the budget)."""
    if _first_meeting(_worst_case_table(1e-6, dtype, max_order), budget) is None:
        return None
    lo = 1e-6
    for _ in range(40):
        mid = math.sqrt(lo * hi)
        if _first_meeting(_worst_case_table(mid, dtype, max_order), budget) is None:
            hi = mid
        else:
            lo = mid
    return lo


def _select_worst_case(budget, A, dtype, max_order, ea_scale) -> OrderChoice:
    a = A * math.sqrt(ea_scale)  # bound on |x|, |y|
    table = _worst_case_table(a, dtype, max_order)
    evidence = {"bound_q_k": A, "ea_scale": ea_scale, "bound_x_y": a, "Z": 2 * a * a, "dtype": dtype_name(dtype),
                "budget": budget, "max_order": max_order, "per_order": table,
                "approximation": "proven: tanh(ln(rho)/4), rho = r_t(-Z)/r_t(Z), r_t(z) = P_t(z) e^-z",
                "rounding": "estimate: u_acc * (4 + K_t(Z)) + u_out (analysis.rounding)"}
    pick = _first_meeting(table, budget)
    if pick is not None:
        return OrderChoice(pick["order"], pick["predicted_error"], "worst-case", evidence)
    best = min(table, key=lambda r: r["predicted_error"])
    evidence["best"] = best
    works = _largest_working_bound(budget, dtype, max_order, a)
    why = ("rounding" if best["rounding"] > best["approximation"] else "approximation")
    msg = (f"no even order up to {max_order} meets the budget {budget:g} for |q|, |k| <= {A:g} "
           f"(|2xy| <= Z = {2 * a * a:.3g}) in {dtype_name(dtype)}: the best is order {best['order']} with predicted "
           f"error {best['predicted_error']:.3g} (approximation {best['approximation']:.2g}, rounding "
           f"{best['rounding']:.2g}; {why} dominates).")
    if works is None:
        suggestion = None
        msg += (f" No channel scale helps: {dtype_name(dtype)} output rounding alone is "
                f"{UNIT_ROUNDOFF[dtype]:.2g} of the spread; {_wider(dtype, budget)}.")
    else:
        works = _floor3(works)
        A_ok = works / math.sqrt(ea_scale)
        pick = _first_meeting(_worst_case_table(works, dtype, max_order), budget)
        suggestion = {"bound_q_k": A_ok, "bound_x_y": works, "ea_scale_factor": (works / a) ** 2,
                      "order": pick["order"], "predicted_error": pick["predicted_error"]}
        msg += (f" A channel bound |q|, |k| <= {A_ok:.3g} would work (order {pick['order']}, predicted "
                f"{pick['predicted_error']:.2g}): divide q and k by {a / works:.3g}, or multiply the EA scale by "
                f"{(works / a) ** 2:.3g}.")
    raise BudgetUnreachable(msg, evidence=evidence, suggestion=suggestion)


# --------------------------------------------------------------------------------------- measured modes
def _upper_quantile(errors: torch.Tensor, confidence: float) -> tuple[float, float]:
    """(empirical ``confidence`` quantile, 95% distribution-free upper confidence bound on it)."""
    e = torch.sort(errors.flatten().double()).values
    n = e.numel()
    q = float(torch.quantile(e, confidence))
    # the k-th order statistic exceeds the true quantile with prob >= 95% when
    # k >= n c + 1.645 sqrt(n c (1 - c)) (normal approximation to the binomial)
    k = math.ceil(n * confidence + 1.645 * math.sqrt(n * confidence * (1 - confidence)))
    return q, float(e[min(n, max(k, 1)) - 1])


def _measure(q, k, v, *, dtype, ea_scale, orders, causal, rows, seed, backend):
    """Per order: total, approximation and rounding errors ``[N, R]`` relative to each channel's spread of
    v, on sampled positions. ``v=None``: approximation = total variation, rounding with random v."""
    import ea_ops

    g = torch.Generator().manual_seed(seed)
    N_T = q.shape[1]
    qd, kd = q.to(dtype), k.to(dtype)
    tv_only = v is None
    vd = (torch.randn(q.shape, generator=g, dtype=torch.float64) if tv_only else v).to(dtype)
    r = math.sqrt(ea_scale)
    x, y, vr = rows_of(qd) * r, rows_of(kd) * r, rows_of(vd)
    spread = (vr.amax(1) - vr.amin(1)).clamp_min(1e-300)[:, None]
    if rows is None or rows >= N_T:
        pos = torch.arange(N_T)
    else:  # per-run random positions, the last one (which sees every key) always included
        pos = torch.sort(torch.cat([torch.randperm(N_T - 1, generator=g)[: rows - 1],
                                    torch.tensor([N_T - 1])])).values
    ref = dense_rows(x, y, vr, orders=orders, causal=causal, positions=pos, with_tv=tv_only)
    out = {}
    for t in orders:
        o, _ = ea_ops.ea_attention(qd, kd, vd, order=t, causal=causal, scale=ea_scale, backend=backend)
        o = rows_of(o)[:, pos]
        rnd = (o - ref.taylor[t]).abs() / spread
        apx = ref.tv[t] if tv_only else (ref.taylor[t] - ref.exact).abs() / spread
        tot = apx + rnd if tv_only else (o - ref.exact).abs() / spread
        tot = torch.where(torch.isfinite(tot), tot, torch.full_like(tot, math.inf))
        out[t] = {"total": tot, "approximation": apx, "rounding": rnd}
    return out


def _sweep_orders(measure, budget, max_order, statistic) -> tuple[dict | None, list[dict]]:
    """Measure orders 0, 2, ... (4 at a time) until one meets the budget."""
    table = []
    orders = list(range(0, max_order + 1, 2))
    for s in range(0, len(orders), 4):
        res = measure(orders[s:s + 4])
        for t in orders[s:s + 4]:
            row = {"order": t, **statistic(res[t])}
            table.append(row)
            if row["predicted_error"] <= budget:
                return row, table
    return None, table


def _select_measured(method, budget, make_inputs, dtype, max_order, causal, rows, seed, backend, statistic,
                     base_desc, ea_scale):
    def measure_at(factor, orders):
        q, k, v = make_inputs()
        return _measure(q * factor, k * factor, v, dtype=dtype, ea_scale=ea_scale, orders=orders,
                        causal=causal, rows=rows, seed=seed, backend=backend)

    pick, table = _sweep_orders(lambda o: measure_at(1.0, o), budget, max_order, statistic)
    evidence = {**base_desc, "dtype": dtype_name(dtype), "budget": budget, "max_order": max_order,
                "causal": causal, "backend": backend, "per_order": table}
    if pick is not None:
        return OrderChoice(pick["order"], pick["predicted_error"], method, evidence)
    best = min(table, key=lambda r: r["predicted_error"])
    evidence["best"] = best
    suggestion = None
    # shrink q and k (equivalently the EA scale) step by step until an order meets the budget
    for i in range(1, 9):
        factor = 2.0 ** (-i / 2)
        ok, _ = _sweep_orders(lambda o, f=factor: measure_at(f, o), budget, max_order, statistic)
        if ok is not None:
            suggestion = {"q_k_factor": factor, "ea_scale_factor": factor**2, "order": ok["order"],
                          "predicted_error": ok["predicted_error"]}
            break
    msg = (f"no even order up to {max_order} meets the budget {budget:g} in {dtype_name(dtype)} "
           f"({method}): the best is order {best['order']} with predicted error {best['predicted_error']:.3g} "
           f"(approximation {best['approximation']:.2g}, rounding {best['rounding']:.2g}).")
    if suggestion is not None:
        msg += (f" Scaling q and k by {suggestion['q_k_factor']:.3g} (EA scale x {suggestion['ea_scale_factor']:.3g})"
                f" would work: order {suggestion['order']}, predicted {suggestion['predicted_error']:.2g}.")
    else:
        msg += " Shrinking q and k by up to 16x did not help"
        if dtype in (torch.bfloat16, torch.float16):
            msg += (f"; {dtype_name(dtype)} output rounding ({UNIT_ROUNDOFF[dtype]:.2g}) limits it: "
                    f"{_wider(dtype, budget)}.")
        else:
            msg += "."
    raise BudgetUnreachable(msg, evidence=evidence, suggestion=suggestion)


def select_order(budget: float, *, scale: float | None = None, sigma: float | None = None,
                 sample: object = None, dtype: torch.dtype | str = torch.float32, confidence: float = 0.99,
                 causal: bool = True, ea_scale: float = 1.0, max_order: int = MAX_ORDER, seq_len: int = 256,
                 channels: int | None = None, rows: int | None = None, seed: int = 0,
                 backend: str = "torch") -> OrderChoice:
    """Smallest even order whose predicted error (relative to the spread of v) is at most ``budget``.

    Exactly one of ``scale`` (bound on ``|q|, |k|``), ``sigma`` (``q, k ~ N(0, sigma^2)``) or ``sample``
    (see :func:`load_sample`). ``confidence`` is the quantile level of the distribution mode (``channels``
    random channels of length ``seq_len``, default ``ceil(20 / (1 - confidence))`` channels, ``rows`` = 16
    sampled positions each) and is reported for the data mode (which evaluates at most ``channels`` = 256
    random channels and ``rows`` = 256 positions of the sample).
    Raises :class:`BudgetUnreachable` when no order up to ``max_order`` meets the budget.
    """
    budget = _check_positive(budget, "budget")
    dtype = parse_dtype(dtype)
    ea_scale = _check_positive(ea_scale, "ea_scale")
    max_order = _check_max_order(max_order)
    confidence = _check_positive(confidence, "confidence")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    given = [name for name, val in (("scale", scale), ("sigma", sigma), ("sample", sample)) if val is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of scale, sigma, sample; got {given or 'none'}")
    if scale is not None:
        return _select_worst_case(budget, _check_positive(scale, "scale"), dtype, max_order, ea_scale)

    if sigma is not None:
        sigma = _check_positive(sigma, "sigma")
        if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
            raise ValueError(f"seq_len must be an int >= 1, got {seq_len!r}")
        M = channels or math.ceil(20 / (1 - confidence))
        R = 16 if rows is None else rows

        def make_inputs():
            g = torch.Generator().manual_seed(seed)
            shape = (M, seq_len, 1, 1)
            q = torch.randn(shape, generator=g, dtype=torch.float64) * sigma
            k = torch.randn(shape, generator=g, dtype=torch.float64) * sigma
            return q, k, torch.randn(shape, generator=g, dtype=torch.float64)

        def statistic(res):
            qv, ucb = _upper_quantile(res["total"], confidence)
            return {"predicted_error": ucb, "quantile": qv, "max_seen": float(res["total"].max()),
                    "approximation": float(torch.quantile(res["approximation"].flatten(), confidence)),
                    "rounding": float(torch.quantile(res["rounding"].flatten(), confidence))}

        desc = {"sigma": sigma, "ea_scale": ea_scale, "channels": M, "seq_len": seq_len, "positions_per_channel": R,
                "confidence": confidence, "samples": M * min(R, seq_len),
                "statistic": f"95% upper confidence bound on the {confidence:g} quantile of the per-position error"}
        return _select_measured("distribution", budget, make_inputs, dtype, max_order, causal, R, seed, backend,
                                statistic, desc, ea_scale)

    data = load_sample(sample)
    R = 256 if rows is None else rows
    B, T, H, D = data["q"].shape
    n_all = B * H * D
    C = min(n_all, channels or 256)
    # channels are independent: evaluate a random subset of them as a batch of one-channel sequences
    pick = torch.randperm(n_all, generator=torch.Generator().manual_seed(seed))[:C] if C < n_all else None

    def as_channels(t):
        flat = rows_of(t)
        flat = flat if pick is None else flat[pick]
        return flat.reshape(-1, T, 1, 1)

    def make_inputs():
        v = as_channels(data["v"]) if "v" in data else None
        return as_channels(data["q"]), as_channels(data["k"]), v

    def statistic(res):
        tot = res["total"]
        return {"predicted_error": float(tot.max()), "quantile": float(torch.quantile(tot.flatten(), confidence)),
                "approximation": float(res["approximation"].max()), "rounding": float(res["rounding"].max())}

    q, k, v = make_inputs()
    r = math.sqrt(ea_scale)
    xq, yk = rows_of(q.to(dtype)) * r, rows_of(k.to(dtype)) * r
    a = float(q.abs().max()) * r
    b = float(k.abs().max()) * r
    desc = {"shape": [B, T, H, D], "channels_evaluated": C, "channels": n_all, "has_v": v is not None,
            "ea_scale": ea_scale, "positions": min(R, T),
            "max_abs_x": a, "max_abs_y": b, "confidence": confidence,
            "statistic": "largest error over the evaluated positions" + ("" if v is not None else
                         " (approximation: worst over all v of spread 1; rounding: with random v)"),
            "worst_case_bound_per_order": {t: worst_case_error(t, a, b) for t in range(0, max_order + 1, 2)},
            "posterior_bound_per_order": {t: float(posterior_factor_rows(xq, yk, t, causal=causal).max())
                                          for t in range(0, max_order + 1, 2)}}
    return _select_measured("data", budget, make_inputs, dtype, max_order, causal, R, seed, backend, statistic,
                            desc, ea_scale)
