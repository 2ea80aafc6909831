"""How exact a layer's EA-t is, from the channel range it sees: the analysis suite's table, read as data.

``accuracy_table.json`` beside this file is written by ``python -m analysis.layer_table`` (ea_ops never imports
``analysis``) and checked by tests/analysis/test_layer_table.py. Errors are ``|EA-t - exact EA|`` relative to
the spread of the values, for float32 inputs:

- :func:`predicted_error` (``typical``): from the channel RMS ``sigma`` of ``x = sqrt(s) q`` and ``y = sqrt(s) k``,
  a 95% upper confidence bound on the 0.99 quantile of the per-position error for ``q, k ~ N(0, sigma^2)``;
- :func:`worst_case_bound`: from ``Z = 2 max|x| max|y|``, the proven bound over every input within those maxima;
- :func:`auto_scale`: the ``scale`` for unit-RMS channels (what ``qk_norm="rms"`` gives) that meets a budget.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TABLE_PATH = Path(__file__).with_name("accuracy_table.json")
DEFAULT_BUDGET = 1e-3
# the per-channel RMS that scale="auto" allows for (q, k after qk_norm="rms" have RMS 1 per token; see auto_scale)
AUTO_CHANNEL_RMS = 1.25


class EAAccuracyWarning(UserWarning):
    """A layer's channels left the range where its order meets its error budget (given once per layer)."""


@functools.cache
def load_accuracy_table() -> dict[str, Any]:
    """The shipped table (validated JSON; see the module docstring)."""
    data = json.loads(TABLE_PATH.read_text())
    if not isinstance(data, dict) or data.get("schema_version") != 1:
        raise ValueError(f"{TABLE_PATH} is not an accuracy table of schema_version 1")
    for part, axis in (("typical", "sigma"), ("worst_case", "Z")):
        grid = data[part][axis]
        if any(b <= a for a, b in zip(grid, grid[1:])):
            raise ValueError(f"{TABLE_PATH}: {part}.{axis} must increase")
        for order, errs in data[part]["error"].items():
            if len(errs) != len(grid):
                raise ValueError(f"{TABLE_PATH}: {part}.error[{order}] must have {len(grid)} entries")
    return data


def table_orders() -> list[int]:
    """The even orders the table covers."""
    return sorted(int(t) for t in load_accuracy_table()["typical"]["error"])


def _check_order(order: object) -> int:
    orders = table_orders()
    if isinstance(order, bool) or not isinstance(order, int) or order not in orders:
        raise ValueError(f"order must be one of the accuracy table's orders {orders}, got {order!r}")
    return order


def _check_budget(budget: object) -> float:
    if isinstance(budget, bool) or not isinstance(budget, int | float) or not math.isfinite(budget) or budget <= 0:
        raise ValueError(f"error_budget must be a finite number > 0, got {budget!r}")
    return float(budget)


def _interp_loglog(xs: list[float], ys: list[float], x: float) -> float:
    """Piecewise log-log interpolation of an increasing curve; below the grid its first value (an upper bound
    there, the curves increase), above it ``inf`` (no prediction: treated as out of budget)."""
    if not math.isfinite(x) or x > xs[-1]:
        return math.inf
    if x <= xs[0]:
        return ys[0]
    i = next(j for j in range(1, len(xs)) if xs[j] >= x)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    if y0 <= 0 or y1 <= 0 or not (math.isfinite(y0) and math.isfinite(y1)):
        return y1
    f = (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0))
    return math.exp(math.log(y0) + f * (math.log(y1) - math.log(y0)))


def predicted_error(order: int, sigma: float) -> float:
    """Predicted error of EA-``order`` for channels of RMS ``sigma`` (of ``x = sqrt(s) q`` and ``y``)."""
    t = load_accuracy_table()["typical"]
    return _interp_loglog(t["sigma"], t["error"][str(_check_order(order))], float(sigma))


def worst_case_bound(order: int, Z: float) -> float:
    """Proven error bound of EA-``order`` over inputs with ``|2 x y| <= Z``."""
    t = load_accuracy_table()["worst_case"]
    return _interp_loglog(t["Z"], t["error"][str(_check_order(order))], float(Z))


def layer_errors(order: int, sigma: float, Z: float) -> tuple[float, float]:
    """``(predicted, worst_case)`` for channels of RMS ``sigma`` whose ``|2 x y|`` stays within ``Z``: the proven bound
    at ``Z``, and the prediction: the typical error at ``sigma``, or the proven bound where that is smaller (the
    typical curve assumes Gaussian channels, whose tails a bounded channel does not have). ``nan`` for an order the
    table does not cover."""
    if order not in table_orders():
        return math.nan, math.nan
    worst = worst_case_bound(order, Z)
    return min(predicted_error(order, sigma), worst), worst


def auto_scale(order: int, error_budget: float = DEFAULT_BUDGET, *, bound: float | None = None,
               channel_rms: float = AUTO_CHANNEL_RMS) -> float:
    """The EA ``scale`` that meets ``error_budget`` at ``order``. ValueError when none on the table's grid does.

    - ``bound=c`` (channels of ``q, k`` within ``|q|, |k| <= c``, as ``qk_norm="rms"`` makes them): the largest
      ``s = Z / (2 c^2)`` on the worst-case grid whose proven bound meets the budget, so that every input with
      ``|x|, |y| <= c sqrt(s)`` does.
    - ``bound=None``: ``(sigma / channel_rms)^2`` with ``sigma`` the largest RMS of ``x = sqrt(s) q`` on the typical
      grid whose predicted error meets the budget, for channels of RMS up to ``channel_rms``. An RMS normalisation
      makes each token's RMS over a head's channels 1; one channel's RMS over tokens varies around it (up to about
      1.3x at head_dim 8, 1.15x at 64, at initialisation, and training may concentrate the energy in a few
      channels), hence the default 1.25. The tracker measures the real one."""
    order = _check_order(order)
    budget = _check_budget(error_budget)
    for name, val in (("bound", bound), ("channel_rms", channel_rms)):
        if val is not None and (isinstance(val, bool) or not isinstance(val, int | float) or not val > 0
                                or not math.isfinite(val)):
            raise ValueError(f"{name} must be a finite number > 0, got {val!r}")
    table = load_accuracy_table()
    part, axis = ("worst_case", "Z") if bound is not None else ("typical", "sigma")
    errs = table[part]["error"][str(order)]
    ok = [x for x, e in zip(table[part][axis], errs) if e <= budget]
    if not ok:
        raise ValueError(f"no channel scale in the accuracy table meets error_budget={budget:g} at order {order} "
                         f"(the best is {min(errs):.2g}); raise the budget or the order")
    if bound is not None:
        return max(ok) / (2 * bound * bound)
    return (max(ok) / channel_rms) ** 2


@dataclass(frozen=True)
class LayerAccuracy:
    """What one layer's tracker saw since its last reset, and the error it predicts (relative to spread(v))."""

    name: str
    order: int
    scale: float
    error_budget: float
    updates: int
    rms_x: float  # largest per-channel RMS of x = sqrt(s) q
    rms_y: float  # of y = sqrt(s) k
    max_x: float  # largest |x| seen
    max_y: float
    predicted_error: float  # table "typical" at max(rms_x, rms_y), or worst_case_bound when smaller
    worst_case_bound: float  # proven, at Z = max over channels of 2 max|x| max|y|

    @property
    def within_budget(self) -> bool:
        """False only when the prediction exceeds the budget (``nan``: nothing tracked, or an order the table
        does not cover)."""
        return not self.predicted_error > self.error_budget


class AccuracyReport(list):
    """A list of :class:`LayerAccuracy`, printed as a table."""

    def __str__(self) -> str:
        head = (f"{'layer':<28} {'order':>5} {'scale':>7} {'rms x':>7} {'rms y':>7} {'max|x|':>7} {'max|y|':>7} "
                f"{'predicted':>10} {'worst case':>10} {'budget':>8}  ok")
        lines = [head]
        for r in self:
            lines.append(f"{r.name[-28:]:<28} {r.order:>5} {r.scale:>7.3g} {r.rms_x:>7.3g} {r.rms_y:>7.3g} "
                         f"{r.max_x:>7.3g} {r.max_y:>7.3g} {r.predicted_error:>10.2e} {r.worst_case_bound:>10.2e} "
                         f"{r.error_budget:>8.1e}  {'yes' if r.within_budget else 'NO'}")
        return "\n".join(lines)
