"""CUDA devices as the TVM backend sees them: a tensor's GPU -> its sm arch (the key of its kernels), a CUDA
pack's arch against the GPUs of this process, and the stream the kernels launch on.

Small functions of plain values where possible, so that the choices are tested without a GPU
(tests/ea_ops/test_tvm_cuda.py). Imports no TVM at import time.
"""

from __future__ import annotations

import re

import torch

from ..common import CHUNKED, LANES_TARGET, SCAN

_ARCH = re.compile(r"sm_(\d+)([a-z]?)")


def arch_of(capability: tuple[int, int]) -> str:
    """``(9, 0)`` -> ``"sm_90"``: the CUDA arch of a compute capability, as packs and targets name it."""
    major, minor = capability
    if not (isinstance(major, int) and isinstance(minor, int)) or major < 1 or not 0 <= minor <= 9:
        raise ValueError(f"a compute capability is (major, minor) with major >= 1 and minor 0-9, got {capability!r}")
    return f"sm_{major}{minor}"


def capability_of(arch: str) -> tuple[int, int]:
    """``"sm_90"`` -> ``(9, 0)`` (``"sm_90a"`` too: its feature suffix runs only on that exact capability)."""
    m = _ARCH.fullmatch(arch) if isinstance(arch, str) else None
    if m is None or len(m.group(1)) < 2:
        raise ValueError(f"a CUDA arch looks like sm_90, got {arch!r}")
    digits = m.group(1)
    return int(digits[:-1]), int(digits[-1])


def device_index(device: torch.device) -> int:
    """The CUDA index of ``device`` (``cuda`` without one is the current device)."""
    if device.type != "cuda":
        raise ValueError(f"not a CUDA device: {device}")
    return torch.cuda.current_device() if device.index is None else int(device.index)


def device_arch(device: torch.device) -> str:
    """The sm arch of the GPU ``device`` is on, e.g. ``sm_90`` for an H100 or H200."""
    return arch_of(tuple(torch.cuda.get_device_capability(device_index(device))))


def visible_archs() -> dict[str, str]:
    """``{"cuda:0": "sm_90", ...}`` for the GPUs this process sees (empty without CUDA)."""
    if not torch.cuda.is_available():
        return {}
    return {f"cuda:{i}": arch_of(tuple(torch.cuda.get_device_capability(i))) for i in range(torch.cuda.device_count())}


def pack_problem(arch: object, visible: dict[str, str]) -> str | None:
    """Why a CUDA pack built for ``arch`` cannot run on the GPUs ``visible`` (``visible_archs``), or None.

    A cubin is machine code for one capability: ``sm_90`` code runs on capability 9.0, not on 8.0 or 10.0
    (forward compatibility would need PTX JIT-compiled by the driver, which a pack does not rely on)."""
    try:
        capability_of(arch)  # type: ignore[arg-type]
    except ValueError:
        return f"its target arch {arch!r} is not a CUDA arch like sm_90"
    if not visible:
        return f"it holds CUDA kernels for {arch} and this process sees no CUDA device"
    if arch in visible.values():
        return None
    here = ", ".join(f"{d} is {a}" for d, a in visible.items())
    return (f"it was built for {arch} and no GPU here is ({here}): build it for this GPU with "
            f"`ea-ops compile --backend tvm --target cuda:{next(iter(visible.values()))}`")


def target_of(device: torch.device) -> str:
    """The kernel target a tensor on ``device`` runs: ``"cpu"``, or its GPU's arch (``"sm_90"``)."""
    if device.type == "cpu":
        return "cpu"
    if device.type == "cuda":
        return device_arch(device)
    raise ValueError(f"the TVM backend runs CPU and CUDA tensors, got {device.type}")


def stream_handle(device: torch.device) -> int:
    """The ``cudaStream_t`` (as an int) of torch's current stream on ``device``: where the kernels launch."""
    return int(torch.cuda.current_stream(device_index(device)).cuda_stream)


def launch(fn, device: torch.device, args: tuple) -> None:
    """``fn(*args)`` on ``device``'s GPU and torch's current stream there.

    tvm_ffi already sets its environment stream from the first CUDA torch tensor of a call (tvm_ffi 0.1.14,
    ``cython/function.pxi``); the explicit context makes that the rule here whatever the tvm_ffi version, and
    the device guard makes TVM's ``cudaGetDevice`` agree with the tensors' GPU."""
    import tvm_ffi

    idx = device_index(device)
    with torch.cuda.device(idx), tvm_ffi.use_raw_stream(tvm_ffi.device("cuda", idx), stream_handle(device)):
        fn(*args)


def default_config(kernel: str, causal: bool, channels: int | None = None) -> dict:
    """The untuned CUDA schedule (``cuda_kernels``): chunked for the causal forward when there are fewer than 2^17
    channels ``B*H*D`` (too few threads to hide memory latency), else one thread per channel."""
    chunked = kernel == "forward" and causal and (channels is None or channels < LANES_TARGET)
    return {"variant": CHUNKED if chunked else SCAN, "threads": 128, "chunk": 64}
