"""Targets the tuner and the cross compiler understand: ``cpu`` (this machine) and ``cuda:sm_XX``.

Fingerprints come from ``ea_ops.backends.tvm.target`` (the runtime must compute the same name to find the
records): CPU ``<arch>-<vendor>-f<family>m<model>-<isa>-<cores>c``, GPU ``cuda-sm_90``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ea_ops.backends.tvm import target as rt_target

from .workloads import Workload


def versions() -> dict:
    import tvm
    import tvm_ffi

    import ea_ops

    try:
        import torch

        tv = torch.__version__
    except ImportError:
        tv = None
    return {"tvm": tvm.__version__, "tvm_ffi": getattr(tvm_ffi, "__version__", None), "torch": tv,
            "ea_ops": ea_ops.__version__}


@dataclass
class TuneTarget:
    kind: str  # "cpu" or "cuda"
    arch: str | None = None  # sm_90 for cuda

    @property
    def fingerprint(self) -> str:
        return rt_target.cpu_fingerprint() if self.kind == "cpu" else rt_target.cuda_fingerprint(self.arch)

    @property
    def target(self):
        return rt_target.cpu_target() if self.kind == "cpu" else rt_target.cuda_target(self.arch)

    def describe(self) -> dict:
        if self.kind == "cpu":
            return {**rt_target.cpu_target_dict(), **{f"cpu_{k}": v for k, v in rt_target.cpu_info().items()}}
        return {"kind": "cuda", "arch": self.arch}

    def local_device(self) -> bool:
        if self.kind == "cpu":
            return True
        import tvm

        return bool(tvm.cuda(0).exist)

    def space(self, w: Workload):
        from . import spaces

        if self.kind == "cpu":
            return spaces.space_generator(w.kernel, w.causal, spaces.spaces_for(w.B * w.T * w.H * w.D))
        return spaces.cuda_space_generator(w)

    def module(self, w: Workload):
        """The static-shape, unscheduled IRModule MetaSchedule tunes for one workload on this target."""
        import tvm

        static = {"B": w.B, "T": w.T, "r": 1.0}
        if self.kind == "cuda":
            from ea_ops.backends.tvm import cuda_kernels

            cfg = cuda_kernels.default_config(w.kernel, w.causal, w.B * w.H * w.D)
            func = cuda_kernels.func_for(w.kernel, w.causal, w.order, w.dtype, w.H, w.D, cfg, static)
        else:
            from ea_ops.backends.tvm import cpu_kernels

            func = cpu_kernels.build_func(w.kernel, w.order, w.dtype, w.causal, w.H, w.D, static=static)
        return tvm.IRModule({"main": func})

    def scheduled(self, w: Workload, cfg: dict | None):
        """The workload's IRModule under ``cfg`` (None: the default schedule), time loops checked."""
        from ea_ops.backends.tvm import schedule

        if self.kind == "cpu":  # the runtime's module (schedule.cpu_module), at the workload's static shape
            cfg = schedule.default_cpu_config(w.kernel, w.H, w.D) if cfg is None else \
                schedule.validate_cpu_config(cfg, w.H, w.D)
            return schedule.cpu_module(w.kernel, w.causal, w.order, w.dtype, w.H, w.D, cfg,
                                       static={"B": w.B, "T": w.T, "r": 1.0})
        from ea_ops.backends.tvm import cuda_kernels

        cfg = cfg or cuda_kernels.default_config(w.kernel, w.causal, w.B * w.H * w.D)
        return cuda_kernels.scheduled_module(w.kernel, w.causal, w.order, w.dtype, w.H, w.D, cfg,
                                     static={"B": w.B, "T": w.T, "r": 1.0})


def parse(text: str | None) -> TuneTarget:
    """``None``/``cpu``/``llvm`` -> this CPU; ``cuda:sm_90`` (or ``cuda`` = sm_90) -> that GPU arch."""
    if text in (None, "", "cpu", "llvm"):
        return TuneTarget("cpu")
    m = re.fullmatch(r"cuda(?::(sm_\d+[a-z]?))?", text)
    if m:
        return TuneTarget("cuda", m.group(1) or "sm_90")
    raise SystemExit(f"--target must be cpu or cuda:sm_XX (e.g. cuda:sm_90), got {text!r}")
