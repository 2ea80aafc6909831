"""Workload presets for ``ea-ops tune --backend tvm --workloads NAME``.

A workload is one kernel at one static shape ``[B, T, H, D]``; the record it produces applies at run time
to calls with the same kernel, order, dtype, ``H`` and ``D`` (nearest ``T`` bucket), see
``ea_ops.backends.tvm.tuned``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

BENCH_SHAPE = (1, 4096, 8, 64)  # the speed goal of issue 4: B=1, T=4096, H=8, D=64


@dataclass(frozen=True)
class Workload:
    kernel: str
    causal: bool
    order: int
    dtype: str
    B: int
    T: int
    H: int
    D: int

    @property
    def name(self) -> str:
        c = "causal" if self.causal else "full"
        return f"{self.kernel}-{c}-t{self.order}-{self.dtype}-B{self.B}T{self.T}H{self.H}D{self.D}"

    def as_dict(self) -> dict:
        return asdict(self)


def _kernels(preset: str) -> list[tuple[str, bool, str, tuple[int, int, int, int]]]:
    bench = BENCH_SHAPE
    if preset == "bench":  # what ships in autotune_cache/ for this CPU class
        return [("forward", True, "float32", bench), ("backward", True, "float32", bench)]
    if preset == "default":
        return [("forward", True, "float32", bench), ("backward", True, "float32", bench),
                ("forward", False, "float32", bench), ("backward", False, "float32", bench)]
    if preset == "full":
        out = []
        for dtype in ("float32", "bfloat16", "float16"):
            out += [("forward", True, dtype, bench), ("backward", True, dtype, bench),
                    ("forward", False, dtype, bench), ("backward", False, dtype, bench),
                    ("step", True, dtype, (1, 1, bench[2], bench[3]))]
        return out
    if preset == "tiny":  # seconds per trial: for tests and demos
        return [("forward", True, "float32", (1, 64, 2, 16))]
    if preset == "tiny-backward":
        return [("backward", True, "float32", (1, 64, 2, 16))]
    raise SystemExit(f"--workloads must be one of {PRESETS}, got {preset!r}")


PRESETS = ("bench", "default", "full", "tiny", "tiny-backward")


def preset(name: str, orders: list[int]) -> list[Workload]:
    return [Workload(k, c, o, dt, *shape) for o in orders for (k, c, dt, shape) in _kernels(name)]
