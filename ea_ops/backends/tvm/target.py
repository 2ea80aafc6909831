"""This machine as a TVM target, and its fingerprint (the name of its records folder).

The fingerprint is computed without importing TVM (``prefers`` runs on every ``backend="auto"`` call):
CPU architecture, vendor/family/model (what LLVM's ``mcpu`` is derived from), the widest vector ISA and
the usable core count, e.g. ``x86_64-amd-f25m17-avx512-2c``. GPUs: ``cuda-sm_90``.
"""

from __future__ import annotations

import functools
import os
import platform
import re

# Widest first: the first flag present names the ISA level.
_ISA_LEVELS = (("avx512f", "avx512"), ("avx2", "avx2"), ("avx", "avx"), ("sse4_2", "sse4"),
               ("sve", "sve"), ("asimd", "neon"), ("neon", "neon"))


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@functools.lru_cache(maxsize=1)
def cpu_info() -> dict[str, str]:
    """``arch, vendor, family, model, isa`` from ``/proc/cpuinfo`` (best effort off Linux)."""
    info = {"arch": platform.machine() or "unknown", "vendor": "unknown", "family": "", "model": "",
            "isa": "generic"}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            text = fh.read(1 << 16)
    except OSError:
        return info
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if ":" not in line:
            if fields:
                break  # the first processor is enough
            continue
        key, _, val = line.partition(":")
        fields.setdefault(key.strip().lower(), val.strip())
    vendor = fields.get("vendor_id", fields.get("cpu implementer", "unknown")).lower()
    info["vendor"] = {"authenticamd": "amd", "genuineintel": "intel"}.get(vendor, re.sub(r"\W", "", vendor))
    info["family"] = fields.get("cpu family", fields.get("cpu architecture", ""))
    info["model"] = fields.get("model", fields.get("cpu part", ""))
    flags = set((fields.get("flags") or fields.get("features") or "").split())
    info["isa"] = next((name for flag, name in _ISA_LEVELS if flag in flags), "generic")
    return info


def cpu_fingerprint() -> str:
    i = cpu_info()
    fam = f"f{i['family']}m{i['model']}" if i["family"] or i["model"] else "unknown"
    text = f"{i['arch']}-{i['vendor']}-{fam}-{i['isa']}-{usable_cores()}c"
    return re.sub(r"[^A-Za-z0-9_.\-]", "", text)


def cuda_fingerprint(arch: str) -> str:
    """``arch`` like ``sm_90`` -> ``cuda-sm_90``."""
    if not re.fullmatch(r"sm_\d+[a-z]?", arch):
        raise ValueError(f"CUDA arch must look like sm_90, got {arch!r}")
    return f"cuda-{arch}"


@functools.lru_cache(maxsize=1)
def host_mcpu() -> str:
    """LLVM's name for this CPU (the default LLVM target is generic x86-64: SSE2 only)."""
    from tvm.target import codegen

    return str(codegen.llvm_get_system_cpu())


def cpu_target_dict(mcpu: str | None = None, cores: int | None = None) -> dict:
    return {"kind": "llvm", "mcpu": mcpu or host_mcpu(), "num-cores": int(cores or usable_cores())}


@functools.lru_cache(maxsize=4)
def cpu_target(mcpu: str | None = None, cores: int | None = None):
    import tvm

    return tvm.target.Target(cpu_target_dict(mcpu, cores))


def cuda_target(arch: str = "sm_90"):
    import tvm

    cuda_fingerprint(arch)
    return tvm.target.Target({"kind": "cuda", "arch": arch, "max_num_threads": 1024,
                              "thread_warp_size": 32})


def describe_cpu() -> dict:
    """What ``ea-ops info`` shows for the CPU target."""
    out = {"fingerprint": cpu_fingerprint(), **{f"cpu_{k}": v for k, v in cpu_info().items()}}
    try:
        out["mcpu"] = host_mcpu()
    except ImportError:
        pass
    out["cores"] = usable_cores()
    return out
