"""MetaSchedule design spaces of the TVM kernels, and reading a tuned trace back as knobs.

CPU (LLVM): ``cpu_space`` is a ``ScheduleFn`` with one design space per structural choice (loop order
``d_t``/``t_d``/``blocked`` x parallel or not); within a space MetaSchedule samples the vector width (a
divisor of ``D``), the heads per time step or task (a divisor of ``H``, ``t_d`` and ``blocked``), the steps
per block (``blocked``: a ``T_BLOCKS`` length dividing the workload's main time block) and the unroll factor
of the time loop. Every space calls ``ea_ops.backends.tvm.schedule.apply_cpu``, the function the runtime applies a
record's knobs with, so a record means exactly what was measured. ``knobs_from_trace`` turns the best
trace into those knobs (the ``config`` of a record).
"""

from __future__ import annotations

from typing import Any

from ea_ops.backends.tvm import schedule as rt_schedule
from ea_ops.backends.tvm.cpu_kernels import SCAN_BLOCKS

T_UNROLL_PROBS = (0.4, 0.2, 0.2, 0.2)
SPACES = tuple((loop, par) for loop in rt_schedule.LOOPS for par in (True, False))
PARALLEL_ONLY = tuple(sp for sp in SPACES if sp[1])
# Running single-threaded only pays when the fork-join of the thread pool costs more than the work.
SERIAL_WORTH_TRYING = 1 << 18  # elements of [B, T, H, D]


def spaces_for(elements: int) -> tuple:
    """The structural branches worth measuring for a workload of ``B*T*H*D`` elements."""
    return SPACES if elements <= SERIAL_WORTH_TRYING else PARALLEL_ONLY


def d_tiles(D: int) -> list[int]:
    """Vector widths worth trying: divisors of D from 4 to 64 lanes (all divisors if none)."""
    good = [x for x in range(4, 65) if D % x == 0]
    return good or [x for x in range(1, D + 1) if D % x == 0]


def h_tiles(H: int) -> list[int]:
    return [x for x in range(1, min(H, 8) + 1) if H % x == 0]


def _uniform(cands: list) -> list[float]:
    return [1.0 / len(cands)] * len(cands)


def _first_block(kernel: str, causal: bool) -> str:
    return SCAN_BLOCKS[("forward", True) if kernel == "step" else (kernel, causal)][0]


def t_blocks(steps: int | None) -> list[int]:
    """Block lengths for a main time block of ``steps`` (static in a tuning workload): those dividing it; all
    of them for a symbolic length (the runtime builds each kernel aligned to its block, ``time_align``)."""
    return [b for b in rt_schedule.T_BLOCKS if steps is None or steps % b == 0]


def cpu_space(kernel: str, causal: bool, spaces=SPACES):
    """The ``ScheduleFn`` body for one CPU kernel: ``sch -> [one schedule per (loop, parallel)]``."""

    def fn(sch):
        import tvm

        out = []
        for loop, par in spaces:
            s = sch.copy()
            _, h, t, d = s.get_loops(s.get_sblock(_first_block(kernel, causal)))
            D, H, steps = int(s.get(d).extent), int(s.get(h).extent), s.get(t).extent
            blocks = t_blocks(int(steps) if isinstance(steps, tvm.tirx.IntImm) else None)
            if loop == "blocked" and not blocks:
                continue  # a workload shorter than the shortest block (or of an odd length): nothing to block
            d_tile = s.sample_categorical(candidates=d_tiles(D), probs=_uniform(d_tiles(D)))
            d_factors = [None, d_tile]
            h_factors, t_block = [None, 1], rt_schedule.DEFAULT_T_BLOCK
            if loop in ("t_d", "blocked"):
                h_tile = s.sample_categorical(candidates=h_tiles(H), probs=_uniform(h_tiles(H)))
                h_factors = [None, h_tile]
            if loop == "blocked":
                t_block = s.sample_categorical(candidates=blocks, probs=_uniform(blocks))
            t_unroll = s.sample_categorical(candidates=list(rt_schedule.T_UNROLLS),
                                            probs=list(T_UNROLL_PROBS))
            rt_schedule.apply_cpu(s, kernel, causal, loop=loop, d_factors=d_factors, h_factors=h_factors,
                                  t_unroll=t_unroll, parallel=par, t_block=t_block)
            rt_schedule.check_time_loops(s.mod)
            out.append(s)
        return out

    return fn


def space_generator(kernel: str, causal: bool, spaces=SPACES):
    """A MetaSchedule ``ScheduleFn`` space generator (no schedule rules or postprocessors: the space
    applies parallel, vectorize and unroll itself)."""
    from tvm.s_tir import meta_schedule as ms

    return ms.space_generator.ScheduleFn(cpu_space(kernel, causal, spaces), sch_rules=[], postprocs=[],
                                         mutator_probs={})


def knobs_from_trace(trace) -> dict[str, Any]:
    """A CPU config from a tuned trace: sampled decisions plus the structural annotations.

    ``SampleCategorical`` decisions come in the order the space samples them: ``d_tile``, then
    ``h_tile`` (``t_d`` and ``blocked``), then ``t_block`` (``blocked``), then ``t_unroll``.
    """
    insts, decisions = trace.as_json()[0], dict(trace.as_json()[1])
    cats, ann = [], {}
    for idx, inst in enumerate(insts):
        kind, attrs = inst[0], inst[2]
        if kind == "SampleCategorical":
            candidates = [int(c) for c in attrs[0]]
            cats.append(candidates[int(decisions[idx])])
        elif kind == "Annotate" and attrs and str(attrs[0]).startswith("ea_ops."):
            ann[str(attrs[0])] = str(inst[1][1]).strip('"')
    loop = ann.get("ea_ops.loop", "")
    samples = {"d_t": 2, "t_d": 3, "blocked": 4}
    if loop not in rt_schedule.LOOPS or len(cats) != samples[loop]:
        raise ValueError(f"not a trace of schedules.tvm.spaces (loop {loop!r}, {len(cats)} samples)")
    out = {
        "loop": loop,
        "d_tile": cats[0],
        "h_tile": cats[1] if loop != "d_t" else 1,
        "t_unroll": cats[-1],
        "parallel": ann.get("ea_ops.parallel", "1") != "0",
    }
    if loop == "blocked":
        out["t_block"] = cats[2]
    return out


# ----------------------------------------------------------------------------------------------- CUDA
CUDA_THREADS = (32, 64, 128, 256, 512)


def cuda_space(sch):
    """CUDA: threads per block of the fused channel (and chunk) loops, one sample for every block."""
    from ea_ops.backends.tvm import cuda_kernels

    threads = sch.sample_categorical(candidates=list(CUDA_THREADS), probs=_uniform(list(CUDA_THREADS)))
    cuda_kernels.apply(sch, threads)
    return [sch]


def cuda_space_generator(w):
    """A ``ScheduleFn`` over the CUDA form of workload ``w`` (its variant is fixed by the module tuned)."""
    from tvm.s_tir import meta_schedule as ms

    return ms.space_generator.ScheduleFn(cuda_space, sch_rules=[], postprocs=[], mutator_probs={})


def cuda_knobs_from_trace(trace, variant: str, chunk: int) -> dict[str, Any]:
    insts, decisions = trace.as_json()[0], dict(trace.as_json()[1])
    for idx, inst in enumerate(insts):
        if inst[0] == "SampleCategorical":
            return {"variant": variant, "threads": [int(c) for c in inst[2][0]][int(decisions[idx])],
                    "chunk": chunk}
    raise ValueError("not a trace of schedules.tvm.spaces.cuda_space")
