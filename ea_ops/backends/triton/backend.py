"""``backend="triton"``: the dispatch interface of ``ea_ops.dispatch`` over the Triton kernels.

CUDA tensors run compiled kernels; CPU tensors run the same kernels under Triton's interpreter when
``TRITON_INTERPRET=1`` was set before Triton was imported (how CI checks them). Importing this module
does not import Triton (``backend="auto"`` asks ``prefers`` on every call); the kernels module imports it.
"""

from __future__ import annotations

import importlib.util

import torch

from ..common import KERNEL_DTYPES, run_attention, run_step
from .target import interpreting

NAME = "triton"
EXTRA = "triton"
MAX_ORDER = 14  # T1P = 16 Taylor terms per lane; every shipped configuration builds without spills to here
_FLOATS = tuple(KERNEL_DTYPES)
_MAX_ROWS = 2**31 - 1  # work tables are int32 rows (element offsets are int64 in the kernels)
# The channel blocks are the launch grid's second dimension, at most 65535 programs on CUDA, of at least 32
# channels each (BLOCK_C = 32 * num_warps, num_warps >= 1).
_MAX_CHANNELS = 65535 * 32


def unavailable_reason() -> str | None:
    try:
        found = importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError) as exc:
        return f"triton cannot be imported ({exc})"
    return None if found else "triton is not installed"


def _interpreter_active() -> bool:
    """The kernels were built for the interpreter (the environment variable alone is not enough:
    Triton reads it when a kernel is defined)."""
    if not interpreting():
        return False
    from triton.runtime.interpreter import InterpretedFunction

    from . import cuda_kernels

    return isinstance(cuda_kernels.ea_fwd_scan, InterpretedFunction)


def supports(q: torch.Tensor, *, causal: bool, order: int, needs_grad: bool) -> str | None:
    if q.dtype not in _FLOATS:
        return f"dtype {q.dtype} (the Triton kernels take float32, bfloat16 or float16)"
    if order > MAX_ORDER:
        return f"order {order} > {MAX_ORDER} (the Triton kernels keep {MAX_ORDER + 2} Taylor terms per lane)"
    rows = q.shape[0] * q.shape[1] if q.dim() == 4 else q.shape[0]  # q [B, T, H, D] or a step's q_t [B, H, D]
    if rows > _MAX_ROWS:
        return f"{rows} positions (B*T, or B for a step), above 2^31 - 1 (the work tables are int32)"
    if q.shape[-2] * q.shape[-1] > _MAX_CHANNELS:
        return (f"H*D = {q.shape[-2] * q.shape[-1]} channels per position, above {_MAX_CHANNELS} (65535 launch "
                "blocks of 32 channels)")
    if q.device.type == "cuda":
        return None
    if q.device.type == "cpu":
        if not interpreting():
            return ("CPU tensors run the Triton kernels only under TRITON_INTERPRET=1 (set before triton is "
                    "imported); use CUDA tensors, or backend='torch' / 'tvm' on the CPU")
        if not _interpreter_active():
            return "TRITON_INTERPRET=1 was set after the Triton kernels were defined; set it before importing triton"
        return None
    return f"device {q.device.type} (the Triton backend runs CUDA tensors, or CPU tensors under TRITON_INTERPRET=1)"


def prefers(q: torch.Tensor, order: int) -> bool:
    """On CUDA, always (it is the GPU backend); never on the CPU (the interpreter is for tests)."""
    return q.device.type == "cuda" and q.dtype in _FLOATS and order <= MAX_ORDER


def explain(q: torch.Tensor, *, order: int, causal: bool, needs_grad: bool) -> dict:
    """The configuration of every kernel this call runs (a tuned record for this device, else the default)."""
    from . import configs
    from .target import fingerprint

    fp = fingerprint(q.device)
    HD = q.shape[-2] * q.shape[-1]
    if q.dim() == 3:
        n_seqs, rows, kernels = q.shape[0], q.shape[0], ["step"]
    else:
        n_seqs, rows = q.shape[0], q.shape[0] * q.shape[1]
        kernels = ["forward"] + (["backward"] if needs_grad else [])
    dtype = str(q.dtype).removeprefix("torch.")
    out: dict = {"fingerprint": fp, "kernels": {}}
    for kernel in kernels:
        cfg = configs.choose(kernel, causal=causal or kernel == "step", order=order, dtype=dtype, HD=HD,
                             n_seqs=n_seqs, rows=rows, fp=fp)
        hit = configs.from_records(kernel, causal=causal or kernel == "step", order=order, dtype=dtype, HD=HD,
                                   n_seqs=n_seqs, rows=rows, fp=fp)
        out["kernels"][kernel] = {"config": cfg, "source": "record" if hit == cfg else "default"}
    return out


def attention(q, k, v, **kw):
    from . import ops  # imports the backend's library: only when a call runs

    return run_attention(ops, q, k, v, **kw)


def recurrent_step(q, k, v, state, **kw):
    from . import ops

    return run_step(ops, q, k, v, state, **kw)


def describe() -> dict:
    """Triton version, mode, this target's fingerprint and how many tuned records exist for it."""
    from . import configs
    from .target import fingerprint, triton_version

    out: dict = {"triton": triton_version(), "interpreter": interpreting()}
    if torch.cuda.is_available() or interpreting():
        fp = fingerprint()
        out["fingerprint"] = fp
        out["records"] = len(configs.load(fp))
    return out
