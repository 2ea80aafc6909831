"""MetaSchedule builders and runners for the EA kernels (local or through a TVM RPC tracker).

- Build: MetaSchedule's default build function imports ``tvm.s_tir.tensor_intrin`` (about 40 s here) in
  every fresh builder worker, and LocalBuilder starts fresh workers for every batch: builds time out.
  ``build_kernel`` compiles with ``tvm.compile`` only; the timeout is generous for 2-core machines.
- Inputs: MetaSchedule fills every argument with random bits; these kernels then time garbage (inf,
  NaN, a random "running minimum"). ``alloc_arguments`` fills them as a real call would: q, k, v, g
  ~ N(0, 0.5^2), zero sums, ``m = +inf`` (``MN = -inf`` for the reverse scan), in the kernel's argument
  order (``ea_ops.backends.tvm.args.roles``).
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import numpy as np

# No ea_ops import at module level: MetaSchedule's worker processes import this module to run build_kernel
# and local_alloc, and ea_ops would bring torch in (a second or more per worker on 2 cores).

BUILD_TIMEOUT_S = 120.0
def skip_tensor_intrinsics() -> None:
    """Make ``import tvm.s_tir.tensor_intrin`` a no-op in this process.

    MetaSchedule's ``TuneContext`` imports it unconditionally; it parses ~250 TVMScript intrinsics, each
    calling ``inspect.stack()``, which crawls every loaded module: 40 s alone, minutes with torch
    loaded. The EA design spaces use no tensor intrinsics, so the tuner registers an empty module in
    its place (only in the tuning process; nothing else here needs them).
    """
    import types

    name = "tvm.s_tir.tensor_intrin"
    if name not in sys.modules:
        stub = types.ModuleType(name)
        stub.__doc__ = "empty stand-in installed by schedules.tvm.measure.skip_tensor_intrinsics"
        sys.modules[name] = stub
RUN_TIMEOUT_S = 60.0


def build_kernel(mod, target, _params):
    """MetaSchedule ``f_build``: its default build without the tensor-intrinsic import."""
    from tvm.driver import build

    return build(mod, target=target)


def _values(role: str, dtype: str, shape, rng) -> np.ndarray:
    shape = tuple(int(s) for s in shape)
    if role == "x":
        data = (rng.standard_normal(shape) * 0.5).astype(np.float32)
    elif role == "+inf":
        data = np.full(shape, np.inf, np.float32)
    elif role == "-inf":
        data = np.full(shape, -np.inf, np.float32)
    else:
        data = np.zeros(shape, np.float32)
    if dtype == "int16":  # bfloat16 bits (ea_ops.backends.tvm.tir_math.storage_dtype)
        return (data.view(np.uint32) >> 16).astype(np.uint16).view(np.int16)
    return data.astype(dtype)


def _alloc(roles: list[str], device, args_info, alloc_repeat: int, make) -> list[list[Any]]:
    """``alloc_repeat`` argument lists; ``make(data, device, rep, j)`` places argument ``j`` of list ``rep``."""
    rng = np.random.default_rng(0)
    out = []
    for rep in range(alloc_repeat):
        args = []
        for j, (role, info) in enumerate(zip(roles, args_info)):
            _kind, dtype, shape = info
            args.append(make(_values(role, str(dtype), shape, rng), device, rep, j))
        out.append(args)
    return out


def local_alloc(roles: list[str], device, args_info, alloc_repeat: int):
    """Arguments for the local runner (MetaSchedule's search)."""
    import tvm

    return _alloc(roles, device, args_info, alloc_repeat, lambda a, dev, rep, j: tvm.runtime.tensor(a, dev))


def rpc_alloc(roles: list[str], session, device, args_info, alloc_repeat: int):
    """Arguments for the RPC runner: as ``local_alloc``, on the remote device."""
    return local_alloc(roles, device, args_info, alloc_repeat)


@functools.cache
def _builder_class():
    """LocalBuilder without its start-up check.

    The check starts a worker process only to look ``f_build`` up in it (seconds: the worker imports TVM,
    then this module), and ``build`` starts a fresh worker anyway, where a missing ``f_build`` fails the
    build with its error. Without the check each tuning round and each ``select`` pass starts one worker
    fewer.
    """
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms

    @derived_object
    class Builder(ms.builder.LocalBuilder._cls):
        def _sanity_check(self) -> None:
            pass

    return Builder


def builder(workers: int = 1):
    return _builder_class()(max_workers=workers, timeout_sec=BUILD_TIMEOUT_S, f_build=build_kernel)


def runner(kernel: str, causal: bool, *, rpc: tuple[str, int, str] | None = None, repeat: int = 5,
           min_repeat_ms: int = 40):
    """A LocalRunner, or an RPCRunner through ``(tracker_host, tracker_port, key)``."""
    from tvm.s_tir import meta_schedule as ms

    from ea_ops.backends.tvm import args

    roles = args.roles(kernel, causal)
    evaluator = ms.runner.EvaluatorConfig(number=1, repeat=repeat, min_repeat_ms=min_repeat_ms,
                                          enable_cpu_cache_flush=False)
    if rpc is None:
        return ms.runner.LocalRunner(timeout_sec=RUN_TIMEOUT_S, evaluator_config=evaluator,
                                     f_alloc_argument=functools.partial(local_alloc, roles))
    host, port, key = rpc
    config = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=key,
                                 session_timeout_sec=int(RUN_TIMEOUT_S))
    return ms.runner.RPCRunner(rpc_config=config, evaluator_config=evaluator, max_workers=1,
                               f_alloc_argument=functools.partial(rpc_alloc, roles))


@functools.lru_cache(maxsize=16)
def shared_runner(kernel: str, causal: bool, *, rpc: tuple[str, int, str] | None = None, repeat: int = 5):
    """``runner(...)``, one per set of arguments in this process: its worker process stays up between tuning
    rounds, ``select`` passes and workloads (each new worker costs seconds: it imports TVM)."""
    return runner(kernel, causal, rpc=rpc, repeat=repeat)


def measure(mods: list, target, kernel: str, causal: bool, *, rpc=None, verbose: bool = True,
            repeat: int = 5) -> list[float | None]:
    """Median seconds of each scheduled IRModule (``None`` where the build or the run failed): MetaSchedule's
    builds, for selections through RPC (on this machine's CPU ``runtime_times`` times the runtime's kernels)."""
    from tvm.s_tir import meta_schedule as ms

    bld = builder()
    run = shared_runner(kernel, causal, rpc=rpc, repeat=repeat)
    built = bld.build([ms.builder.BuilderInput(m, target) for m in mods])
    inputs, slots, errors = [], [], []
    for i, (m, b) in enumerate(zip(mods, built)):
        if b.error_msg is None:
            device = "cpu" if target.kind.name == "llvm" else target.kind.name
            inputs.append(ms.runner.RunnerInput(b.artifact_path, device,
                                                ms.arg_info.ArgInfo.from_prim_func(m["main"])))
            slots.append(i)
        else:
            errors.append(f"build {i}: {b.error_msg}")
    out: list[float | None] = [None] * len(mods)
    for i, fut in zip(slots, run.run(inputs)):
        res = fut.result()
        if res.error_msg is None and res.run_secs:
            out[i] = float(np.median([float(x) for x in res.run_secs]))
        else:
            errors.append(f"run {i}: {res.error_msg}")
    if errors and verbose:
        print("\n".join(errors), file=sys.stderr)
    return out


# ------------------------------------------------------------------------- the runtime's own kernels
RUNTIME_SAMPLE_S = 0.02  # seconds of calls per timed sample (at least one call)


def runtime_arguments(w, seed: int = 0) -> list:
    """The arguments of a runtime kernel call for workload ``w``: torch tensors (torch's allocator puts them where
    a call's would sit) filled by role as ``_values`` fills the search's, bfloat16 as its int16 bits; ``r = 1``."""
    import torch

    from ea_ops.backends.tvm import args as kernel_args
    from ea_ops.backends.tvm.tir_math import storage_dtype

    rng = np.random.default_rng(seed)
    seq = (w.B, w.H, w.D) if w.kernel == "step" else (w.B, w.T, w.H, w.D)
    shapes = {"seq": seq, "state": (w.B, w.H, w.order + 1, w.D), "m": (w.B, w.H, w.D)}
    out: list = []
    for name, kind, role in kernel_args.table(w.kernel, w.causal):
        if kind == "scalar":
            out.append(1.0)
            continue
        storage = storage_dtype(w.dtype) if name in kernel_args.DATA else "float32"
        out.append(torch.from_numpy(_values(role, storage, shapes[kind], rng)).clone())
    return out


def runtime_times(w, cfgs: list[dict], *, repeat: int = 5) -> list[float | None]:
    """Median seconds per call of each CPU config as the runtime builds it (``build.build_cpu``: symbolic B and
    T, the block-stabilised forward where it applies) on torch tensors, the configs interleaved sample by
    sample; ``None`` for a config that does not build or run.

    MetaSchedule's runners take static shapes and tensor-only arguments, and a static-shape build is not the
    runtime's kernel: two vectors a step (``d_tile`` 32) won a backward at 4k there and lost 1.9x through the
    API (docs/measurements.md section 14). Local CPU selections time the runtime's kernels instead.
    """
    import time

    from ea_ops.backends.tvm import build as runtime_build
    from ea_ops.backends.tvm import ops, schedule

    ops.set_threads_once()
    fns: list = []
    for cfg in cfgs:
        try:
            cfg = schedule.validate_cpu_config(cfg, w.H, w.D)
            fns.append(runtime_build.build_cpu(w.kernel, w.causal, w.order, w.dtype, w.H, w.D, cfg)["main"])
        except Exception as exc:  # a config that does not build loses; say why
            print(f"runtime build of {cfg}: {exc}", file=sys.stderr)
            fns.append(None)
    args = runtime_arguments(w)  # one set for every config: the same placement for all
    calls, samples = [], [[] for _ in cfgs]
    for fn in fns:
        if fn is None:
            calls.append(0)
            continue
        t0 = time.perf_counter()
        fn(*args)  # warm-up, and the size of a sample
        calls.append(max(1, int(RUNTIME_SAMPLE_S / max(time.perf_counter() - t0, 1e-7))))
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            if fn is None:
                continue
            t0 = time.perf_counter()
            for _ in range(calls[i]):
                fn(*args)  # the state arguments drift over calls; their values do not change the time
            samples[i].append((time.perf_counter() - t0) / calls[i])
    return [float(np.median(s)) if s else None for s in samples]
