"""Floating-point facts per dtype, and the rounding-error estimate used by worst-case order selection.

Kernels accumulate in float32 for float32/bfloat16/float16 inputs (float64 for float64) and round the output
to the input dtype (docs/math.md section 7). Evaluating ``sum_n f_n(x) S_n`` adds Taylor terms of ``exp(2xy)``
that alternate in sign when ``xy < 0``; the relative loss is at most ``K_t(Z)``
(:func:`analysis.taylor.cancellation`), so the estimate is

    rounding(dtype, t, Z) ~= u_acc * (4 + K_t(Z)) + u_out(dtype)

relative to the spread of ``v`` (output rounding counted as ``u_out * max|v| / spread`` with
``max|v| <= spread``, i.e. roughly centred values). This is an estimate, not a proof: it was checked against
the torch kernel on adversarial inputs (query at ``+a``, all keys at ``-a``; keys uniform in ``[-a, a]``),
where the measured error stayed below 0.6 of it, and the tests re-check that on every run.
"""

from __future__ import annotations

import torch

from .taylor import cancellation

# unit roundoff u = 2^-p for a p-bit significand (round to nearest)
UNIT_ROUNDOFF = {
    torch.float64: 2.0**-53,
    torch.float32: 2.0**-24,
    torch.float16: 2.0**-11,
    torch.bfloat16: 2.0**-8,
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "float64": torch.float64}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def parse_dtype(dtype: object) -> torch.dtype:
    """``torch.float32`` or ``"float32"`` (also bfloat16, float16, float64) -> torch dtype."""
    if isinstance(dtype, torch.dtype) and dtype in UNIT_ROUNDOFF:
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(f"dtype must be one of {sorted(DTYPES)} (or the torch dtype), got {dtype!r}")


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def rounding_estimate(dtype: torch.dtype, order: int, zmax: float) -> dict[str, float]:
    """``{"accumulation", "output", "total"}``: estimated rounding error relative to the spread of v
    for EA-t with ``|2xy| <= zmax`` in ``dtype`` (see the module docstring)."""
    u_acc = UNIT_ROUNDOFF[accumulation_dtype(dtype)]
    k = cancellation(order, zmax)
    acc = u_acc * (4.0 + k)
    out = UNIT_ROUNDOFF[dtype] if dtype in (torch.float16, torch.bfloat16) else 0.0
    return {"accumulation": acc, "output": out, "total": acc + out, "cancellation": k}
