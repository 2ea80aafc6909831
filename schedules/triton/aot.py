"""Ahead-of-time builds of the Triton kernels for a CUDA target, without a GPU.

``triton.compile(ASTSource(fn, signature, constexprs, attrs), target=GPUTarget("cuda", 90, 32),
options={"num_warps": w})`` gives PTX and a cubin; register use and spills come from the cubin through the
``cuobjdump`` bundled with Triton (the compiled metadata lacks them without a driver, docs/findings.md).

ASTSource's interface, Triton 3.3 to 3.9 (3.6 is what the GPU machine carries): ``ASTSource(fn, signature,
constexprs=None, attrs=None)``; ``signature`` maps every argument name, constexprs included, to a type
string (``"*bf16"``, ``"i32"``, ``"fp32"``, ``"constexpr"``); ``constexprs`` maps names to values;
``attrs`` maps argument index tuples to ``[["tt.divisibility", 16]]``. Older releases (3.2: ``constants``
keyed by name, ``AttrsDescriptor``) are refused with a message.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

_DTYPE_CODES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
_IO_POINTERS = {"q_ptr", "k_ptr", "v_ptr", "o_ptr", "g_ptr", "dq_ptr", "dk_ptr", "dv_ptr"}
_INT_POINTERS = {"bounds_ptr", "seq_chunks_ptr", "item_seq_ptr"}
ARCHS = {"sm_80": 80, "sm_90": 90}


@dataclasses.dataclass(frozen=True)
class Build:
    """One compiled kernel: which, with which constexpr flags, order, input dtype, warps and arch."""

    kernel: str
    flags: tuple[tuple[str, bool], ...]
    order: int
    dtype: str
    num_warps: int
    arch: int
    divisible_ints: tuple[str, ...] = ()  # int arguments built as divisible by 16 (comparisons only)

    @property
    def name(self) -> str:
        fl = "".join(f"-{k.lower()}{int(v)}" for k, v in self.flags)
        div = "".join(f"-div{n}" for n in self.divisible_ints)
        return f"{self.kernel}{fl}-t{self.order}-{self.dtype}-w{self.num_warps}-sm{self.arch}{div}"


def parse_target(text: str) -> int:
    """``cuda:sm_90`` (or ``sm_90``, ``cuda:90``) -> 90."""
    m = re.fullmatch(r"(?:cuda:)?(?:sm_?)?(\d{2,3})a?", text.strip())
    if not m:
        raise ValueError(f"target must look like cuda:sm_90, got {text!r}")
    return int(m.group(1))


def constexprs_for(build: Build) -> dict:
    from ea_ops.backends.triton import launch

    meta = launch._meta(build.order, {"num_warps": build.num_warps})
    meta.pop("num_warps")
    out = {**meta, **dict(build.flags)}
    return out


def _arg_types(fn, dtype: str, constexprs: dict) -> dict[str, str]:
    io = "*" + _DTYPE_CODES[dtype]
    sig: dict[str, str] = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = io if name in _IO_POINTERS else "*i32" if name in _INT_POINTERS else "*fp32"
        else:
            sig[name] = "fp32" if name == "r" else "i32"  # the JIT never specializes a float
    return sig


def signature_for(fn, dtype: str, constexprs: dict, *, divisible_ints: tuple[str, ...] = ()) -> tuple[dict, dict]:
    """``(signature, attrs)`` from the argument-naming convention of ``ea_ops.backends.triton.cuda_kernels``.

    ``attrs`` are the JIT's for 16-byte aligned tensors (torch's allocations): ``tt.divisibility = 16`` on every
    pointer, none on the int arguments, which the kernels mark ``do_not_specialize`` (an int the JIT specializes
    would get attributes from its value at run time, which no build ahead of time can know: refused).
    ``divisible_ints`` adds the attribute to those ints, the build the JIT made before ``do_not_specialize``
    (for comparisons only).
    """
    sig = _arg_types(fn, dtype, constexprs)
    attrs: dict = {}
    for i, name in enumerate(fn.arg_names):
        if sig[name].startswith("*"):
            attrs[(i,)] = [["tt.divisibility", 16]]  # torch allocations are 16-byte aligned, as the JIT sees
        elif sig[name] == "i32":
            if not fn.params[i].do_not_specialize:
                raise ValueError(f"{fn.__name__}: int argument {name!r} is specialized by the JIT on its value; "
                                 "mark it do_not_specialize so the build ahead of time is the one the GPU runs")
            if name in divisible_ints:
                attrs[(i,)] = [["tt.divisibility", 16]]
    missing = [n for n in constexprs if n not in fn.arg_names]
    if missing:
        raise ValueError(f"constexprs {missing} are not arguments of {fn.__name__}")
    return sig, attrs


def launch_args(fn, build: Build, ints: dict[str, int] | None = None) -> tuple[list, dict]:
    """``(args, kwargs)`` of a launch of ``fn`` for ``build``, as ``JITFunction.warmup`` takes them: a torch
    dtype for each tensor (it stands for an aligned tensor), the int arguments from ``ints`` (default 1024;
    ``do_not_specialize``, so any value gives the same build), the scale, then the constexprs and
    ``num_warps`` as launch.py passes them."""
    import torch

    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "i32": torch.int32}
    consts = {k: v for k, v in constexprs_for(build).items() if k in fn.arg_names}
    sig = _arg_types(fn, build.dtype, consts)
    args = []
    for name in fn.arg_names:
        if name in consts:
            continue
        if sig[name].startswith("*"):
            args.append(dtypes[sig[name][1:]])
        else:
            args.append(0.125 if name == "r" else int((ints or {}).get(name, 1024)))
    return args, {**consts, "num_warps": build.num_warps}


def jit_specialization(fn, build: Build, ints: dict[str, int], *, misaligned: tuple[str, ...] = ()) -> dict:
    """What Triton's JIT computes when it launches ``fn`` for ``build`` with these int arguments, through its
    own binder (``create_function_from_signature``, ``_pack_args``; internal, Triton 3.3-3.9) on mock tensors,
    16-byte aligned except the pointer arguments named in ``misaligned``. No GPU is needed.

    Returns ``{"signature", "constexprs" (by name), "attrs" (index tuples -> attribute lists, empty ones
    dropped), "options" (the compile options as a dict)}``.
    """
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend

    try:
        from triton.runtime.jit import MockTensor, create_function_from_signature
    except ImportError as exc:  # pragma: no cover - another Triton layout
        raise RuntimeError(f"this Triton has no JIT binder to compare with ({exc})") from None

    class _Misaligned(MockTensor):
        @staticmethod
        def data_ptr():
            return 2

    args, kwargs = launch_args(fn, build, ints)
    names = [n for n in fn.arg_names if n not in kwargs]
    args = [(_Misaligned if n in misaligned else MockTensor)(a) if isinstance(a, torch.dtype) else a
            for n, a in zip(names, args)]
    backend = make_backend(GPUTarget("cuda", build.arch, 32))
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, spec, opts = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, spec, opts)
    return {"signature": dict(signature), "constexprs": {fn.arg_names[k[0]]: v for k, v in constexprs.items()},
            "attrs": {k: v for k, v in attrs.items() if v}, "options": dict(options.__dict__)}


def _options(build: Build) -> dict:
    # fp fusion stated explicitly: the JIT's default (on) through 3.9, without 3.9's warning about 3.10
    return {"num_warps": build.num_warps, "enable_fp_fusion": True}


def compile_options(build: Build) -> dict:
    """The full compile options of ``build`` as the CUDA backend parses them (compare with the JIT's)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend

    return dict(make_backend(GPUTarget("cuda", build.arch, 32)).parse_options(_options(build)).__dict__)


def ast_source(fn, signature: dict, constexprs: dict, attrs: dict):
    from triton.compiler import ASTSource

    params = inspect.signature(ASTSource.__init__).parameters
    if "constexprs" not in params:
        import triton

        raise RuntimeError(f"triton {triton.__version__}: ASTSource lacks 'constexprs' (needs Triton >= 3.3)")
    return ASTSource(fn, signature=signature, constexprs=constexprs, attrs=attrs)


def compile_build(build: Build):
    """The ``CompiledKernel`` of ``build`` (``.asm`` holds ttir/ttgir/llir/ptx/cubin)."""
    import triton
    from triton.backends.compiler import GPUTarget

    from ea_ops.backends.triton import cuda_kernels

    fn = cuda_kernels.KERNELS[build.kernel]
    if not hasattr(fn, "arg_names") or type(fn).__name__ == "InterpretedFunction":
        raise RuntimeError("ahead-of-time builds need TRITON_INTERPRET unset when the kernels are imported")
    consts = {k: v for k, v in constexprs_for(build).items() if k in fn.arg_names}
    sig, attrs = signature_for(fn, build.dtype, consts, divisible_ints=build.divisible_ints)
    src = ast_source(fn, sig, consts, attrs)
    return triton.compile(src, target=GPUTarget("cuda", build.arch, 32), options=_options(build))


def _bundled_tool(name: str) -> Path | None:
    """Triton's bundled CUDA tool ``name`` (``TRITON_<NAME>_PATH`` first), else one on PATH."""
    import triton

    env = os.environ.get(f"TRITON_{name.upper()}_PATH")
    root = Path(triton.__file__).resolve().parent
    for cand in (env, root / "backends" / "nvidia" / "bin" / name,
                 root / "third_party" / "cuda" / "bin" / name, shutil.which(name)):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return Path(cand)
    return None


def canonical(build: Build) -> Build:
    """``build`` as ``build_of`` names it: a kernel without input-dtype tensors (the chunk passes) has one build
    for every dtype, named float32."""
    from ea_ops.backends.triton import cuda_kernels

    fn = cuda_kernels.KERNELS[build.kernel]
    takes_io = any(n in _IO_POINTERS for n in fn.arg_names)
    return build if takes_io else dataclasses.replace(build, dtype="float32")


def build_of(compiled) -> Build | None:
    """The ``Build`` a compiled kernel (the JIT's, from ``fn.device_caches``, or ``compile_build``'s) was made
    for, from its source's constants and signature; None for a kernel that is not one of ours. The chunk passes
    take no input-dtype tensor: their builds are the same for every dtype, named float32 here."""
    from ea_ops.backends.triton import cuda_kernels, launch

    src = compiled.src
    fn = getattr(src, "fn", None)
    kernel = next((k for k, f in cuda_kernels.KERNELS.items() if f is fn), None)
    if kernel is None:
        return None
    consts = {fn.arg_names[k[0]]: v for k, v in src.constants.items()}  # ASTSource keys them by (index,)
    names = {name for _, flags in launch.LAUNCHES for name in flags}
    flags = tuple(sorted((k, bool(v)) for k, v in consts.items() if k in names))
    io = next((src.signature[n] for n in fn.arg_names if n in _IO_POINTERS), "*fp32")
    dtype = {v: k for k, v in _DTYPE_CODES.items()}[io[1:]]  # float32 for the chunk passes: none of their own
    div = tuple(fn.arg_names[k[0]] for k, v in src.attrs.items()
                if v and not fn.arg_names[k[0]].endswith("_ptr") and ["tt.divisibility", 16] in v)
    return Build(kernel, flags, int(consts["T1"]) - 1, dtype, int(compiled.metadata.num_warps),
                 int(compiled.metadata.target.arch), div)


def cuobjdump_path() -> Path | None:
    """The ``cuobjdump`` bundled with Triton (``TRITON_CUOBJDUMP_PATH`` first), else one on PATH."""
    return _bundled_tool("cuobjdump")


def nvdisasm_path() -> Path | None:
    """The ``nvdisasm`` bundled with Triton (``TRITON_NVDISASM_PATH`` first), else one on PATH."""
    return _bundled_tool("nvdisasm")


_USAGE = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")


def resource_usage(cubin: bytes) -> dict:
    """``{"registers", "stack", "shared", "local"}`` of the (single) kernel in ``cubin``, via cuobjdump.

    Spilled registers land in local memory, addressed through the stack frame: both must be 0.
    """
    tool = cuobjdump_path()
    if tool is None:
        raise FileNotFoundError("cuobjdump not found (bundled with Triton under triton/backends/nvidia/bin)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        out = subprocess.run([str(tool), "--dump-resource-usage", str(path)], capture_output=True, text=True,
                             check=True, timeout=60).stdout
    found = _USAGE.findall(out)
    if len(found) != 1:
        raise RuntimeError(f"expected one kernel in cuobjdump's resource usage, got:\n{out}")
    reg, stack, shared, local = (int(x) for x in found[0])
    return {"registers": reg, "stack": stack, "shared": shared, "local": local}


def builds_for(orders: list[int], dtypes: list[str], warps: list[int], archs: list[int]) -> list[Build]:
    """Every kernel launch the launch code makes (``launch.LAUNCHES``), for each order/dtype/warps/arch."""
    from ea_ops.backends.triton import launch

    out = []
    for kernel, flags in launch.LAUNCHES:
        fl = tuple(sorted(flags.items()))
        for arch in archs:
            for order in orders:
                for dtype in dtypes:
                    for w in warps:
                        out.append(Build(kernel, fl, order, dtype, w, arch))
    return out



# ----------------------------------------------------------------------------------------- SASS counts
# Instruction classes by opcode (the part before the first dot). "fp" is what the per-element counts
# mean: float arithmetic, special functions, float compares/selects and conversions.
_FP = {"FFMA", "FMUL", "FADD", "FMNMX", "MUFU", "FCHK", "FRND", "FSETP", "FSEL", "FSET", "F2F", "F2FP", "F2I",
       "I2F", "I2FP", "F2IP", "FSWZADD", "HFMA2", "HADD2", "HMUL2", "HSETP2", "HMNMX2"}
_MEM = {"LDG", "STG", "LDS", "STS", "LDL", "STL", "LD", "ST", "LDC", "LDSM", "ATOM", "ATOMG", "ATOMS", "RED"}
_INSTR = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*)(\S*)\s*(.*?);")
_LABEL = re.compile(r"^(\.L_x_\d+):")
_TARGET = re.compile(r"`\((\.L_x_\d+)\)")


def sass(cubin: bytes) -> str:
    """The SASS of ``cubin`` (``nvdisasm -c``, bundled with Triton)."""
    tool = nvdisasm_path()
    if tool is None:
        raise FileNotFoundError("nvdisasm not found (bundled with Triton under triton/backends/nvidia/bin)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        return subprocess.run([str(tool), "-c", str(path)], capture_output=True, text=True, check=True,
                              timeout=60).stdout


def _classify(op: str) -> str:
    if op in _FP:
        return "fp"
    if op in _MEM:
        return "mem"
    if op in ("BAR", "BRA", "EXIT", "BSSY", "BSYNC", "WARPSYNC", "CALL", "RET", "NOP"):
        return "control"
    return "int_other"


def _loop_counts(body: list[str], rows_per_iteration: int) -> dict:
    cls = {k: 0 for k in ("fp", "mem", "int_other", "control")}
    for op in body:
        cls[_classify(op)] += 1
    return {"instructions": len(body), **cls, "barriers": sum(op == "BAR" for op in body),
            "per_row": {"all": round(len(body) / rows_per_iteration, 2),
                        "fp": round(cls["fp"] / rows_per_iteration, 2)}}


def sass_counts(text: str, rows_per_iteration: int = 1) -> dict:
    """Counts of the SASS in ``text``: instructions and ``BAR`` barriers of the whole kernel, and the bodies of
    its innermost loops (a backward branch to a label, no other loop inside) of more than one instruction, in
    address order, by class and per row (``rows_per_iteration`` rows a trip; ``ROWS`` for the row loops).

    The *main* loop is the first of them: every kernel has one row (or chunk) loop, and the forward scan's
    block-form loop comes before the exact rescan that runs only after a large fall of the minimum
    (``ea_fwd_scan``), which is ``loops[1]`` there.

    Returns ``{"instructions", "barriers", "loop": {"instructions", "fp", "mem", "int_other", "control",
    "barriers", "per_row": {"all", "fp"}}, "loops": [...]}`` (``loop`` None, ``loops`` empty, for a kernel
    without a loop).
    """
    ops: list[str] = []
    labels: dict[str, int] = {}
    branches: list[tuple[int, str]] = []
    for line in text.splitlines():
        lab = _LABEL.match(line.strip())
        if lab:
            labels[lab.group(1)] = len(ops)
            continue
        m = _INSTR.match(line)
        if not m:
            continue
        op = m.group(2)
        if op == "BRA":
            tgt = _TARGET.search(line)
            if tgt:
                branches.append((len(ops), tgt.group(1)))
        ops.append(op)
    # a branch to itself (the trap after EXIT) is no loop
    loops = [(labels[t], i) for i, t in branches if t in labels and labels[t] < i]
    inner = sorted((a, b) for a, b in loops if not any(a <= c and d <= b and (c, d) != (a, b) for c, d in loops))
    found = [_loop_counts(ops[a:b + 1], rows_per_iteration) for a, b in inner]
    return {"instructions": len(ops), "barriers": sum(op == "BAR" for op in ops),
            "loop": found[0] if found else None, "loops": found}


# ------------------------------------------------------------------------------------------- the table
def shipped_builds(arch: int) -> list[Build]:
    """Every build the GPU runs for the shipped configurations: every launch at order 6 in bfloat16 with each
    shipped ``num_warps``, and the register worst case (order 14) in every dtype at 4 warps."""
    from ea_ops.backends.triton.backend import MAX_ORDER

    from .configs import all_warps

    return (builds_for([6], ["bfloat16"], list(all_warps()), [arch])
            + builds_for([MAX_ORDER], ["float32", "bfloat16", "float16"], [4], [arch]))


def build_profile(build: Build) -> dict:
    """Registers, stack, shared and local bytes (cuobjdump), barriers and SASS counts (nvdisasm) of one build;
    per-row counts for the row kernels (``ROWS`` rows a loop trip), per trip for the chunk passes."""
    from ea_ops.backends.triton.launch import ROWS

    ck = compile_build(build)
    rows = 1 if build.kernel.startswith("chunk_") else ROWS
    counts = sass_counts(sass(ck.asm["cubin"]), rows)
    return {"name": build.name, "kernel": build.kernel, "flags": dict(build.flags), "order": build.order,
            "dtype": build.dtype, "num_warps": build.num_warps, "arch": build.arch,
            "divisible_ints": list(build.divisible_ints), **resource_usage(ck.asm["cubin"]), **counts}


def markdown_table(profiles: list[dict]) -> str:
    head = ("| build | regs | stack+local | shared | BAR | SASS | loop | loop fp/row | loop all/row |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for p in profiles:
        loop = p["loop"] or {"instructions": "-", "per_row": {"fp": "-", "all": "-"}}
        lines.append(f"| {p['name']} | {p['registers']} | {p['stack'] + p['local']} | {p['shared']} | "
                     f"{p['barriers']} | {p['instructions']} | {loop['instructions']} | {loop['per_row']['fp']} | "
                     f"{loop['per_row']['all']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m schedules.triton.aot [--arch 90] [--divisible-ints] [--json PATH]``: the table of every
    shipped build (Markdown on stdout)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m schedules.triton.aot", description=main.__doc__)
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--divisible-ints", action="store_true",
                    help="build HD and D as divisible by 16 (what the JIT compiled before do_not_specialize)")
    ap.add_argument("--json", type=Path, default=None, help="also write the profiles as JSON here")
    args = ap.parse_args(argv)
    builds = shipped_builds(args.arch)
    if args.divisible_ints:
        builds = [dataclasses.replace(b, divisible_ints=("HD", "D")) for b in builds]
    profiles = [build_profile(b) for b in builds]
    print(markdown_table(profiles))
    if args.json is not None:
        from ea_ops.records import atomic_write_json

        atomic_write_json(args.json, profiles)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
