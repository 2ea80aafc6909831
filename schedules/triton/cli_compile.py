"""``ea-ops compile --backend triton --target cuda:sm_90 --out DIR``: ahead-of-time PTX and cubins.

Builds every kernel launch of ``ea_ops.backends.triton.launch`` for every shipped ``num_warps`` and the requested
orders and dtypes, without a GPU, and writes ``<name>.ptx``, ``<name>.cubin`` and ``manifest.json``
(kernel, constexprs, signature, entry name, registers/spills from ``cuobjdump``, sha256 of each file,
versions). The manifest is data; nothing here loads the binaries.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from ea_ops import records
from ea_ops.backends.triton.target import interpreting, source_hash, triton_version
from ea_ops.outdir import prepare_out_dir
from ea_ops.progress import progress

from . import aot
from .configs import all_warps

MANIFEST = "manifest.json"


def _write(path: Path, data: bytes) -> str:
    """Write ``data`` atomically (temp file + rename); its sha256."""
    records.atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def build_all(arch: int, orders: list[int], dtypes: list[str], out: Path, *, warps: tuple[int, ...] | None = None,
              quiet: bool = False) -> dict:
    """Compile, write the files and the manifest; returns the manifest."""
    builds = aot.builds_for(orders, dtypes, list(warps or all_warps()), [arch])
    names = [f"{b.name}.{ext}" for b in builds for ext in ("ptx", "cubin")]
    out = prepare_out_dir(out, [*names, MANIFEST])  # before the first (slow) build
    entries = []
    t0 = time.monotonic()
    for b in progress(builds, total=len(builds), desc=f"compile sm_{arch}", disable=quiet):
        ck = aot.compile_build(b)
        ptx = ck.asm["ptx"].encode() if isinstance(ck.asm["ptx"], str) else ck.asm["ptx"]
        cubin = ck.asm["cubin"]
        usage = aot.resource_usage(cubin) if aot.cuobjdump_path() else None
        meta = ck.metadata
        entries.append({
            "name": b.name, "kernel": b.kernel, "flags": dict(b.flags), "order": b.order, "dtype": b.dtype,
            "num_warps": b.num_warps, "constexprs": aot.constexprs_for(b),
            "entry": getattr(meta, "name", None), "shared_bytes": getattr(meta, "shared", None),
            "ptx": f"{b.name}.ptx", "ptx_sha256": _write(out / f"{b.name}.ptx", ptx),
            "cubin": f"{b.name}.cubin", "cubin_sha256": _write(out / f"{b.name}.cubin", cubin),
            "resource_usage": usage,
        })
    manifest = {
        "schema_version": 1, "backend": "triton", "target": f"cuda:sm_{arch}", "arch": arch,
        "triton": triton_version(), "source_hash": source_hash(), "orders": orders, "dtypes": dtypes,
        "seconds": round(time.monotonic() - t0, 2), "kernels": entries,
    }
    records.atomic_write_json(out / MANIFEST, manifest)
    return manifest


def run(args) -> int:
    if interpreting():
        raise SystemExit("ea-ops compile --backend triton: unset TRITON_INTERPRET (ahead-of-time builds need "
                         "compiled kernels, not the interpreter)")
    try:
        arch = aot.parse_target(args.target)
    except ValueError as exc:
        raise SystemExit(f"--target: {exc} (Triton builds CUDA code only)") from None
    man = build_all(arch, args.orders, args.dtypes, Path(args.out))
    spills = [k["name"] for k in man["kernels"] if k["resource_usage"] and
              (k["resource_usage"]["local"] or k["resource_usage"]["stack"])]
    regs = [k["resource_usage"]["registers"] for k in man["kernels"] if k["resource_usage"]]
    print(json.dumps({"out": str(args.out), "kernels": len(man["kernels"]), "seconds": man["seconds"],
                      "max_registers": max(regs) if regs else None, "spilling": spills}, indent=1))
    return 1 if spills else 0
