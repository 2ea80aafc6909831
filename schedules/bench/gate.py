"""The correctness gate: a kernel whose output (or gradients) disagree with the torch reference gets no speed.

The reference is the torch backend on the same inputs upcast to float64, or to float32 when the workload is
larger than ``REF64_MAX_ELEMS`` elements per tensor (the float32 torch backend agrees with its float64 run
to ~1e-7 relative, far inside every tolerance below). Errors are max-norm relative:
``max|a - ref| / max|ref|`` per output tensor; any non-finite value fails.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ea_ops.testing import rel_err

REF64_MAX_ELEMS = 1 << 22
# Max-norm relative error allowed per input dtype: the output is rounded to that dtype (2^-9 for bf16,
# 2^-12 for fp16 relative to |o|), with room for float32 accumulation in a different order.
TOLERANCE = {"float64": 1e-10, "float32": 1e-4, "float16": 2e-3, "bfloat16": 1.6e-2}
NAMES = {"fwd": ("o",), "fwdbwd": ("o", "dq", "dk", "dv"), "step": ("o", "S", "Z", "m")}


@dataclass
class GateResult:
    """Outcome of one comparison: ``errors`` maps output name to its relative error."""

    ok: bool
    errors: dict[str, float] = field(default_factory=dict)
    tol: float = 0.0
    ref_dtype: str = ""
    message: str = ""

    def to_json(self) -> dict:
        # JSON has no infinity: a non-finite error (NaN output, wrong shape) is written as null.
        errors = {n: (e if math.isfinite(e) else None) for n, e in self.errors.items()}
        return {"ok": self.ok, "errors": errors, "tol": self.tol, "ref_dtype": self.ref_dtype,
                "message": self.message}


def reference_dtype(numel: int) -> torch.dtype:
    return torch.float64 if numel <= REF64_MAX_ELEMS else torch.float32


def compare(mode: str, dtype: str, got: tuple, ref: tuple, ref_dtype: torch.dtype, what: str) -> GateResult:
    """Compare the outputs ``got`` of ``what`` against ``ref`` (same order as ``NAMES[mode]``)."""
    tol = TOLERANCE[dtype]
    errors = {name: rel_err(a, b) for name, a, b in zip(NAMES[mode], got, ref, strict=True)}
    bad = {n: e for n, e in errors.items() if not e <= tol}
    rd = str(ref_dtype).replace("torch.", "")
    if not bad:
        return GateResult(True, errors, tol, rd, f"{what}: matches the torch reference ({rd})")
    worst = ", ".join(f"{n} rel. error {e:.3g}" for n, e in bad.items())
    return GateResult(False, errors, tol, rd,
                      f"{what}: WRONG against the torch reference ({rd}): {worst} > tolerance {tol:g}")
