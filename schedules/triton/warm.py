"""Triton's JIT builds made before the launches that need them, in parallel processes.

Each build goes through the JIT's own path (``JITFunction.warmup``: its binder, its specialization, its
cache key), so it lands in Triton's on-disk cache (``TRITON_CACHE_DIR``, else ``~/.triton/cache``) exactly
where a later launch of the same kernel, in any process, looks for it. The GPU check runs this before its
tests: the JIT compiles one build per configuration, one after another, 0.3 to 9 s each on this project's
2-core CI machine, and the tests cover about 150 of them. A build made ahead of time (``aot.compile_build``)
has another cache key (its source lists no empty attributes), so those are made too where a test compiles
them (``AOT_PRESETS``).

Without a GPU, ``arch`` names the target through a stand-in driver (no device is touched): the builds
are the ones a GPU of that arch would make, and tests/schedules/test_triton_warm.py checks that their
cubins equal the builds made ahead of time.

    python -m schedules.triton.warm [--preset gpu-tests] [--jobs N] [--arch 90] [--json PATH] [--dry-run]
"""

from __future__ import annotations

import dataclasses
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

from .aot import Build, builds_for, canonical

# What the GPU tests launch (tests/ea_ops/test_triton_gpu.py): order 6 in bfloat16 at every shipped width,
# float32 at 2 and 4 warps (the large-key tests at H*D = 64 take the default's 2), float16 at 4; order 4 (the
# varlen and tail tests) at 1 and 4 warps. A build missed here is only compiled by the test that needs it.
PRESETS: dict[str, list[tuple[list[int], list[str], list[int]]]] = {
    "gpu-tests": [([6], ["bfloat16"], [1, 2, 4]), ([6], ["float32"], [2, 4]), ([6], ["float16"], [4]),
                  ([4], ["bfloat16", "float32"], [1, 4])],
    "goal": [([6], ["bfloat16"], [1, 2, 4])],
}
# ... and the ahead-of-time builds a test compiles (test_the_kernels_the_jit_built_are_the_ahead_of_time_builds)
AOT_PRESETS: dict[str, list[tuple[list[int], list[str], list[int]]]] = {
    "gpu-tests": [([6], ["bfloat16"], [4])],
    "goal": [],
}


@dataclasses.dataclass(frozen=True)
class Task:
    """One build to make: through the JIT (``"jit"``) or ahead of time (``"aot"``)."""

    how: str
    build: Build

    @property
    def name(self) -> str:
        return f"{self.how}:{self.build.name}"


def _cost(task: Task) -> int:
    # the forward scans with outputs took 4-9 s here (2 processes, 2 cores), the rest 0.3-2.6 s: the longest
    # first keeps the pool full
    b = task.build
    return (b.kernel == "fwd_scan" and dict(b.flags).get("WRITE_O", False)) * 4 + b.order // 4


def tasks_for(preset: str, arch: int) -> list[Task]:
    """The builds of ``preset`` for ``arch``, each once, the slowest first."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    out: dict[str, Task] = {}
    for how, table in (("jit", PRESETS), ("aot", AOT_PRESETS)):
        for orders, dtypes, warps in table[preset]:
            for b in builds_for(orders, dtypes, warps, [arch]):
                t = Task(how, canonical(b))
                out.setdefault(t.name, t)
    return sorted(out.values(), key=_cost, reverse=True)


class TargetDriver:
    """A stand-in for Triton's active driver without a GPU: device 0, stream 0, a CUDA target of ``arch``.
    Enough for ``warmup`` (which compiles and launches nothing); never for a launch."""

    def __init__(self, arch: int) -> None:
        self.arch = arch

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget

        return GPUTarget("cuda", self.arch, 32)


def use_target(arch: int | None) -> None:
    """Make the builds for ``arch`` through a stand-in driver (None: the real one, a GPU's)."""
    if arch is not None:
        from triton.runtime import driver

        driver.set_active(TargetDriver(arch))


def make(task: Task):
    """Build ``task``; returns the ``CompiledKernel``."""
    from ea_ops.backends.triton import cuda_kernels

    from .aot import compile_build, launch_args

    if task.how == "aot":
        return compile_build(task.build)
    fn = cuda_kernels.KERNELS[task.build.kernel]
    args, kwargs = launch_args(fn, task.build)
    return fn.warmup(*args, grid=(1,), **kwargs)


def _make_timed(task: Task) -> dict:
    t0 = time.monotonic()
    make(task)
    return {"name": task.name, "seconds": round(time.monotonic() - t0, 3)}


def warm(tasks: list[Task], *, jobs: int, arch: int | None = None, progress: bool = True) -> list[dict]:
    """Make every task in ``jobs`` processes (spawned: no CUDA state is forked); one entry per task with its
    seconds, or its error. The processes import the kernels with ``TRITON_INTERPRET`` unset."""
    import multiprocessing

    from ea_ops.progress import Bar

    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    os.environ.pop("TRITON_INTERPRET", None)
    out = []
    bar = Bar(len(tasks), desc="triton builds", disable=not progress)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=use_target, initargs=(arch,)) as pool:
        futures = {pool.submit(_make_timed, t): t for t in tasks}
        for fut in as_completed(futures):
            task = futures[fut]
            try:
                out.append(fut.result())
            except Exception as exc:  # one build's failure is reported, the others still made
                out.append({"name": task.name, "error": f"{type(exc).__name__}: {exc}"[:2000]})
            bar.note(task.name)
            bar.update()
    bar.close()
    return out


def main(argv: list[str] | None = None) -> int:
    """Fill Triton's cache with the builds of a preset; exit status 1 when a build failed."""
    import argparse
    import sys

    from .aot import ARCHS

    ap = argparse.ArgumentParser(prog="python -m schedules.triton.warm", description=main.__doc__)
    ap.add_argument("--preset", default="gpu-tests", help=f"which builds: one of {sorted(PRESETS)}")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes (default: every core)")
    ap.add_argument("--arch", type=int, default=None,
                    help="build for this sm arch through a stand-in driver (default: the GPU's, via its driver)")
    ap.add_argument("--json", default=None, help="also write the entries here as JSON")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument("--dry-run", action="store_true", help="list the builds (and write the JSON) without making them")
    args = ap.parse_args(argv)
    if args.preset not in PRESETS:
        ap.error(f"--preset must be one of {sorted(PRESETS)}, got {args.preset!r}")
    if args.jobs < 1:
        ap.error(f"--jobs must be at least 1, got {args.jobs}")
    if args.arch is not None and args.arch not in ARCHS.values():
        ap.error(f"--arch must be one of {sorted(ARCHS.values())}, got {args.arch}")
    arch = args.arch
    if arch is None and args.dry_run:
        arch = 90
    if arch is None:
        import torch

        if not torch.cuda.is_available():
            ap.error("no CUDA device: name the target with --arch")
        major, minor = torch.cuda.get_device_capability()
        arch = 10 * major + minor
    tasks = tasks_for(args.preset, arch)
    t0 = time.monotonic()
    if args.dry_run:
        entries = [{"name": t.name, "seconds": None} for t in tasks]
    else:
        entries = warm(tasks, jobs=args.jobs, arch=args.arch, progress=not args.no_progress)
    failed = [e for e in entries if "error" in e]
    doc = {"preset": args.preset, "arch": arch, "jobs": args.jobs, "dry_run": args.dry_run, "builds": len(entries),
           "failed": len(failed),
           "seconds": round(time.monotonic() - t0, 2), "entries": entries}
    if args.json:
        from pathlib import Path

        from ea_ops.records import atomic_write_json

        atomic_write_json(Path(args.json), doc)
    made = "listed" if args.dry_run else f"in {doc['seconds']} s with {args.jobs} processes"
    print(f"{len(entries)} builds for sm_{arch} {made}"
          f"{f', {len(failed)} failed' if failed else ''}")
    for e in failed:
        print(f"  {e['name']}: {e['error']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
