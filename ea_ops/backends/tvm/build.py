"""Compiled kernels, built once per process and configuration (symbolic ``B`` and ``T``).

``kernel_for(...)`` picks the configuration (a tuned record for this target and workload, else the
default schedule) and finds the module: in a process-wide cache, else in the compiled-kernel cache on disk
(``disk_cache``: loaded only from the user's own folder, checked against its manifest), else it builds it with
LLVM for this CPU and stores it there. Later calls with any ``B`` and ``T`` reuse it.

``kernel_for(..., target="sm_90", channels=B*H*D)`` is a CUDA kernel for that GPU arch: a loaded CUDA pack's, else
built in this process (``build_cuda``: TVM's CUDA code generator, then NVRTC or nvcc; not kept on disk), with the
untuned default schedule (``cuda_device.default_config``: the variant depends on the channel count).
"""

from __future__ import annotations

import threading
from dataclasses import replace

from ...records import t_bucket, warn_once
from . import packs, tuned
from .compiled import Compiled
from .target import cpu_fingerprint

_modules: dict[tuple, Compiled] = {}
_fast: dict[tuple, Compiled] = {}
_lock = threading.Lock()
BUILD_LOG: list[tuple] = []  # (key, seconds) of every build in this process, for tests and `describe`
LOAD_LOG: list[tuple] = []  # (key, seconds) of every kernel this process loaded from the disk cache


def _freeze(cfg: dict) -> tuple:
    return tuple(sorted(cfg.items()))


def choose_cpu_config(kernel: str, causal: bool, order: int, dtype: str, H: int, D: int, T: int):
    """``(config, source)``: the nearest valid tuned record's knobs, else the default schedule."""
    cfg, source, _rec = choose_cpu_record(kernel, causal, order, dtype, H, D, T)
    return cfg, source


def choose_cpu_record(kernel: str, causal: bool, order: int, dtype: str, H: int, D: int, T: int):
    """``(config, source, record)``: ``source`` is "record" (this CPU's fingerprint), "transferred" (a record
    of another fingerprint of the same architecture and ISA, ``tuned.candidates``) or "default" (record None)."""
    from .schedule import ScheduleError, default_cpu_config, validate_cpu_config

    here = cpu_fingerprint()
    try:
        found = tuned.candidates(kernel, causal, order, dtype, H, D, T)
    except Exception as exc:  # a broken cache must never break a call, but it must not go unseen either
        warn_once(f"candidates:{type(exc).__name__}:{exc}",
                  f"ea-ops: TVM records not usable, running the default schedule ({type(exc).__name__}: {exc})")
        found = []
    for rec in found:
        try:
            cfg = validate_cpu_config(rec["config"], H, D)
        except ScheduleError as exc:
            warn_once(f"{rec['fingerprint']}:{rec['kernel']}:{rec['workload']}",
                      f"ea-ops: skipping a tuned TVM record for {rec['kernel']}: {exc}")
            continue
        return cfg, "record" if rec["fingerprint"] == here else "transferred", rec
    return default_cpu_config(kernel, H, D), "default", None


def build_cpu(kernel: str, causal: bool, order: int, dtype: str, H: int, D: int, cfg: dict):
    """The compiled runtime module of one kernel under one CPU config (no caching)."""
    import tvm

    from . import schedule
    from .target import cpu_target

    return tvm.compile(schedule.cpu_module(kernel, causal, order, dtype, H, D, cfg), target=cpu_target())


def kernel_for(kernel: str, causal: bool, order: int, dtype: str, H: int, D: int, T: int,
               config: dict | None = None, *, target: str = "cpu", channels: int | None = None) -> Compiled:
    """The compiled kernel for this call (loaded from disk or a pack, or built on first use, then kept in the
    process). ``target``: ``"cpu"`` or a CUDA arch such as ``"sm_90"`` (``cuda_device.target_of``)."""
    if kernel == "step":
        causal = True
    if target != "cpu":
        return _cuda_kernel_for(kernel, causal, order, dtype, H, D, target, channels, config)
    stamp = tuned.stamp() if config is None else None
    fast_key = (kernel, causal, order, dtype, H, D, t_bucket(T), stamp,
                None if config is None else _freeze(config), packs.generation())
    hit = _fast.get(fast_key)
    if hit is not None:
        return hit
    if config is None:  # a loaded kernel pack serves this call: never compile (packs.py)
        comp = packs.lookup(kernel, causal, order, dtype, H, D)
        if comp is not None:
            _fast[fast_key] = comp
            return comp
    if config is None:
        cfg, source = choose_cpu_config(kernel, causal, order, dtype, H, D, T)
    else:
        from .schedule import validate_cpu_config

        cfg, source = validate_cpu_config(config, H, D), "given"
    key = (kernel, causal, order, dtype, H, D, _freeze(cfg))
    with _lock:
        comp = _modules.get(key)
        if comp is None:
            comp = _load_or_build(key, cfg, source)
            _modules[key] = comp
        elif comp.source != source:  # the same code, reached through another schedule source: say this one
            comp = replace(comp, source=source)
        _fast[fast_key] = comp
    return comp


def _load_or_build(key: tuple, cfg: dict, source: str) -> Compiled:
    """The disk cache's entry for ``key`` (of config ``cfg``), else a fresh build, which is then stored there."""
    import time

    from . import disk_cache

    kernel, causal, order, dtype, H, D, _ = key
    t0 = time.perf_counter()
    lib = disk_cache.load(kernel, causal, order, dtype, H, D, cfg)
    if lib is not None:
        dt = time.perf_counter() - t0
        LOAD_LOG.append((key, dt))
        return Compiled(lib["main"], lib, kernel, cfg, source, 0.0, "disk", dt)
    t0 = time.perf_counter()
    lib = build_cpu(kernel, causal, order, dtype, H, D, cfg)
    dt = time.perf_counter() - t0
    BUILD_LOG.append((key, dt))
    disk_cache.save(lib, kernel, causal, order, dtype, H, D, cfg)
    return Compiled(lib["main"], lib, kernel, cfg, source, dt)


# ------------------------------------------------------------------------------------------------ CUDA
def _cuda_kernel_for(kernel: str, causal: bool, order: int, dtype: str, H: int, D: int, arch: str,
                     channels: int | None, config: dict | None) -> Compiled:
    """A CUDA pack's kernel for ``arch`` and the default schedule's variant, else one built here."""
    from .cuda_device import default_config

    cfg = dict(config) if config is not None else default_config(kernel, causal, channels)
    key = ("cuda", kernel, causal, order, dtype, H, D, arch, _freeze(cfg), packs.generation())
    hit = _fast.get(key)
    if hit is not None:
        return hit
    comp = packs.lookup(kernel, causal, order, dtype, H, D, target=arch, variant=cfg["variant"]) \
        if config is None else None
    if comp is None:
        with _lock:
            build_key = key[:-1]
            comp = _modules.get(build_key)
            if comp is None:
                import time

                t0 = time.perf_counter()
                lib = build_cuda(kernel, causal, order, dtype, H, D, cfg, arch)
                dt = time.perf_counter() - t0
                BUILD_LOG.append((build_key, dt))
                comp = Compiled(lib["main"], lib, kernel, cfg, "default" if config is None else "given", dt)
                _modules[build_key] = comp
    _fast[key] = comp
    return comp


def cuda_compiler(environ: dict | None = None, *, have_nvrtc: bool | None = None,
                  nvcc: str | None = None) -> str | None:
    """How TVM turns CUDA C into code here: ``TVM_CUDA_COMPILE_MODE`` if set, else ``"nvrtc"`` (TVM's default;
    needs the ``cuda-python`` bindings) when importable, else ``"nvcc"`` on the PATH, else None."""
    import importlib.util
    import os
    import shutil

    env = os.environ if environ is None else environ
    if env.get("TVM_CUDA_COMPILE_MODE"):
        return env["TVM_CUDA_COMPILE_MODE"].strip().lower()
    if have_nvrtc is None:
        try:
            have_nvrtc = importlib.util.find_spec("cuda.bindings") is not None
        except (ImportError, ValueError):
            have_nvrtc = False
    if have_nvrtc:
        return "nvrtc"
    return "nvcc" if (nvcc or shutil.which("nvcc")) else None


def build_cuda(kernel: str, causal: bool, order: int, dtype: str, H: int, D: int, cfg: dict, arch: str):
    """The runnable module of one CUDA kernel for ``arch`` (host code + its CUDA module), built in this process.
    BackendUnavailableError when this process cannot: no CUDA C compiler, or TVM's CUDA runtime not loaded (then
    TVM keeps the kernel as source only, ``cuda_runtime``)."""
    import os

    from ...errors import BackendUnavailableError

    mode = cuda_compiler()
    if mode is None:
        raise BackendUnavailableError(
            "building TVM CUDA kernels needs NVRTC (pip install cuda-python) or nvcc on the PATH; or load a "
            "kernel pack built for this GPU (ea-ops compile --backend tvm --target cuda:" + arch + ")")
    os.environ.setdefault("TVM_CUDA_COMPILE_MODE", mode)  # read by TVM's compile callback (tvm/support/nvcc.py)
    import tvm

    from . import cuda_kernels
    from .target import cuda_target

    mod = cuda_kernels.scheduled_module(kernel, causal, order, dtype, H, D, cfg)
    lib = tvm.compile(mod, target=tvm.target.Target(cuda_target(arch), host="llvm"))
    device_mod = next((m for m in lib.mod.imports if m.kind == "cuda"), None)
    if device_mod is None or not device_mod.is_runnable():
        raise BackendUnavailableError(
            "TVM built the CUDA kernel as source only: its CUDA runtime (libtvm_runtime_cuda.so, which needs the "
            "CUDA driver and runtime libraries) is not loaded in this process")
    return lib
