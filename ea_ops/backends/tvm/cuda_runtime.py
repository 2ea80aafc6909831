"""TVM's CUDA runtime in a process that runs kernels but may not compile them (a kernel pack's, ``packs.py``).

Two facts of apache-tvm 0.27 shape this module (read in its sources, ``src/runtime/cuda/cuda_module.cc`` and
``src/target/cuda/cuda_fallback_module.cc``; not yet seen on a GPU):

- The CUDA module loader (``ffi.Module.load_from_bytes.cuda``) lives in ``libtvm_runtime_cuda.so``, which
  ``import tvm`` loads as a side library. A process that must not import the compiler loads it here, as the
  runtime libraries are loaded in ``disk_cache._runtime``.
- A CUDA kernel built on a host without TVM's CUDA runtime (this machine, the CI) is stored as CUDA C source
  (format ``"cuda"``). The loader turns source into a binary when it loads, through the global function
  ``tvm_callback_cuda_compile``. While a pack loads, ``serve_binaries`` registers that function as a lookup:
  the source's sha256 -> the cubin that ``ea-ops compile`` built from exactly that source and the manifest
  checksums. Any other source raises, so loading a pack never compiles.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

COMPILE_CALLBACK = "tvm_callback_cuda_compile"
CUDA_LOADER = "ffi.Module.load_from_bytes.cuda"
_serve_lock = threading.Lock()


class CudaRuntimeError(RuntimeError):
    """TVM's CUDA runtime cannot be used in this process (why is in the message)."""


def source_sha256(source: str | bytes) -> str:
    """The key of a kernel's binary: sha256 of its CUDA C source as the loader hands it over (UTF-8)."""
    data = source.encode("utf-8") if isinstance(source, str) else bytes(source)
    return hashlib.sha256(data).hexdigest()


@functools.lru_cache(maxsize=1)
def load_runtime() -> None:
    """Make ``CUDA_LOADER`` available: TVM's runtime libraries and ``libtvm_runtime_cuda.so``, without importing
    the ``tvm`` package when it is not already imported. CudaRuntimeError says why it cannot be loaded."""
    import tvm_ffi

    from .disk_cache import _runtime

    _runtime()
    if tvm_ffi.get_global_func(CUDA_LOADER, allow_missing=True) is not None:
        return
    why = "it is not part of this TVM installation"
    if "tvm" in sys.modules:
        why = "`import tvm` did not register it (libtvm_runtime_cuda.so did not load)"
    else:
        spec = importlib.util.find_spec("tvm")
        if spec is not None and spec.origin:
            from tvm_ffi.libinfo import load_lib_ctypes

            try:  # as tvm/backend/cuda/__init__.py loads it: a side library, its symbols kept local
                load_lib_ctypes("tvm", "tvm_runtime_cuda", "RTLD_LOCAL",
                                extra_lib_paths=[Path(spec.origin).parent / "lib"])
            except (OSError, RuntimeError) as exc:  # e.g. libcuda.so.1 (the driver) or libcudart missing
                why = f"libtvm_runtime_cuda.so did not load ({exc})"
    if tvm_ffi.get_global_func(CUDA_LOADER, allow_missing=True) is None:
        load_runtime.cache_clear()  # a later call may succeed (a driver library put on the path)
        raise CudaRuntimeError(f"TVM's CUDA runtime is not available in this process: {why}")


@contextlib.contextmanager
def serve_binaries(binaries: dict[str, bytes]) -> Iterator[list[str]]:
    """Within the block, ``tvm_callback_cuda_compile(source)`` returns ``binaries[source_sha256(source)]`` and
    raises for any other source; afterwards the previous callback (TVM's compiler, if ``tvm`` registered it) is
    back, or none. Yields the list of sha256 keys served, in order (what the loader asked for)."""
    import tvm_ffi

    served: list[str] = []

    def lookup(source, *_target) -> bytes:  # TVM's own callback takes the source alone; a target would be ignored
        key = source_sha256(source)
        found = binaries.get(key)
        if found is None:
            raise RuntimeError(f"ea-ops: a kernel pack was asked to compile CUDA source it has no binary for "
                               f"(sha256 {key[:16]}...): loading a pack never compiles")
        served.append(key)
        return found

    with _serve_lock:
        previous = tvm_ffi.get_global_func(COMPILE_CALLBACK, allow_missing=True)
        tvm_ffi.register_global_func(COMPILE_CALLBACK, lookup, override=True)
        try:
            yield served
        finally:
            if previous is not None:
                tvm_ffi.register_global_func(COMPILE_CALLBACK, previous, override=True)
            else:  # `import tvm` registers its own later, and refuses to override an existing one
                tvm_ffi.get_global_func("ffi.FunctionRemoveGlobal")(COMPILE_CALLBACK)


def load_module(path: str, binaries: dict[str, bytes]):
    """The runtime module of a pack's CUDA library ``path`` (host code + CUDA module), its CUDA source turned
    into code by ``binaries`` only (``serve_binaries``)."""
    import tvm_ffi

    load_runtime()
    with serve_binaries(binaries):
        return tvm_ffi.load_module(path)
