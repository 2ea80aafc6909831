"""Workload presets of ``ea-ops tune --backend triton --workloads NAME``.

A workload is a shape and dtype; the tuner measures the forward (causal and not), the backward (causal
and not) and the step on it. Records key on ``H*D`` and coarse buckets (``ea_ops.backends.triton.configs``), so a
preset needs one shape per bucket, not every T.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Workload:
    B: int
    T: int
    H: int
    D: int
    dtype: str = "bfloat16"
    kernels: tuple[str, ...] = ("forward", "backward", "step")
    noncausal: bool = True

    @property
    def label(self) -> str:
        return f"B{self.B}xT{self.T}xH{self.H}xD{self.D}/{self.dtype}"


PRESETS: dict[str, list[Workload]] = {
    # GPU: the H200 goal shapes and their neighbours (few and many lanes, short and long T)
    "default": [
        Workload(8, 8192, 16, 128), Workload(8, 2048, 16, 128), Workload(1, 8192, 16, 128),
        Workload(32, 1024, 32, 128), Workload(8, 4096, 16, 64),
        Workload(8, 2048, 16, 128, "float16"), Workload(8, 2048, 16, 128, "float32"),
    ],
    # what scripts/gpu_check.sh tunes in its time budget
    "small": [
        Workload(8, 8192, 16, 128, noncausal=False), Workload(8, 2048, 16, 128, noncausal=False),
    ],
    # Triton's interpreter on CPU tensors (TRITON_INTERPRET=1): exercises the tuner end to end, tiny shapes
    "interp": [
        Workload(1, 48, 2, 16, "float32", kernels=("forward", "step"), noncausal=False),
    ],
}


def preset(name: str) -> list[Workload]:
    try:
        return PRESETS[name]
    except KeyError:
        raise SystemExit(f"--workloads must be one of {sorted(PRESETS)} for triton, got {name!r}") from None
