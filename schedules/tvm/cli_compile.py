"""``ea-ops compile --backend tvm``: build the EA kernels for a target and export them with a manifest.

- ``--target cpu``: one shared library per kernel (``<kernel>.so``, LLVM for this CPU), scheduled with the
  tuned record for this target when one exists, else the default schedule.
- ``--target cuda:sm_90`` (no GPU needed): CUDA C source per kernel (``<kernel>.cu``) and, when ``nvcc`` is
  on the PATH, its PTX for that arch (``<kernel>.ptx``). Variants: one thread per channel, and the chunked
  (split-T) causal forward.

``manifest.json`` lists target, fingerprint, per kernel the variant, schedule and its source, the
argument order (``ea_ops.backends.tvm.cpu_kernels``), the files with their sizes, and the tool versions. The head count
and head size default to 8 x 64 (``EA_OPS_COMPILE_SHAPE=HxD`` overrides them).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from ea_ops.backends.common import CHUNKED, SCAN
from ea_ops.backends.tvm import args as kernel_args
from ea_ops.outdir import prepare_out_dir
from ea_ops.records import atomic_write_json

from . import targets

_GLOBAL = re.compile(r"__global__\s+void\s+(?:__launch_bounds__\(\d+\)\s+)?(\w+)")
KERNELS = (("forward", True), ("forward", False), ("backward", True), ("backward", False))
CUDA_VARIANTS = tuple((k, c, SCAN) for k, c in KERNELS) + (("forward", True, CHUNKED),)
MANIFEST = "manifest.json"


def _shape(args) -> tuple[int, int]:
    H = getattr(args, "heads", None)
    D = getattr(args, "dim", None)
    text = os.environ.get("EA_OPS_COMPILE_SHAPE")
    if text and (H is None or D is None):
        m = re.fullmatch(r"(\d+)x(\d+)", text.strip())
        if not m:
            raise SystemExit(f"EA_OPS_COMPILE_SHAPE must look like 8x64, got {text!r}")
        H, D = int(m.group(1)), int(m.group(2))
    return int(H or 8), int(D or 64)


def _name(kernel: str, causal: bool, order: int, dtype: str, H: int, D: int, variant: str | None = None) -> str:
    mid = f"-{variant}" if variant else ""
    return f"{kernel}-{'causal' if causal else 'full'}{mid}-t{order}-{dtype}-H{H}D{D}"


def output_names(kind: str, orders, dtypes, H: int, D: int, nvcc: str | None) -> list[str]:
    """Every file ``run`` writes into the output folder."""
    if kind == "cpu":
        names = [f"{_name(k, c, o, dt, H, D)}.so" for o in orders for dt in dtypes for k, c in KERNELS]
    else:
        exts = ("cu", "ptx") if nvcc else ("cu",)
        names = [f"{_name(k, c, o, dt, H, D, v)}.{e}" for o in orders for dt in dtypes for k, c, v in CUDA_VARIANTS
                 for e in exts]
    return [*names, MANIFEST]


def _nvcc() -> str | None:
    path = shutil.which("nvcc")
    if not path:
        return None
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"release ([\d.]+)", out)
    return m.group(1) if m else "unknown"


def _cpu(out: Path, orders, dtypes, H: int, D: int) -> list[dict]:
    from ea_ops.backends.tvm import build

    entries = []
    for order in orders:
        for dtype in dtypes:
            for kernel, causal in KERNELS:
                cfg, source = build.choose_cpu_config(kernel, causal, order, dtype, H, D, 4096)
                lib = build.build_cpu(kernel, causal, order, dtype, H, D, cfg)
                name = _name(kernel, causal, order, dtype, H, D)
                path = out / f"{name}.so"
                lib.export_library(str(path))
                entries.append({"name": name, "kernel": kernel, "causal": causal, "order": order,
                                "dtype": dtype, "variant": "cpu", "schedule": cfg, "schedule_source": source,
                                "args": kernel_args.names(kernel, causal),
                                "files": {"library": _file(path)}})
    return entries


def _cuda(out: Path, arch: str, orders, dtypes, H: int, D: int, nvcc: str | None) -> list[dict]:
    import tvm

    from ea_ops.backends.tvm import cuda_kernels
    from ea_ops.backends.tvm.target import cuda_target

    target = tvm.target.Target(cuda_target(arch), host="llvm")
    entries = []
    for order in orders:
        for dtype in dtypes:
            for kernel, causal, variant in CUDA_VARIANTS:
                cfg = {**cuda_kernels.default_config(kernel, causal), "variant": variant}
                mod = cuda_kernels.scheduled_module(kernel, causal, order, dtype, H, D, cfg)
                lib = tvm.compile(mod, target=target)
                src = lib.mod.imports[0].inspect_source("cuda")
                name = _name(kernel, causal, order, dtype, H, D, variant)
                files = {}
                cu = out / f"{name}.cu"
                cu.write_text(src)
                files["source"] = _file(cu)
                if nvcc:
                    p = out / f"{name}.ptx"
                    res = subprocess.run(["nvcc", "--ptx", f"-arch={arch}", "-O3", "-o", str(p), str(cu)],
                                         capture_output=True, text=True, timeout=600)
                    if res.returncode != 0:
                        raise SystemExit(f"nvcc failed on {cu.name}:\n{res.stderr[-3000:]}")
                    files["ptx"] = _file(p)
                entries.append({"name": name, "kernel": kernel, "causal": causal, "order": order,
                                "dtype": dtype, "variant": variant, "schedule": cfg,
                                "schedule_source": "default", "args": kernel_args.names(kernel, causal, variant),
                                "kernels": sorted(set(_GLOBAL.findall(src))),
                                "files": files})
    return entries


def _file(path: Path) -> dict:
    return {"path": path.name, "bytes": path.stat().st_size}


def run(args) -> int:
    tgt = targets.parse(args.target)
    H, D = _shape(args)
    nvcc = _nvcc() if tgt.kind == "cuda" else None
    out = prepare_out_dir(args.out, output_names(tgt.kind, args.orders, args.dtypes, H, D, nvcc))
    if tgt.kind == "cpu":
        entries = _cpu(out, args.orders, args.dtypes, H, D)
    else:
        entries = _cuda(out, tgt.arch, args.orders, args.dtypes, H, D, nvcc)
        if nvcc is None:
            print("nvcc not found: exported CUDA source only (no PTX)", file=sys.stderr)
    manifest = {
        "backend": "tvm",
        "target": tgt.describe(),
        "fingerprint": tgt.fingerprint,
        "orders": list(args.orders),
        "dtypes": list(args.dtypes),
        "shape": {"H": H, "D": D, "B": "any", "T": "any"},
        "arg_roles": {f"{k}-{'causal' if c else 'full'}": " ".join(kernel_args.roles(k, c)) for k, c in KERNELS},
        "kernels": entries,
        "versions": {**targets.versions(), "nvcc": nvcc},
    }
    atomic_write_json(out / MANIFEST, manifest)
    print(f"{len(entries)} kernels for {tgt.fingerprint} in {out} ({MANIFEST})")
    return 0
