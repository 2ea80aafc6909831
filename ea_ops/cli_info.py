"""``ea-ops info``: what this machine can run."""

from __future__ import annotations

import argparse
import json
import platform

import torch

from . import __version__, dispatch


def collect() -> dict:
    info: dict = {
        "ea_ops": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "backends": {},
    }
    for name, why in dispatch.available().items():
        entry: dict = {"available": why is None}
        if why is not None:
            entry["reason"] = why
        else:
            mod = dispatch.load(name)
            describe = getattr(mod, "describe", None)
            if describe is not None:
                entry.update(describe())
        info["backends"][name] = entry
    return info


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="ea-ops info", description="Backends, target fingerprints, records.")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    info = collect()
    if args.json:
        print(json.dumps(info, indent=1, sort_keys=True))
        return 0
    print(f"ea-ops {info['ea_ops']}  python {info['python']}  torch {info['torch']}"
          f"  cuda {'yes' if info['cuda_available'] else 'no'}")
    for name, entry in info["backends"].items():
        if not entry["available"]:
            print(f"  {name:<7} unavailable: {entry['reason']}")
            continue
        extra = {k: v for k, v in entry.items() if k != "available"}
        details = "  ".join(f"{k}={v}" for k, v in extra.items())
        print(f"  {name:<7} available  {details}".rstrip())
    return 0
