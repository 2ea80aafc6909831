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

    @property
    def name(self) -> str:
        fl = "".join(f"-{k.lower()}{int(v)}" for k, v in self.flags)
        return f"{self.kernel}{fl}-t{self.order}-{self.dtype}-w{self.num_warps}-sm{self.arch}"


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


def signature_for(fn, dtype: str, constexprs: dict) -> tuple[dict, dict]:
    """``(signature, attrs)`` from the argument-naming convention of ``ea_ops.backends.triton.cuda_kernels``."""
    io = "*" + _DTYPE_CODES[dtype]
    sig: dict[str, str] = {}
    attrs: dict = {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = io if name in _IO_POINTERS else "*i32" if name in _INT_POINTERS else "*fp32"
            attrs[(i,)] = [["tt.divisibility", 16]]  # torch allocations are 16-byte aligned, as the JIT sees
        elif name == "r":
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    missing = [n for n in constexprs if n not in fn.arg_names]
    if missing:
        raise ValueError(f"constexprs {missing} are not arguments of {fn.__name__}")
    return sig, attrs


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
    sig, attrs = signature_for(fn, build.dtype, consts)
    src = ast_source(fn, sig, consts, attrs)
    # fp fusion stated explicitly: the JIT's default (on) through 3.9, without 3.9's warning about 3.10
    options = {"num_warps": build.num_warps, "enable_fp_fusion": True}
    return triton.compile(src, target=GPUTarget("cuda", build.arch, 32), options=options)


def cuobjdump_path() -> Path | None:
    """The ``cuobjdump`` bundled with Triton (``TRITON_CUOBJDUMP_PATH`` first), else one on PATH."""
    import triton

    env = os.environ.get("TRITON_CUOBJDUMP_PATH")
    root = Path(triton.__file__).resolve().parent
    for cand in (env, root / "backends" / "nvidia" / "bin" / "cuobjdump",
                 root / "third_party" / "cuda" / "bin" / "cuobjdump", shutil.which("cuobjdump")):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return Path(cand)
    return None


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

