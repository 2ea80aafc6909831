"""``ea-ops compile --backend tvm``: build the EA kernels for a target into a kernel pack (a folder with a manifest),
which ``ea_ops.load_kernels`` / ``EA_OPS_KERNELS`` run without compiling (``ea_ops/backends/tvm/packs.py``).

Targets:

- ``cpu``: this CPU (its LLVM ``mcpu``); ``cpu:<mcpu>``: another x86 model or a generic level such as
  ``x86-64-v3`` (runs on every CPU of that level). One shared library per kernel (``<name>.so``).
- ``aarch64`` or ``aarch64-linux-gnu[:<mcpu>]``: a cross build for 64-bit Arm Linux. Without a linker for it
  here, each kernel is an archive of objects (``<name>.tar``), linked by ``load_kernels`` on the device.
- ``cuda:sm_XX`` (no GPU needed): per kernel a library of its host code holding its CUDA C source
  (``<name>.so``), the source (``<name>.cu``) and, with ``nvcc`` on the PATH, its PTX and the cubin built from it
  (``<name>.ptx``, ``<name>.cubin``; the cubin's arch and kernel names are checked, ``cubin.py``). A GPU of that
  arch runs the pack (``load_kernels``: the loader gets the cubin, nothing is compiled there). Variants: one thread
  per channel, and the chunked (split-T) causal forward.

Kernels: the forward and backward, causal and not, and the decoding step, for each ``--shapes`` ``HxD`` (default
8x64; ``EA_OPS_COMPILE_SHAPE`` and ``--heads/--dim`` still name one), order and dtype, or for the calls a
``--from-log`` file recorded (its CPU calls for a CPU target, its CUDA calls for a CUDA one). CPU kernels take
this target's tuned records (the best one at T = 4096), else the default schedule. ``manifest.json``
(``packs.write_manifest``) holds the target, versions, the kernel sources' sha256, per kernel its schedule and
where it came from, its argument order (CUDA: the built function's parameters), and each file's size and sha256.
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
from ea_ops.backends.tvm import packs
from ea_ops.outdir import prepare_out_dir

from . import targets

_GLOBAL = re.compile(r"__global__\s+void\s+(?:__launch_bounds__\(\d+\)\s+)?(\w+)")
KERNELS = (("forward", True), ("forward", False), ("backward", True), ("backward", False))
CPU_KERNELS = (*KERNELS, ("step", True))
CUDA_VARIANTS = tuple((k, c, SCAN) for k, c in KERNELS) + (("forward", True, CHUNKED),)
MANIFEST = packs.MANIFEST
CROSS = {"aarch64": ("aarch64-linux-gnu", "generic", ["+neon"]), "aarch64-linux-gnu": ("aarch64-linux-gnu", "generic",
                                                                                    ["+neon"])}


def _shapes(args) -> list[tuple[int, int]]:
    """``(H, D)`` pairs: ``--shapes``, else ``--heads/--dim`` or ``EA_OPS_COMPILE_SHAPE``, else 8x64."""
    if getattr(args, "shapes", None):
        return list(args.shapes)
    H = getattr(args, "heads", None)
    D = getattr(args, "dim", None)
    text = os.environ.get("EA_OPS_COMPILE_SHAPE")
    if text and (H is None or D is None):
        m = re.fullmatch(r"(\d+)x(\d+)", text.strip())
        if not m:
            raise SystemExit(f"EA_OPS_COMPILE_SHAPE must look like 8x64, got {text!r}")
        H, D = int(m.group(1)), int(m.group(2))
    return [(int(H or 8), int(D or 64))]


def _cpu_target(text: str) -> dict:
    """The pack target of ``cpu``, ``cpu:<mcpu>`` or a cross name: kind, arch, mcpu, the LLVM target, how kernels
    are written (``library``: a shared object; ``objects``: an archive to link on the device)."""
    from ea_ops.backends.tvm.target import cpu_target_dict, host_mcpu, usable_cores

    name, _, mcpu = text.partition(":")
    if name in ("cpu", "llvm"):
        mcpu = mcpu or host_mcpu()
        return {"kind": "cpu", "arch": packs.host_arch(), "mcpu": mcpu,
                "llvm": cpu_target_dict(mcpu, usable_cores()), "files": "library"}
    if name in CROSS:
        triple, default_mcpu, mattr = CROSS[name]
        arch = triple.split("-")[0]
        llvm = {"kind": "llvm", "mtriple": triple, "mcpu": mcpu or default_mcpu, "mattr": mattr}
        files = "library" if arch == packs.host_arch() else "objects"
        return {"kind": "cpu", "arch": arch, "mcpu": mcpu or default_mcpu, "llvm": llvm, "files": files}
    raise SystemExit(f"--target must be cpu, cpu:<mcpu>, aarch64[-linux-gnu][:<mcpu>] or cuda:sm_XX, got {text!r}")


def _name(kernel: str, causal: bool, order: int, dtype: str, H: int, D: int, variant: str | None = None) -> str:
    mid = f"-{variant}" if variant else ""
    return f"{kernel}-{'causal' if causal else 'full'}{mid}-t{order}-{dtype}-H{H}D{D}"


def output_names(kind: str, orders, dtypes, shapes, nvcc: str | None, files: str = "library",
                 combos: list[tuple] | None = None) -> list[str]:
    """Every file ``run`` writes into the output folder; CUDA: for ``combos`` ``(H, D, order, dtype)`` when given,
    else the grid of ``shapes``, ``orders`` and ``dtypes``."""
    if kind == "cpu":
        ext = "so" if files == "library" else "tar"
        names = [f"{_name(k, c, o, dt, H, D)}.{ext}" for H, D in shapes for o in orders for dt in dtypes
                 for k, c in CPU_KERNELS]
    else:
        exts = ("so", "cu", "ptx", "cubin") if nvcc else ("so", "cu")
        combos = combos or _grid(shapes, orders, dtypes)
        names = [f"{_name(k, c, o, dt, H, D, v)}.{e}" for H, D, o, dt in combos for k, c, v in CUDA_VARIANTS
                 for e in exts]
    return [*names, MANIFEST]


def _grid(shapes, orders, dtypes) -> list[tuple]:
    return [(H, D, o, dt) for H, D in shapes for o in orders for dt in dtypes]


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


def _cpu(out: Path, tgt: dict, work: list[tuple]) -> list[dict]:
    """Build every ``(kernel, causal, order, dtype, H, D)`` of ``work`` for the CPU target ``tgt``."""
    import tvm

    from ea_ops.backends.tvm import build, schedule

    target = tvm.target.Target(tgt["llvm"])
    here = tgt["files"] == "library" and tgt["mcpu"] == _cpu_target("cpu")["mcpu"]
    entries = []
    for kernel, causal, order, dtype, H, D in work:
        if here:  # this CPU: its tuned records (or their transfer), as the runtime would choose
            cfg, source = build.choose_cpu_config(kernel, causal, order, dtype, H, D, 1 if kernel == "step" else 4096)
        else:
            cfg, source = schedule.default_cpu_config(kernel, H, D), "default"
        lib = tvm.compile(schedule.cpu_module(kernel, causal, order, dtype, H, D, cfg), target=target)
        name = _name(kernel, causal, order, dtype, H, D)
        if tgt["files"] == "library":
            lib.export_library(str(out / f"{name}.so"))
            files = {"library": f"{name}.so"}
        else:  # objects only: this host has no linker for the target
            lib.export_library(str(out / f"{name}.tar"))
            files = {"objects": f"{name}.tar"}
        entries.append({"name": name, "kernel": kernel, "causal": causal, "order": order, "dtype": dtype,
                        "H": H, "D": D, "variant": "cpu", "schedule": cfg, "schedule_source": source,
                        "args": kernel_args.names(kernel, causal), "files": files})
    return entries


def _cuda(out: Path, arch: str, combos: list[tuple], nvcc: str | None) -> list[dict]:
    """Every CUDA variant for each ``(H, D, order, dtype)`` of ``combos``, for ``arch``."""
    import tvm

    from ea_ops.backends.tvm import cuda_kernels
    from ea_ops.backends.tvm.target import cuda_target

    target = tvm.target.Target(cuda_target(arch), host="llvm")
    entries = []
    for H, D, order, dtype in combos:
        for kernel, causal, variant in CUDA_VARIANTS:
            cfg = {**cuda_kernels.default_config(kernel, causal), "variant": variant}
            mod = cuda_kernels.scheduled_module(kernel, causal, order, dtype, H, D, cfg)
            lib = tvm.compile(mod, target=target)
            src = lib.mod.imports[0].inspect_source("cuda")
            name = _name(kernel, causal, order, dtype, H, D, variant)
            lib.export_library(str(out / f"{name}.so"))  # host code + the CUDA module (its source, here)
            files = {"library": f"{name}.so"}
            cu = out / f"{name}.cu"
            cu.write_text(src)  # the bytes the CUDA module holds: the loader hands them to the compile callback
            files["source"] = cu.name
            kernels = sorted(set(_GLOBAL.findall(src)))
            if nvcc:
                files["ptx"], files["cubin"] = _nvcc_build(out, cu, arch, kernels)
            entries.append({"name": name, "kernel": kernel, "causal": causal, "order": order,
                            "dtype": dtype, "H": H, "D": D, "variant": variant, "schedule": cfg,
                            "schedule_source": "default", "args": kernel_args.names(kernel, causal, variant),
                            "signature": signature(mod["main"]), "kernels": kernels, "files": files})
    return entries


def signature(func) -> list[dict]:
    """The built function's parameters in call order, as the runtime must pass them: name, dtype and, for a
    buffer, its shape (symbols such as ``B`` and ``T`` as their names, the rest as numbers)."""
    out = []
    for p in func.params:
        try:
            shape = [int(x) if hasattr(x, "value") else str(x) for x in p.shape]
        except AttributeError:  # a scalar
            out.append({"name": p.name, "dtype": str(p.ty)})
            continue
        out.append({"name": p.name, "dtype": str(p.dtype), "shape": shape})
    return out


def _nvcc_build(out: Path, cu: Path, arch: str, kernels: list[str]) -> tuple[str, str]:
    """``<name>.ptx`` and the ``<name>.cubin`` ptxas builds from it for ``arch``; the cubin must be of that arch
    and hold every ``__global__`` function of the source."""
    from .cubin import cubin_info

    ptx, cubin = cu.with_suffix(".ptx"), cu.with_suffix(".cubin")
    for cmd in (["nvcc", "--ptx", f"-arch={arch}", "-O3", "-o", str(ptx), str(cu)],
                ["nvcc", "--cubin", f"-arch={arch}", "-O3", "-o", str(cubin), str(ptx)]):
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if res.returncode != 0:
            raise SystemExit(f"nvcc failed on {cu.name}:\n{res.stderr[-3000:]}")
    info = cubin_info(cubin.read_bytes())
    want = int(arch.removeprefix("sm_").rstrip("abcdefghijklmnopqrstuvwxyz"))
    if info["sm"] != want or not set(kernels) <= set(info["functions"]):
        raise SystemExit(f"{cubin.name}: nvcc wrote code for sm_{info['sm']} with {info['functions']}, "
                         f"expected {arch} with {kernels}")
    return ptx.name, cubin.name


def _work(args, shapes, device: str = "cpu") -> list[tuple]:
    """``(kernel, causal, order, dtype, H, D)`` of every kernel to build: the grid, plus a log's calls on
    ``device`` (``cpu`` or ``cuda``)."""
    work = [(k, c, o, dt, H, D) for H, D in shapes for o in args.orders for dt in args.dtypes for k, c in CPU_KERNELS]
    log = getattr(args, "from_log", None)
    if log:
        from ea_ops import call_log

        try:
            lines, bad = call_log.read_log(log)
        except OSError as exc:
            raise SystemExit(f"--from-log {log}: cannot read it ({exc.strerror or exc})") from None
        for why in bad[:5]:
            print(f"ea-ops compile: --from-log {log}: {why}, skipped", file=sys.stderr)
        if getattr(args, "shapes", None) is None:
            work = []  # the log names the shapes; --orders/--dtypes still add their grid with --shapes
        from ea_ops.backends.tvm.cpu_kernels import DTYPES

        for line in lines:
            if line["device"] != device or line["dtype"] not in DTYPES:
                continue  # not a call the TVM kernels of this target run
            for kernel in call_log.kernels_of(line):
                causal = True if kernel == "step" else bool(line["causal"])
                work.append((kernel, causal, int(line["order"]), line["dtype"], int(line["H"]), int(line["D"])))
        if not work:
            raise SystemExit(f"--from-log {log}: no call to compile ({len(lines)} valid lines, {len(bad)} bad)")
    return sorted(set(work))


def run(args) -> int:
    from ea_ops.backends.tvm import disk_cache

    shapes = _shapes(args)
    if args.target.startswith("cuda"):
        tgt = targets.parse(args.target)
        nvcc = _nvcc()
        combos = sorted({(H, D, o, dt) for _, _, o, dt, H, D in _work(args, shapes, "cuda")})
        out = prepare_out_dir(args.out, output_names("cuda", args.orders, args.dtypes, shapes, nvcc, combos=combos))
        entries = _cuda(out, tgt.arch, combos, nvcc)
        if nvcc is None:
            print("nvcc not found: exported CUDA source only (no PTX)", file=sys.stderr)
        # host_arch: the libraries' host code is LLVM's default for this machine's architecture
        target = {"kind": "cuda", "arch": tgt.arch, "fingerprint": tgt.fingerprint, "host_arch": packs.host_arch()}
        extra = {"versions": {"nvcc": nvcc}}
    else:
        target = _cpu_target(args.target)
        work = _work(args, shapes)
        names = [f"{_name(k, c, o, dt, H, D)}.{'so' if target['files'] == 'library' else 'tar'}"
                 for k, c, o, dt, H, D in work]
        out = prepare_out_dir(args.out, [*names, MANIFEST])
        entries = _cpu(out, target, work)
        if target["files"] == "library" and target["mcpu"] == _cpu_target("cpu")["mcpu"]:
            target["fingerprint"] = targets.TuneTarget("cpu").fingerprint
        extra = {}
    versions = {**targets.versions(), **disk_cache.versions(), **extra.pop("versions", {})}
    sources = disk_cache.CUDA_SOURCES if target["kind"] == "cuda" else disk_cache.SOURCES
    packs.write_manifest(out, target=target, kernels=entries, versions=versions,
                         sources_sha256=disk_cache.sources_sha256(sources),
                         extra={**extra, "arg_roles": {f"{k}-{'causal' if c else 'full'}": " ".join(
                             kernel_args.roles(k, c)) for k, c in KERNELS}})
    where = target.get("fingerprint") or f"{target['kind']} {target.get('arch')} {target.get('mcpu', '')}".strip()
    print(f"{len(entries)} kernels for {where} in {out} ({MANIFEST})")
    return 0
