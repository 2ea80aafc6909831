"""``ea_ops.load_kernels``: run a kernel pack, TVM kernels that ``ea-ops compile`` built for this kind of host
(a CPU pack) or for a GPU of this host (a ``cuda:sm_XX`` pack: run by ``backend="tvm"`` on CUDA tensors).

Loading a pack runs its machine code: naming its folder is an explicit act of trust in whoever wrote it
(``ea_ops/backends/tvm/packs.py`` says what is checked, and what the checks cannot vouch for).
"""

from __future__ import annotations

import os

from .errors import BackendUnavailableError


def load_kernels(folder: str | os.PathLike) -> dict:
    """Verify the pack in ``folder`` and make the TVM backend run its kernels from now on in this process, for
    the shapes, orders and dtypes it holds, at any B and T; nothing is compiled. ``EA_OPS_KERNELS=DIR`` does the
    same at the first TVM call. A CUDA pack needs a GPU of its arch (``sm_90``: compute capability 9.0).
    Returns ``{"folder", "target", "kernels"}``; raises ``KernelPackError`` (a ``ValueError``) naming what was
    wrong with a pack that is malformed, altered, or built for another host, GPU or TVM version."""
    if not isinstance(folder, (str, os.PathLike)):
        raise TypeError(f"folder must be a path, got {type(folder).__name__}")
    from .backends.tvm.backend import unavailable_reason

    why = unavailable_reason()
    if why is not None:
        raise BackendUnavailableError(f"kernel packs run on the TVM backend, which is unavailable: {why}")
    from .backends.tvm import packs

    pack = packs.load(folder)
    keys = sorted(_name(*key) for key in pack.kernels)
    return {"folder": str(pack.folder), "target": pack.target, "kernels": keys}


def _name(kernel: str, causal: bool, order: int, dtype: str, H: int, D: int, *cuda: str) -> str:
    """``forward-causal-t6-float32-H8D64``; a CUDA kernel adds its arch and variant (``-sm_90-chunked``)."""
    return "-".join([kernel, "causal" if causal else "full", f"t{order}", dtype, f"H{H}D{D}", *map(str, cuda)])
