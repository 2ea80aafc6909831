"""Benchmark workloads: one shape, order, dtype, mode and device each, and the named presets.

A workload's ``T`` is the sequence length for ``fwd``/``fwdbwd`` and the context length (KV-cache length
for attention) for ``step``, where EA's cost does not depend on it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ea_ops.checks import parse_shape as parse_dims

from .goals import Goal

MODES = ("fwd", "fwdbwd", "step")
DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}
STATE_BYTES = 4  # EA states are float32 (docs/math.md section 7)


@dataclass(frozen=True)
class Workload:
    """One measurement point: ``q, k, v [B, T, H, D]`` (``[B, H, D]`` per step in ``step`` mode)."""

    B: int
    T: int
    H: int
    D: int
    order: int = 6
    dtype: str = "float32"
    mode: str = "fwd"
    device: str = "cpu"

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def elem_bytes(self) -> int:
        return torch.empty((), dtype=self.torch_dtype).element_size()

    @property
    def label(self) -> str:
        what = "ctx" if self.mode == "step" else "T"
        return f"B{self.B} {what}{self.T} H{self.H} D{self.D}"

    def ea_bytes(self) -> int:
        """The least traffic of EA for this workload, in bytes.

        fwd: q, k, v read and o written (4 tensors of B*T*H*D). fwdbwd: that plus the backward's q, k, v,
        o, do read and dq, dk, dv written (12 tensors in all). step: q, k, v read, o written (B*H*D each)
        and the float32 state S, Z ([B, H, t+1, D]) and m ([B, H, D]) read and written.
        """
        n = self.B * self.T * self.H * self.D
        if self.mode == "fwd":
            return 4 * n * self.elem_bytes
        if self.mode == "fwdbwd":
            return 12 * n * self.elem_bytes
        bhd = self.B * self.H * self.D
        state = (2 * (self.order + 1) + 1) * bhd * STATE_BYTES
        return 4 * bhd * self.elem_bytes + 2 * state

    def sdpa_bytes(self) -> int:
        """Least traffic of softmax attention: as EA for fwd/fwdbwd; one query against a K, V cache of T."""
        if self.mode != "step":
            return self.ea_bytes()
        bhd = self.B * self.H * self.D
        return (2 * bhd + 2 * bhd * self.T) * self.elem_bytes

    def to_json(self) -> dict:
        return {"B": self.B, "T": self.T, "H": self.H, "D": self.D, "order": self.order,
                "dtype": self.dtype, "mode": self.mode, "device": self.device}


def _sweep(base: Workload, ts: list[int]) -> list[Workload]:
    return [replace(base, T=t) for t in ts]


def _pow2(lo: int, hi: int) -> list[int]:
    out, t = [], lo
    while t <= hi:
        out.append(t)
        t *= 2
    return out


@dataclass(frozen=True)
class Preset:
    """A named set of workloads (``plan``): what it is, the device it needs (None: CUDA when present, else the
    CPU), the backend ``--backend`` defaults to (None: auto) and the goals an issue stated for it."""

    description: str
    device: str | None
    backend: str | None = None
    goals: tuple[Goal, ...] = ()


GOAL_SHAPE = (8, 8192, 16, 128)  # the Triton issue's H200 size: B, T, H, D (bfloat16, order 6)
TVM_SHAPE = (1, 4096, 8, 64)  # the TVM issue's CPU size (float32, order 6)
DECODE_BATCHES, DECODE_CONTEXT = (1, 8, 64), 1024  # the decode issue's batches, and SDPA's KV-cache length
LONG_TS = _pow2(1024, 262144)  # the long-sequence issue's sweep

PRESETS: dict[str, Preset] = {
    "cpu": Preset("B=1 H=8 D=64 order 6 float32 (the TVM issue's size at T=4096), T from 1k to 64k", "cpu"),
    "gpu": Preset("B=8 H=16 D=128 order 6 bfloat16 (the Triton issue's size at T=8192), T from 2k to 64k", "cuda"),
    "decode": Preset(
        "batched decode: one recurrent step at B = 1, 8, 64 (H=8 D=64 float32 on the CPU, H=16 D=128 bfloat16 on "
        "CUDA; order 6) through ea_recurrent_step (the kernel row), through EADecoder (state in place) and as its "
        "compiled kernel alone, against SDPA over a 1k KV cache", None,
        goals=(Goal("the step through EADecoder at most 3x its compiled kernel alone", "step", "inplace", "speedup",
                    "<=", 3.0, of="kernel_only"),
               Goal("the step through EADecoder at least 4x faster than SDPA over a 1k KV cache", "step", "sdpa",
                    "speedup", ">=", 4.0, of="inplace"),
               Goal("the step through ea_recurrent_step (a new state each call) at least 4x faster than SDPA",
                    "step", "sdpa", "speedup", ">=", 4.0))),
    "demo": Preset("B=1 H=8 D=64 order 6 float32 at T=512 and 1024: a quick look on this CPU", "cpu"),
    "smoke": Preset("tiny shapes for tests: B=1 H=2 D=16 at T=64 and 128", "cpu"),
    "gpu-goal": Preset(
        "the Triton issue's H200 goals: forward at B=8 T=8192 H=16 D=128 bfloat16 order 6 (torch.compile "
        "timed last, its compile time is the least predictable), forward+backward at T=2k, 4k, 8k, and the "
        "decode step at contexts 1k, 8k, 32k",
        "cuda", backend="triton",
        goals=(Goal("forward at B=8 T=8192 H=16 D=128 bf16 order 6 at 70% of the copy roofline",
                    "fwd", "kernel", "roofline", ">=", 0.70),
               Goal("forward+backward faster than SDPA from T=2048", "fwdbwd", "sdpa", "speedup", ">", 1.0, 2048),
               Goal("decode step flat in the context (slowest / fastest < 1.25)", "step", "kernel", "spread",
                    "<", 1.25))),
    "fast-default": Preset(
        "what backend='auto' gives a CPU user: B=1 H=8 D=64 order 6 float32 forward at T=512..4096, an untuned "
        "shape (B=1 T=2048 H=12 D=48 order 4), and forward+backward at T=4096, against the torch backend and SDPA",
        "cpu",
        goals=(Goal("auto >= 20x the torch backend", "fwd", "eager", "speedup", ">=", 20.0),
               Goal("auto faster than SDPA from T=512", "fwd", "sdpa", "speedup", ">", 1.0, 512))),
    "coldstart": Preset(
        "a fresh process's first call (B=1 T=4096 H=8 D=64 float32 order 6, forward+backward) with an empty "
        "compiled-kernel cache against a second process's with the cache filled (schedules/bench/coldstart.py)",
        "cpu", backend="tvm"),
    "long": Preset(
        "long sequences on the CPU: B=1 H=8 D=64 order 6 float32, forward (also into a preallocated output, out=) "
        "and forward+backward at T = 1k..256k, against the untuned default and a copy of the same bytes (the "
        "memory roofline)",
        "cpu",
        goals=(Goal("forward into a preallocated output (out=, as the copy writes one) at T = 16k and 64k at least "
                    "50% of the copy roofline", "fwd", "out", "roofline", ">=", 0.5, 16384, T_to=65536),
               Goal("forward+backward at T = 16k and 64k at least 30% of the copy roofline", "fwdbwd", "kernel",
                    "roofline", ">=", 0.3, 16384, T_to=65536),
               Goal("forward (out=) per token at 64k within 1.3x of 4k", "fwd", "out", "token_ratio", "<=", 1.3,
                    4096, T_to=65536),
               Goal("forward+backward per token at 64k within 1.3x of 4k", "fwdbwd", "kernel", "token_ratio", "<=",
                    1.3, 4096, T_to=65536))),
    "tvm-speed": Preset(
        "the TVM issue's CPU goals: B=1 T=4096 H=8 D=64 float32 order 6, forward and forward+backward, "
        "against the default schedule and the unstabilised cumsum form",
        "cpu", backend="tvm",
        goals=(Goal("tuned causal forward >= 20x eager PyTorch", "fwd", "eager", "speedup", ">=", 20.0),
               Goal("tuned forward >= 1.3x the default schedule", "fwd", "default", "speedup", ">=", 1.3),
               Goal("forward >= 50% of the memory roofline", "fwd", "kernel", "roofline", ">=", 0.5),
               Goal("forward+backward >= 10x autograd through the eager cumsum form (the issue states it for "
                    "the backward alone)", "fwdbwd", "cumsum", "speedup", ">=", 10.0))),
}


def plan(name: str, device: str) -> list[tuple[Workload, tuple[str, ...] | None]]:
    """The workloads of preset ``name`` on ``device`` ("cpu" or "cuda"), each with its peers (None: the
    command's default)."""
    if name == "gpu-goal":
        fwd = Workload(*GOAL_SHAPE, 6, "bfloat16", "fwd", device)
        return [(fwd, ("default", "eager", "sdpa", "flash_attn", "copy")),
                *((replace(fwd, T=t, mode="fwdbwd"), ("sdpa", "flash_attn", "copy")) for t in (2048, 4096, 8192)),
                *((replace(fwd, T=t, mode="step"), ("sdpa", "copy")) for t in (1024, 8192, 32768)),
                (fwd, ("compiled", "copy"))]
    if name == "fast-default":
        fwd, peers = Workload(*TVM_SHAPE, 6, "float32", "fwd", device), ("eager", "sdpa", "copy")
        return [*((replace(fwd, T=t), peers) for t in (512, 1024, 2048, 4096)),
                (Workload(1, 2048, 12, 48, 4, "float32", "fwd", device), peers),
                (replace(fwd, mode="fwdbwd"), ("eager", "sdpa"))]
    if name == "decode":
        base = (Workload(1, DECODE_CONTEXT, 16, 128, 6, "bfloat16", "step", device) if device == "cuda"
                else Workload(1, DECODE_CONTEXT, 8, 64, 6, "float32", "step", device))
        return [(replace(base, B=b), ("inplace", "kernel_only", "eager", "sdpa", "copy")) for b in DECODE_BATCHES]
    if name == "long":
        fwd = Workload(*TVM_SHAPE, 6, "float32", "fwd", device)
        return [(replace(fwd, T=t, mode=m), ("out", "default", "copy") if m == "fwd" else ("default", "copy"))
                for m in ("fwd", "fwdbwd") for t in LONG_TS]
    if name == "tvm-speed":
        fwd, peers = Workload(*TVM_SHAPE, 6, "float32", "fwd", device), ("default", "eager", "cumsum", "copy")
        return [(fwd, peers), (replace(fwd, mode="fwdbwd"), peers)]
    return [(w, None) for w in _sweep_preset(name, device)]


def preset(name: str, device: str) -> list[Workload]:
    """The workloads of preset ``name`` on ``device``."""
    return [w for w, _ in plan(name, device)]


def _sweep_preset(name: str, device: str) -> list[Workload]:
    if name == "cpu":
        return _sweep(Workload(*TVM_SHAPE, 6, "float32", "fwd", device), _pow2(1024, 65536))
    if name == "gpu":
        return _sweep(Workload(*GOAL_SHAPE, 6, "bfloat16", "fwd", device), _pow2(2048, 65536))
    if name == "demo":
        return _sweep(Workload(1, 1024, 8, 64, 6, "float32", "fwd", device), [512, 1024])
    if name == "smoke":
        return _sweep(Workload(1, 64, 2, 16, 6, "float32", "fwd", device), [64, 128])
    raise ValueError(f"--workload must be one of {sorted(PRESETS)}, got {name!r}")


def parse_shape(text: str) -> tuple[int, int, int, int]:
    """``"B,T,H,D"`` -> four positive ints (ValueError naming --shape otherwise)."""
    return parse_dims(text)  # type: ignore[return-value]
