"""``backend="tvm"``: the dispatch interface of ``ea_ops.dispatch`` over the TVM kernels.

Importing this module does not import TVM (``backend="auto"`` asks ``prefers`` on every call): TVM is
imported when a kernel is first built. CPU tensors run on LLVM code for this CPU; ``auto`` takes this backend
for every CPU call it supports. CUDA tensors run TVM's CUDA kernels for their GPU's arch (a loaded
``cuda:sm_XX`` pack's, else built in this process) with ``backend="tvm"`` only: ``auto`` keeps Triton on CUDA,
so the two can be compared on the same GPU.
"""

from __future__ import annotations

import importlib.util

import torch

from ..common import KERNEL_DTYPES, run_attention, run_step
from . import tuned
from .target import cpu_fingerprint

NAME = "tvm"
EXTRA = "tvm"
_FLOATS = tuple(KERNEL_DTYPES)
_MAX_ELEMS = 2**31 - 1  # the kernels index with int32


def unavailable_reason() -> str | None:
    for mod in ("tvm", "tvm_ffi"):
        try:
            found = importlib.util.find_spec(mod) is not None
        except (ImportError, ValueError) as exc:
            return f"{mod} cannot be imported ({exc})"
        if not found:
            return f"{mod} is not installed"
    return None


def supports(q: torch.Tensor, *, causal: bool, order: int, needs_grad: bool) -> str | None:
    if q.device.type not in ("cpu", "cuda"):
        return f"the TVM backend runs CPU and CUDA tensors, got {q.device.type}"
    if q.device.type == "cuda" and not torch.cuda.is_available():
        return "CUDA tensors need a CUDA build of torch and a GPU (torch.cuda.is_available() is False)"
    if q.dtype not in _FLOATS:
        return f"dtype {q.dtype} (the TVM kernels take float32, bfloat16, float16)"
    if q.numel() > _MAX_ELEMS:
        return f"q has {q.numel()} elements, above 2^31 - 1 (the kernels index with int32)"
    # q [B, T, H, D] or a step's q_t [B, H, D]; with cu_seqlens each sequence runs on its own state rows
    B, H, D = q.shape[0], q.shape[-2], q.shape[-1]
    if B * H * (order + 1) * D > _MAX_ELEMS:
        return (f"the state [B, H, order+1, D] = [{B}, {H}, {order + 1}, {D}] has {B * H * (order + 1) * D} "
                "elements, above 2^31 - 1 (the kernels index with int32)")
    return None


def prefers(q: torch.Tensor, order: int) -> bool:
    """On any CPU: the compiled kernels run every supported call, with a tuned record where one applies
    (``tuned.candidates``) and the default schedule otherwise. No file is read here. Never on CUDA: there
    ``auto`` takes Triton (its kernels are tuned for GPUs; TVM's run untuned defaults)."""
    return q.device.type == "cpu" and q.dtype in _FLOATS and q.dim() in (3, 4)


def explain(q: torch.Tensor, *, order: int, causal: bool, needs_grad: bool) -> dict:
    """The schedule of every kernel this call runs (forward and, with ``needs_grad``, backward; a step for
    ``q_t [B, H, D]``): its knobs and where they come from (a record of this CPU, a transferred record of
    another fingerprint, or the default). Reads the records; imports TVM only to validate knobs."""
    from .build import choose_cpu_record

    H, D = q.shape[-2], q.shape[-1]
    T = 1 if q.dim() == 3 else q.shape[1]
    dtype = str(q.dtype).removeprefix("torch.")
    kernels = ["step"] if q.dim() == 3 else ["forward"] + (["backward"] if needs_grad else [])
    if q.device.type == "cuda":
        return _explain_cuda(q, kernels, order=order, causal=causal, dtype=dtype)
    out: dict = {"fingerprint": cpu_fingerprint(), "kernels": {}}
    for kernel in kernels:
        cfg, source, rec = choose_cpu_record(kernel, True if kernel == "step" else causal, order, dtype, H, D, T)
        entry: dict = {"config": cfg, "source": source}
        if rec is not None:
            entry["record"] = {"fingerprint": rec["fingerprint"], "T_bucket": rec["workload"].get("T_bucket"),
                               "latency_us": rec["latency_us"]}
        out["kernels"][kernel] = entry
    return out


def _explain_cuda(q: torch.Tensor, kernels: list[str], *, order: int, causal: bool, dtype: str) -> dict:
    """``explain`` on a GPU: the untuned default schedule of each kernel, from a loaded pack or built here."""
    from . import packs
    from .cuda_device import default_config, device_arch
    from .target import cuda_fingerprint

    arch = device_arch(q.device)
    H, D = q.shape[-2], q.shape[-1]
    out: dict = {"fingerprint": cuda_fingerprint(arch), "kernels": {}}
    for kernel in kernels:
        c = True if kernel == "step" else causal
        cfg = default_config(kernel, c, q.shape[0] * H * D)
        hit = packs.lookup(kernel, c, order, dtype, H, D, target=arch, variant=cfg["variant"])
        out["kernels"][kernel] = {"config": cfg, "source": "default",
                                  "code": "pack" if hit is not None else "built in this process"}
    return out


WRITES_OUT = True  # ``attention(..., out=)``: the forward kernel writes the caller's buffer (api.ea_attention)


def attention(q, k, v, **kw):
    from . import ops  # imports the backend's library: only when a call runs

    return run_attention(ops, q, k, v, **kw)


def recurrent_step(q, k, v, state, **kw):
    from . import ops

    return run_step(ops, q, k, v, state, **kw)


def stepper(state, *, order: int, scale: float, dtype: torch.dtype):
    """``step(q, k, v) -> o`` updating ``state`` (contiguous float32) in place: ``ea_ops.EADecoder``'s fast path."""
    from . import ops

    return ops.stepper(state.S, state.Z, state.m, order=order, scale=scale, dtype=dtype)


def describe() -> dict:
    """Target fingerprint, records found for it and for related CPUs (``tuned.related_fingerprints``), the GPUs
    (by arch), the kernel packs loaded, the compiled-kernel cache on disk, and kernels built or loaded in this
    process."""
    from . import build, cuda_device, disk_cache, packs
    from .target import describe_cpu

    out = describe_cpu()
    recs = tuned.load(cpu_fingerprint())
    out["records"] = len(recs)
    out["tuned"] = sorted({f"{r['kernel']['name']}/{'causal' if r['kernel']['causal'] else 'full'}"
                           f"/t{r['kernel']['order']}/{r['kernel']['dtype']}/H{r['workload'].get('H')}"
                           f"xD{r['workload'].get('D')}" for r in recs})
    others = [fp for fp in tuned.related_fingerprints() if fp != cpu_fingerprint()]
    out["transferable_records"] = {fp: len(tuned.load(fp)) for fp in others}
    out["cuda_devices"] = cuda_device.visible_archs()  # what backend="tvm" runs CUDA kernels for (by arch)
    out["packs_loaded"] = [{"folder": str(p.folder), "target": p.target, "kernels": len(p)} for p in packs.loaded()]
    out["built_in_process"] = len(build.BUILD_LOG)
    out["loaded_from_disk_in_process"] = len(build.LOAD_LOG)
    out.update(disk_cache.describe())
    return out
