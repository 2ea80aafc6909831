"""Schedules the runtime applies: the default for every kernel, and a tuned record's knobs.

A CPU configuration (a record's ``config``) holds a few knobs, all applied to every time block of the
kernel (``kernels.SCAN_BLOCKS``), each of which loops over ``(b, h, t, d)``:

- ``loop``: ``"d_t"`` = ``parallel(b, h, d_o) > t > vector(d_i)`` (the state of one vector of channels
  stays in registers across time), ``"t_d"`` = ``parallel(b, h_o) > t > h_i > d_o > vector(d_i)``
  (contiguous rows of ``h_i * D`` channels per time step) or ``"blocked"`` =
  ``parallel(b, h_o) > t_o > h_i > d_o > t_i > vector(d_i)``: blocks of ``t_block`` steps, in each of which
  every vector of the task's ``h_i * D`` contiguous channels runs its steps with its state in registers.
  ``d_t`` walks each tensor at a stride of ``H * D`` elements for the whole sequence and falls off a cliff
  once the tensors leave the cache (B1 H8 D64 order 6, 2 threads, preallocated output: 0.22 us per token at
  T = 4096, 0.76 at 64k); ``blocked`` reads ``t_block`` rows of ``h_i * D`` contiguous channels per block and
  stays flat (0.22 and 0.28 us; 0.21 and 0.24 with the causal forward of ``cpu_blocked``; docs/measurements.md
  section 14);
- ``d_tile``: the vectorised inner channel count (divides ``D``); ``h_tile``: heads per step (``"t_d"``)
  or per task (``"blocked"``);
- ``t_block``: steps per block (``"blocked"`` only; the kernel's main time block is a multiple of it,
  ``time_align``);
- ``t_unroll``: the time loop split by this factor and its inner part unrolled (1 = not split);
- ``parallel``: whether the outer channel loop runs on the thread pool (tiny workloads, e.g. the
  recurrent step, lose more to the fork-join than they gain).

The tuner's design space (``schedules.tvm.spaces``) samples exactly these knobs with MetaSchedule and
calls ``apply_cpu`` with the sampled random variables; the runtime calls it with the record's ints. Either
way ``check_time_loops`` then verifies that no time loop was parallelised, vectorised or reordered.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import tvm
    from tvm import s_tir, tirx

# TVM is imported inside the functions that schedule: choosing and validating a config must not import it
# (about 1 s), so that a kernel loaded from the disk cache runs without the TVM compiler (docs/findings.md).

LOOPS = ("d_t", "t_d", "blocked")
T_UNROLLS = (1, 2, 4, 8)
T_BLOCKS = (16, 32, 64, 128, 256)  # every one a multiple of cpu_kernels.TIME_ALIGN and of every unroll
DEFAULT_T_BLOCK = 64
# The blocked default gives a task at most this many contiguous channels (2 KiB of float32 per row and
# tensor), so that a block's rows of q, k, v, o stay in the L2 cache.
BLOCKED_MAX_CHANNELS = 512


class ScheduleError(ValueError):
    """A configuration that does not fit the kernel, or a schedule that breaks the time order."""


def _divisors(n: int) -> list[int]:
    return [i for i in range(1, n + 1) if n % i == 0]


def default_cpu_config(kernel: str, H: int, D: int, threads: int | None = None) -> dict[str, Any]:
    """The untuned schedule: 16-lane vectors of channels, state in registers.

    16 float32 lanes fill one AVX-512 register (two AVX2 ones); no knowledge of the measured target. The
    forward and the backward run ``blocked`` (flat per token from 1k to 64k) with the most heads per task that
    still gives every one of ``threads`` (default: the thread pool's size) a task at B = 1, at most
    ``BLOCKED_MAX_CHANNELS`` channels; with fewer heads than threads, ``d_t`` (one vector per task). The step
    runs serially: one token is too little work for the thread pool's fork-join (B1 H8 D64 order 6, 2 threads,
    measured alternating: 1.3 us serial against 25.7 us parallel; at B = 64, 81 us against 93 us; a tuned
    step record may still choose the pool for larger batches).
    """
    d_tile = max(x for x in _divisors(D) if x <= 16)
    cfg = {"loop": "d_t", "d_tile": d_tile, "h_tile": 1, "t_unroll": 1, "parallel": kernel != "step"}
    if kernel == "step":
        return cfg
    threads = pool_threads() if threads is None else threads
    fits = [h for h in _divisors(H) if H // h >= threads and (h == 1 or h * D <= BLOCKED_MAX_CHANNELS)]
    if fits:  # unrolled by 4 the backward's reverse scan spills (B1 H8 D64 at 4k: 1.60 us per token, 0.98 by 1)
        cfg.update(loop="blocked", h_tile=max(fits), t_block=DEFAULT_T_BLOCK, t_unroll=4 if kernel == "forward" else 1)
    return cfg


def pool_threads() -> int:
    """The TVM thread pool's size: ``TVM_NUM_THREADS`` (``ops.set_threads_once`` sets it from torch)."""
    import os

    try:
        return max(1, int(os.environ.get("TVM_NUM_THREADS", "")))
    except ValueError:
        import torch

        return max(1, torch.get_num_threads())


def time_align(cfg: dict[str, Any]) -> int:
    """What the kernel's main time block must be a multiple of under ``cfg`` (``cpu_kernels.build_func``)."""
    from .cpu_kernels import TIME_ALIGN

    return cfg["t_block"] if cfg["loop"] == "blocked" else TIME_ALIGN


def validate_cpu_config(cfg: object, H: int, D: int) -> dict[str, Any]:
    """A CPU config read from a record, checked knob by knob (records are data from elsewhere)."""
    if not isinstance(cfg, dict):
        raise ScheduleError(f"config must be an object, got {type(cfg).__name__}")
    out = {}
    loop = cfg.get("loop")
    if loop not in LOOPS:
        raise ScheduleError(f"config.loop must be one of {LOOPS}, got {loop!r}")
    out["loop"] = loop
    for key, n in (("d_tile", D), ("h_tile", H)):
        val = cfg.get(key, 1)
        if isinstance(val, bool) or not isinstance(val, int) or val < 1 or n % val:
            raise ScheduleError(f"config.{key} must be a positive divisor of {n}, got {val!r}")
        out[key] = val
    unroll = cfg.get("t_unroll", 1)
    if unroll not in T_UNROLLS or isinstance(unroll, bool):
        raise ScheduleError(f"config.t_unroll must be one of {T_UNROLLS}, got {unroll!r}")
    out["t_unroll"] = unroll
    par = cfg.get("parallel", True)
    if not isinstance(par, bool):
        raise ScheduleError(f"config.parallel must be a bool, got {par!r}")
    out["parallel"] = par
    if loop == "blocked":  # only here: the other loops' configs (and their cache keys) stay as they were
        block = cfg.get("t_block", DEFAULT_T_BLOCK)
        if block not in T_BLOCKS or isinstance(block, bool):
            raise ScheduleError(f"config.t_block must be one of {T_BLOCKS}, got {block!r}")
        out["t_block"] = block
    return out


def apply_cpu(sch: s_tir.Schedule, kernel: str, causal: bool, *, loop: str, d_factors, h_factors,
              t_unroll, parallel: bool = True, t_block=DEFAULT_T_BLOCK) -> None:
    """Schedule every time block of ``sch`` in place.

    ``d_factors``/``h_factors``: ``[outer, inner]`` split factors (ints, ``None`` or MetaSchedule
    ``ExprRV``s); ``t_unroll`` and ``t_block`` (``"blocked"`` only): ints or ``ExprRV``s. Raises ScheduleError
    for an unknown loop order.
    """
    if loop not in LOOPS:
        raise ScheduleError(f"loop must be one of {LOOPS}, got {loop!r}")
    from .cpu_kernels import SCAN_BLOCKS

    blocks = SCAN_BLOCKS[("forward", True) if kernel == "step" else (kernel, causal)]
    for name in blocks:
        block = sch.get_sblock(name)
        tail = _tail_block(sch, name)
        if tail is not None:  # the last T % time_align steps: one vector per task (d_t), not unrolled
            _apply_block(sch, tail, "d_t" if loop == "blocked" else loop, d_factors, h_factors, 1, parallel)
        _apply_block(sch, block, loop, d_factors, h_factors, t_unroll, parallel, t_block)
        # Structural knobs, readable from a tuning trace (schedules.tvm.spaces.knobs_from_trace).
        sch.annotate(block, "ea_ops.loop", loop)
        sch.annotate(block, "ea_ops.parallel", int(parallel))


def _tail_block(sch: s_tir.Schedule, name: str):
    from tvm import s_tir

    from .cpu_kernels import TAIL

    try:
        return sch.get_sblock(name + TAIL)
    except s_tir.schedule.ScheduleError:  # a static T divisible by TIME_ALIGN has none (tuning workloads)
        return None


def _apply_block(sch: s_tir.Schedule, block, loop: str, d_factors, h_factors, t_unroll, parallel: bool,
                 t_block=DEFAULT_T_BLOCK) -> None:
    b, h, t, d = sch.get_loops(block)
    d_o, d_i = sch.split(d, factors=list(d_factors))
    if loop == "d_t":
        sch.reorder(b, h, d_o, t, d_i)
        par = sch.fuse(b, h, d_o)
    elif loop == "blocked":
        h_o, h_i = sch.split(h, factors=list(h_factors))
        t, t_in = sch.split(t, factors=[None, t_block])
        sch.reorder(b, h_o, t, h_i, d_o, t_in, d_i)
        par = sch.fuse(b, h_o)
        t = t_in  # the unroll below splits the steps within a block
    else:
        h_o, h_i = sch.split(h, factors=list(h_factors))
        sch.reorder(b, h_o, t, h_i, d_o, d_i)
        par = sch.fuse(b, h_o)
    if parallel:
        sch.parallel(par)
    sch.vectorize(d_i)
    # Always split (by 1 too): the same steps whether t_unroll is sampled or read from a record.
    _, t_i = sch.split(t, factors=[None, t_unroll])
    sch.unroll(t_i)


def cpu_module(kernel: str, causal: bool, order: int, dtype: str, H: int, D: int, cfg: dict[str, Any],
               static: dict | None = None) -> tvm.IRModule:
    """The module the runtime compiles for one kernel under the validated ``cfg``: the causal forward and
    backward under ``blocked`` are written as loops (``cpu_blocked``: stabilised per block of steps), every
    other kernel is ``cpu_kernels``' PrimFunc scheduled by ``schedule_cpu``."""
    import tvm

    from . import cpu_blocked, cpu_kernels

    if kernel in ("forward", "backward") and causal and cfg["loop"] == "blocked":
        blocked = cpu_blocked.forward if kernel == "forward" else cpu_blocked.backward
        return tvm.IRModule({"main": blocked(order, dtype, H, D, cfg, static)})
    func = cpu_kernels.build_func(kernel, order, dtype, causal, H, D, static=static, align=time_align(cfg))
    return schedule_cpu(func, kernel, causal, cfg)


def schedule_cpu(func: tirx.PrimFunc, kernel: str, causal: bool, cfg: dict[str, Any]) -> tvm.IRModule:
    """``func`` scheduled with the (validated) CPU config ``cfg``; the time loops are checked."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    apply_cpu(sch, kernel, causal, loop=cfg["loop"], d_factors=[None, cfg["d_tile"]],
              h_factors=[None, cfg["h_tile"]], t_unroll=cfg["t_unroll"], parallel=cfg["parallel"],
              t_block=cfg.get("t_block", DEFAULT_T_BLOCK))
    check_time_loops(sch.mod)
    return sch.mod


# ----------------------------------------------------------------------------------- the time order
def _vars_in(expr) -> set:
    from tvm.tirx.analysis import undefined_vars

    return set(undefined_vars(expr))


def check_time_loops(mod: tvm.IRModule | tirx.PrimFunc, blocks: tuple[str, ...] | None = None) -> int:
    """Raise ScheduleError unless every time axis is covered by serial loops fused in nesting order.

    The scan dependence is hidden from TVM (module docstring of ``kernels``), so nothing else stops a
    schedule from running time steps in parallel, in vector lanes, or out of order. For each block with a
    time axis (the third block axis; all blocks of these kernels when ``blocks`` is None), the loops its
    binding uses must be serial or unrolled and the binding must equal those loops fused outer to inner
    (``t_o * extent(t_i) + t_i``). Returns the number of blocks checked.
    """
    import tvm
    from tvm import tirx
    from tvm.s_tir.stmt import SBlockRealize

    func = mod["main"] if isinstance(mod, tvm.IRModule) else mod
    from tvm.sym.analyzer import Analyzer

    analyzer = Analyzer()
    checked = 0
    stack: list[tirx.For] = []
    allowed = {int(tirx.ForKind.SERIAL), int(tirx.ForKind.UNROLLED)}

    def walk(stmt):
        nonlocal checked
        if isinstance(stmt, tirx.For):
            stack.append(stmt)
            walk(stmt.body)
            stack.pop()
        elif isinstance(stmt, SBlockRealize):
            blk = stmt.block
            if blk.name_hint != "root" and (blocks is None or blk.name_hint in blocks) \
                    and len(blk.iter_vars) == 4:
                _check_block(blk.name_hint, stmt.iter_values[2], list(stack), analyzer, allowed)
                checked += 1
            walk(blk.body)
        elif isinstance(stmt, tirx.SeqStmt):
            for s in stmt:
                walk(s)
        elif hasattr(stmt, "body") and isinstance(stmt.body, tirx.Stmt):
            walk(stmt.body)

    walk(func.body)
    if blocks is not None and checked < len(blocks):
        raise ScheduleError(f"time blocks {blocks} not all found (checked {checked})")
    return checked


def _check_block(name, binding, loops, analyzer, allowed) -> None:
    from tvm import tirx

    used = _vars_in(binding)
    feeding = [lp for lp in loops if lp.loop_var in used]
    for lp in feeding:
        if int(lp.kind) not in allowed:
            raise ScheduleError(f"block {name!r}: time loop {lp.loop_var.name} is "
                                f"{tirx.ForKind(int(lp.kind)).name.lower()}, "
                                f"it must stay serial (the scan runs in time order)")
        if lp.thread_binding is not None:
            raise ScheduleError(f"block {name!r}: time loop {lp.loop_var.name} is bound to a thread")
    expected = tirx.const(0, "int32")
    for lp in feeding:
        expected = expected * lp.extent + lp.loop_var
    # The reverse scan binds its axis to t as well (it reads position T - 1 - t inside the block).
    if not analyzer.can_prove_equal(binding, expected):
        raise ScheduleError(f"block {name!r}: time binding {binding} is not its loops "
                            f"{[lp.loop_var.name for lp in feeding]} fused in nesting order")
