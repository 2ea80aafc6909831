"""The stability sweep behind ``ea-ops report``: orders x dtypes x channel scales x backends.

For every (dtype, scale) the same float64 inputs ``q, k, v ~ N(0, 1)`` are cast to the dtype; the EA scale
``s`` sets the channel scale (``x = sqrt(s) q ~ N(0, s)``). Errors are taken against references computed in
float64 from the *cast* inputs (so input quantisation is not counted as kernel error) and divided by each
channel's spread of ``v``, on all query positions (or a fixed sample of them when ``rows`` is set):

- approximation: EA-t (float64, :mod:`analysis.dense`) against exact EA;
- rounding: the kernel against the same EA-t computed in float64;
- total: the kernel against exact EA;
- NaN / Inf counts of the kernel output (all positions and channels).

"Kernels" are every backend in ``ea_ops.dispatch.available()`` that accepts CPU tensors of the dtype, plus
the unstabilised variants of :mod:`analysis.unstabilised` (sums in the dtype itself, and, for half dtypes,
in float32 without rescaling).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .bounds import posterior_factor_rows, worst_case_error
from .dense import dense_rows, rows_of, sample_positions
from .rounding import dtype_name
from .unstabilised import unstabilised_rows


@dataclass
class SweepConfig:
    T: int = 256
    heads: int = 1
    dim: int = 32
    scales: list[float] = field(default_factory=lambda: [0.05, 0.13, 0.33, 0.86, 2.2, 5.9, 16.0])
    orders: list[int] = field(default_factory=lambda: list(range(0, 17, 2)))
    dtypes: list[str] = field(default_factory=lambda: ["float32", "bfloat16", "float16"])
    rows: int | None = None
    causal: bool = True
    seed: int = 0
    backends: list[str] | None = None  # None: every available backend

    @property
    def channels(self) -> int:
        return self.heads * self.dim


def _grid(lo: float, hi: float, n: int) -> list[float]:
    return [float(f"{lo * (hi / lo) ** (i / (n - 1)):.3g}") for i in range(n)]


PRESETS: dict[str, SweepConfig] = {
    # hidden, for the tests: a few seconds
    "tiny": SweepConfig(T=48, heads=1, dim=4, scales=[0.05, 1.0, 16.0], orders=[0, 2, 6],
                        dtypes=["float32", "float16"]),
    "quick": SweepConfig(T=256, heads=1, dim=32, scales=_grid(0.05, 16.0, 7)),
    "full": SweepConfig(T=1024, heads=4, dim=64, scales=_grid(0.05, 16.0, 13), rows=256),
}

DTYPE = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def discover_backends(dtypes: list[str], wanted: list[str] | None = None) -> tuple[list[str], dict[str, str]]:
    """Backends usable on CPU tensors for at least one dtype, and why the others were skipped."""
    import ea_ops
    from ea_ops import dispatch

    found, skipped = [], {}
    for name, why in dispatch.available().items():
        if wanted is not None and name not in wanted:
            continue
        if why is not None:
            skipped[name] = why
            continue
        reasons = []
        for dt in dtypes:
            q = torch.randn(1, 4, 1, 2).to(DTYPE[dt])
            try:
                ea_ops.ea_attention(q, q, q, order=2, backend=name)
                found.append(name)
                break
            except ea_ops.BackendUnavailableError as exc:
                reasons.append(f"{dt}: {exc}")
            except Exception as exc:  # a broken backend must not stop the report; it is listed as skipped
                reasons.append(f"{dt}: failed with {type(exc).__name__}: {exc}")
        else:
            bare = {r.split(": ", 1)[1] for r in reasons}
            skipped[name] = bare.pop() if len(bare) == 1 else "; ".join(reasons)
    return found, skipped


def _stats(err: torch.Tensor) -> dict[str, Any]:
    """max / rms / p99 over the finite entries, and the NaN and Inf counts."""
    finite = torch.isfinite(err)
    e = err[finite].double()
    out = {"nan": int(torch.isnan(err).sum()), "inf": int(torch.isinf(err).sum())}
    if e.numel():
        out.update(max=float(e.max()), rms=float(e.square().mean().sqrt()),
                   p99=float(torch.quantile(e[: 1 << 24], 0.99)))
    else:
        out.update(max=math.nan, rms=math.nan, p99=math.nan)
    return out


def inputs(cfg: SweepConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(cfg.seed)
    shape = (1, cfg.T, cfg.heads, cfg.dim)
    return tuple(torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(3))


def run_sweep(cfg: SweepConfig, *, backends: list[str], show_progress: bool = True) -> list[dict[str, Any]]:
    """One record per (dtype, scale, order, kernel); see the module docstring for the fields."""
    import ea_ops
    from ea_ops.progress import progress

    q64, k64, v64 = inputs(cfg)
    pos = sample_positions(cfg.T, cfg.rows, seed=cfg.seed)
    groups = [(dt, s) for dt in cfg.dtypes for s in cfg.scales]
    cells: list[dict[str, Any]] = []
    for dt, s in progress(groups, total=len(groups), desc="stability sweep", disable=not show_progress):
        dtype = DTYPE[dt]
        qd, kd, vd = q64.to(dtype), k64.to(dtype), v64.to(dtype)
        r = math.sqrt(s)
        x, y, v = rows_of(qd) * r, rows_of(kd) * r, rows_of(vd)
        spread = (v.amax(1) - v.amin(1)).clamp_min(1e-300)[:, None]
        t0 = time.perf_counter()
        ref = dense_rows(x, y, v, orders=cfg.orders, causal=cfg.causal, positions=pos)
        ref_s = time.perf_counter() - t0
        a_max, b_max = float(x.abs().max()), float(y.abs().max())
        kernels = list(backends)
        if cfg.causal:
            kernels.append(f"unstabilised-{dt}")
            if dtype != torch.float32:
                kernels.append("unstabilised-float32")
        for t in cfg.orders:
            approx = (ref.taylor[t] - ref.exact).abs()
            factor = posterior_factor_rows(x, y, t, causal=cfg.causal)[:, pos]
            # a-posteriori bound relative to the channel's spread (the visible spread is never larger)
            violations = int((approx > factor * spread + 1e-9 * spread).sum())
            base = {"dtype": dt, "scale": s, "order": t, "max_abs_x": a_max, "max_abs_y": b_max,
                    "worst_case_bound": worst_case_error(t, a_max, b_max),
                    "posterior_bound_max": float(factor.max()), "bound_violations": violations,
                    "approximation": _stats(approx / spread), "reference_seconds": ref_s}
            cells.append({**base, "kernel": "reference"})
            for name in kernels:
                rec = {**base, "kernel": name}
                try:
                    if name.startswith("unstabilised-"):
                        acc = DTYPE.get(name.removeprefix("unstabilised-"), torch.float32)
                        o = unstabilised_rows(x.to(acc), y.to(acc), v, t, acc)
                    else:
                        o = ea_ops.ea_attention(qd, kd, vd, order=t, causal=cfg.causal, scale=s, backend=name)[0]
                    o = (o if o.dim() == 2 else rows_of(o)).double()
                    rec["output"] = {"nan": int(torch.isnan(o).sum()), "inf": int(torch.isinf(o).sum()),
                                     "values": o.numel()}
                    o = o[:, pos]
                    rec["rounding"] = _stats((o - ref.taylor[t]).abs() / spread)
                    rec["total"] = _stats((o - ref.exact).abs() / spread)
                except ea_ops.BackendUnavailableError as exc:
                    rec["skipped"] = str(exc)
                except Exception as exc:  # recorded, not hidden: the report lists failing kernels
                    rec["failed"] = f"{type(exc).__name__}: {exc}"
                cells.append(rec)
    return cells


SHIFTS = [0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0]


def shift_sweep(cfg: SweepConfig, *, backends: list[str], order: int = 6, shifts: list[float] = SHIFTS,
                T: int = 128, channels: int = 16) -> list[dict[str, Any]]:
    """What stabilisation buys: ``x, y ~ N(mu, 0.25^2)`` (scale 1) for growing shifts ``mu``.

    Exact EA is unchanged by the shift; ``exp(-y^2)`` underflows once ``|y|`` passes ~4.2 (float16),
    ~9.7 (bfloat16), ~10.2 (float32), so sums without the running-minimum rescaling become 0/0. Records
    NaN/Inf counts and the rounding error (kernel vs EA-t in float64) per dtype, shift and kernel.
    """
    import ea_ops

    g = torch.Generator().manual_seed(cfg.seed + 1)
    base = [torch.randn(1, T, 1, channels, generator=g, dtype=torch.float64) for _ in range(3)]
    cells = []
    for dt in cfg.dtypes:
        dtype = DTYPE[dt]
        for mu in shifts:
            qd, kd = (base[0] * 0.25 + mu).to(dtype), (base[1] * 0.25 + mu).to(dtype)
            vd = base[2].to(dtype)
            x, y, v = rows_of(qd), rows_of(kd), rows_of(vd)
            spread = (v.amax(1) - v.amin(1)).clamp_min(1e-300)[:, None]
            ref = dense_rows(x, y, v, orders=[order], exact=False)
            for name in [*backends, f"unstabilised-{dt}"]:
                if name.startswith("unstabilised-"):
                    o = unstabilised_rows(x, y, v, order, dtype)
                else:
                    try:
                        o = rows_of(ea_ops.ea_attention(qd, kd, vd, order=order, backend=name)[0])
                    except Exception as exc:  # listed, not hidden
                        cells.append({"dtype": dt, "shift": mu, "kernel": name, "failed": str(exc)})
                        continue
                o = o.double()
                cells.append({"dtype": dt, "shift": mu, "kernel": name, "order": order,
                              "output": {"nan": int(torch.isnan(o).sum()), "inf": int(torch.isinf(o).sum()),
                                         "values": o.numel()},
                              "rounding": _stats((o - ref.taylor[order]).abs() / spread)})
    return cells


def config_dict(cfg: SweepConfig) -> dict[str, Any]:
    return {**asdict(cfg), "channels": cfg.channels}


__all__ = ["PRESETS", "SweepConfig", "config_dict", "discover_backends", "dtype_name", "inputs", "run_sweep",
           "shift_sweep"]
