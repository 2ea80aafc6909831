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
# Where the arguments sit modulo 4 KiB moves the time of the CPU kernels by 20% or more, and not equally for
# every schedule: the d_t loops step through ten tensors at once with a stride of H*D elements, and how those
# streams collide in the cache depends on their addresses. A schedule picked under one placement lost to
# the default under another (README, "Speed"). ``select`` therefore measures every candidate under
# ``PLACEMENTS`` layouts: the first with every argument on a 4 KiB boundary, the others with each argument at a
# seeded random multiple of 64 bytes past one. Except where torch leaves no choice: glibc maps every allocation
# of 32 MiB or more anew (its largest dynamic mmap threshold), so torch's CPU tensors that large all start
# ``TORCH_OFFSET`` bytes past a page (measured 2026-12-01; smaller ones come from the heap once freed memory
# is there), and such arguments sit there in every placement. Averaging over random layouts there picked
# schedules that lost to the default on torch's tensors by 1.6x (a backward at 64k).
PLACEMENTS = 6
TORCH_PAGED = 32 << 20
TORCH_OFFSET = 64


def placement_offset(rep: int, j: int, nbytes: int = 0) -> int:
    """Bytes past a 4 KiB boundary at which argument ``j`` (of ``nbytes``) starts in placement ``rep``."""
    if nbytes >= TORCH_PAGED:
        return TORCH_OFFSET
    if rep % PLACEMENTS == 0:
        return 0
    return int(np.random.default_rng([rep % PLACEMENTS, j]).integers(0, 64)) * 64


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


def placed_tensor(data: np.ndarray, device, offset: int):
    """A TVM tensor holding ``data`` whose first byte sits ``offset`` bytes past a 4 KiB boundary (CPU)."""
    import tvm

    base = tvm.runtime.empty((data.nbytes + 8192,), "uint8", device)
    addr = np.from_dlpack(base).ctypes.data
    start = (offset - addr) % 4096
    view = base._create_view(data.shape, str(data.dtype), relative_byte_offset=start)  # holds base alive
    view.copyfrom(data)
    return view


def local_alloc(roles: list[str], device, args_info, alloc_repeat: int, placed: bool = False):
    """Arguments for the local runner; ``placed``: argument list ``rep`` laid out by ``placement_offset``."""
    import tvm

    def make(a, dev, rep, j):
        if not placed:
            return tvm.runtime.tensor(a, dev)
        return placed_tensor(a, dev, placement_offset(rep, j, a.nbytes))

    return _alloc(roles, device, args_info, alloc_repeat, make)


def rpc_alloc(roles: list[str], session, device, args_info, alloc_repeat: int):
    """Arguments for the RPC runner: as ``local_alloc``, on the remote device (never placed)."""
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
           min_repeat_ms: int = 40, placed: bool = False):
    """A LocalRunner, or an RPCRunner through ``(tracker_host, tracker_port, key)``.

    ``placed`` (local only): time every candidate under each of the ``PLACEMENTS``, ``repeat`` times each.
    """
    from tvm.s_tir import meta_schedule as ms

    from ea_ops.backends.tvm import args

    roles = args.roles(kernel, causal)
    evaluator = ms.runner.EvaluatorConfig(number=1, repeat=repeat, min_repeat_ms=min_repeat_ms,
                                          enable_cpu_cache_flush=False)
    if rpc is None:
        return ms.runner.LocalRunner(timeout_sec=RUN_TIMEOUT_S, evaluator_config=evaluator,
                                     alloc_repeat=PLACEMENTS if placed else 1,
                                     f_alloc_argument=functools.partial(local_alloc, roles, placed=placed))
    host, port, key = rpc
    config = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=key,
                                 session_timeout_sec=int(RUN_TIMEOUT_S))
    return ms.runner.RPCRunner(rpc_config=config, evaluator_config=evaluator, max_workers=1,
                               f_alloc_argument=functools.partial(rpc_alloc, roles))


@functools.lru_cache(maxsize=16)
def shared_runner(kernel: str, causal: bool, *, rpc: tuple[str, int, str] | None = None, repeat: int = 5,
                  placed: bool = False):
    """``runner(...)``, one per set of arguments in this process: its worker process stays up between tuning
    rounds, ``select`` passes and workloads (each new worker costs seconds: it imports TVM)."""
    return runner(kernel, causal, rpc=rpc, repeat=repeat, placed=placed)


def measure(mods: list, target, kernel: str, causal: bool, *, rpc=None, verbose: bool = True,
            placed: bool = False, repeat: int = 5) -> list[float | None]:
    """Median seconds of each scheduled IRModule (``None`` where the build or the run failed).

    ``placed`` (local runs): the mean over the ``PLACEMENTS`` of the median under each.
    """
    from tvm.s_tir import meta_schedule as ms

    placed = placed and rpc is None
    bld = builder()
    run = shared_runner(kernel, causal, rpc=rpc, repeat=repeat, placed=placed)
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
            secs = [float(x) for x in res.run_secs]
            groups = [secs[j:j + repeat] for j in range(0, len(secs), repeat)] if placed else [secs]
            out[i] = float(np.mean([np.median(grp) for grp in groups]))
        else:
            errors.append(f"run {i}: {res.error_msg}")
    if errors and verbose:
        print("\n".join(errors), file=sys.stderr)
    return out
