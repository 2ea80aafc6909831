"""The target a Triton record is valid for: GPU name, compute capability, Triton version, kernel source hash.

Triton's own autotune cache keys by target architecture but not by GPU name (an H100 and an H200 share
entries, docs/findings.md), and not by our launch code; records here carry all four in their fingerprint, so
a record tuned on another GPU, Triton or kernel version is never applied. No Triton import here.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import re
from pathlib import Path

import torch

_HERE = Path(__file__).resolve().parent
# The files whose text decides what a configuration means: the kernels and the launch code (BLOCK_C, passes).
SOURCE_FILES = ("cuda_kernels.py", "launch.py", "plan.py")


def interpreting() -> bool:
    """Whether ``TRITON_INTERPRET`` asks for the interpreter (parsed as Triton parses booleans)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on", "y")


@functools.lru_cache(maxsize=1)
def triton_version() -> str | None:
    try:
        return importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def source_hash() -> str:
    """First 12 hex digits of the sha256 over the kernel and launch sources."""
    h = hashlib.sha256()
    for name in SOURCE_FILES:
        h.update(name.encode())
        h.update((_HERE / name).read_bytes())
    return h.hexdigest()[:12]


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]+", "_", text).strip("_") or "unknown"


def device_description(device: torch.device | str | None = None) -> dict:
    """``{"kind", "name", "capability", "triton", "source_hash"}`` of a CUDA device or the interpreter."""
    dev = torch.device(device) if device is not None else None
    if dev is None:
        dev = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    out: dict = {"triton": triton_version(), "source_hash": source_hash()}
    if dev.type == "cuda":
        idx = dev.index if dev.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(idx)
        out.update(kind="cuda", name=props.name, capability=[props.major, props.minor])
    else:
        out.update(kind="interpreter", name="triton-interpreter-cpu", capability=None)
    return out


def fingerprint_of(desc: dict) -> str:
    """``cuda-<GPU name>-sm<cc>-triton<version>-k<source hash>`` (or ``interpreter-...``), a safe name."""
    if desc["kind"] == "cuda":
        major, minor = desc["capability"]
        head = f"cuda-{_safe(desc['name'])}-sm{major}{minor}"
    else:
        head = "interpreter-cpu"
    return f"{head}-triton{_safe(str(desc['triton']))}-k{desc['source_hash']}"


@functools.lru_cache(maxsize=16)
def _fingerprint_cached(kind: str, index: int | None) -> str:
    dev = torch.device(kind, index) if index is not None else torch.device(kind)
    return fingerprint_of(device_description(dev))


def fingerprint(device: torch.device | str | None = None) -> str:
    """The record fingerprint of ``device`` (default: CUDA device 0 if present, else the interpreter)."""
    dev = torch.device(device) if device is not None else None
    if dev is None:
        dev = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return _fingerprint_cached(dev.type if dev.type == "cuda" else "cpu", dev.index if dev.type == "cuda" else None)
