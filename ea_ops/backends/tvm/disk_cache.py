"""The TVM backend's compiled CPU kernels on disk, so a second process loads instead of building.

Entries live in ``<user cache>/kernels/tvm/<cpu fingerprint>/`` (``EA_OPS_CACHE_DIR``, default
``~/.cache/ea-ops``) under the trust rules of ``ea_ops.kernel_store``. ``EA_OPS_KERNEL_CACHE=0`` turns the cache
off (nothing read or written). The key is everything that changes the code: the TVM and tvm_ffi versions, the
LLVM target (``target.cpu_target_dict``: mcpu and cores), a sha256 of the kernel source files (``SOURCES``), the
kernel, causality, order, dtype, ``H``, ``D`` and the schedule config.

A hit needs only TVM's runtime libraries and ``tvm_ffi``, not the ``tvm`` Python package, whose import takes
about a second (docs/findings.md): the libraries are loaded as ``import tvm`` loads them, so a later import finds
them already there.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from ... import records
from ...kernel_store import KernelStore
from .target import cpu_fingerprint, cpu_target_dict, usable_cores

ENV = "EA_OPS_KERNEL_CACHE"
# The files the generated code depends on (tests/ea_ops/test_tvm_kernel_cache.py checks that every ea_ops
# module they import is listed): an edit to any of them is a new key.
SOURCES = ("args.py", "build.py", "cpu_blocked.py", "cpu_kernels.py", "schedule.py", "target.py", "tir_math.py")
# The CUDA kernels' (a CUDA kernel pack's key): they share the CPU kernels' row functions and argument table.
CUDA_SOURCES = (*SOURCES, "cuda_device.py", "cuda_kernels.py")
_HERE = Path(__file__).resolve().parent


def enabled() -> bool:
    """False when ``EA_OPS_KERNEL_CACHE`` is ``0``, ``false``, ``no`` or ``off``, and where files have no owner
    uid to check (``os.getuid``)."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off") and hasattr(os, "getuid")


def store() -> KernelStore:
    root = records.user_cache_dir()
    return KernelStore(root, root / "kernels" / "tvm" / cpu_fingerprint())


@functools.lru_cache(maxsize=2)
def sources_sha256(names: tuple[str, ...] = SOURCES) -> str:
    """One sha256 over the names and bytes of ``names`` (``SOURCES``, or ``CUDA_SOURCES``)."""
    h = hashlib.sha256()
    for name in names:
        data = (_HERE / name).read_bytes()
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def _runtime() -> None:
    """TVM's runtime (global symbols: the kernels' thread pool) and compiler libraries, loaded as ``import tvm``
    loads them from an installed wheel (``tvm/base.py``); anything else imports the package itself."""
    if "tvm" not in sys.modules and not os.environ.get("TVM_LIBRARY_PATH") \
            and os.environ.get("TVM_USE_RUNTIME_LIB") != "1":
        try:
            from tvm_ffi.libinfo import load_lib_ctypes

            spec = importlib.util.find_spec("tvm")
            if spec is not None and spec.origin:
                lib = Path(spec.origin).parent / "lib"
                load_lib_ctypes("tvm", "tvm_runtime", "RTLD_GLOBAL", extra_lib_paths=[lib])
                load_lib_ctypes("tvm", "tvm_compiler", "RTLD_LOCAL", extra_lib_paths=[lib])
                return
        except (ImportError, OSError, RuntimeError):
            pass
    import tvm  # noqa: F401


@functools.lru_cache(maxsize=1)
def _mcpu() -> str:
    """LLVM's name for this CPU, as ``target.host_mcpu`` gives it, without importing the ``tvm`` package."""
    if "tvm" in sys.modules:
        from .target import host_mcpu

        return host_mcpu()
    _runtime()
    import tvm_ffi

    fn = tvm_ffi.get_global_func("target.llvm_get_system_cpu", allow_missing=True)
    if fn is None:
        from .target import host_mcpu

        return host_mcpu()
    return str(fn())


@functools.lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    import tvm_ffi

    try:
        tvm_version = importlib.metadata.version("apache-tvm")
    except importlib.metadata.PackageNotFoundError:  # a source build: ask the package
        import tvm

        tvm_version = str(tvm.__version__)
    return {"tvm": tvm_version, "tvm_ffi": str(tvm_ffi.__version__)}


def key(kernel: str, causal: bool, order: int, dtype: str, H: int, D: int, cfg: dict) -> dict[str, Any]:
    """The cache key of one kernel: plain JSON data, recorded in clear in its manifest."""
    return {"backend": "tvm", "kernel": kernel, "causal": bool(causal), "order": int(order), "dtype": dtype,
            "H": int(H), "D": int(D), "config": dict(sorted(cfg.items())), **versions(),
            "target": cpu_target_dict(_mcpu(), usable_cores()), "sources_sha256": sources_sha256()}


def _load_module(path: str):
    _runtime()
    import tvm_ffi

    return tvm_ffi.load_module(path)


def load(kernel: str, causal: bool, order: int, dtype: str, H: int, D: int, cfg: dict):
    """The stored runtime module of this kernel, or None (cache off, nothing stored, or refused: rebuild)."""
    if not enabled():
        return None
    return store().load(key(kernel, causal, order, dtype, H, D, cfg), _load_module)


def save(lib, kernel: str, causal: bool, order: int, dtype: str, H: int, D: int, cfg: dict) -> bool:
    """Store the built module ``lib`` (``tvm.compile``'s result): False when the cache is off or not usable."""
    if not enabled():
        return False
    from .target import cpu_target

    info = {"target": str(cpu_target()), "ea_ops": _ea_ops_version()}
    return store().save(key(kernel, causal, order, dtype, H, D, cfg), lambda path: lib.export_library(path),
                        info)


def _ea_ops_version() -> str:
    try:
        return importlib.metadata.version("ea-ops")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def describe() -> dict:
    """What ``ea-ops info`` shows about the cache."""
    st = store()
    return {"kernel_cache": str(st.folder) if enabled() else f"off ({ENV}=0)",
            "kernel_cache_entries": st.entries() if enabled() else 0}
