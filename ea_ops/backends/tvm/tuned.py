"""Tuned records of the TVM backend at run time: which record applies to a call (no TVM import here).

Records (``ea_ops.records`` schema v1) live in ``<root>/tvm/<fingerprint>/records.json``; for a CPU record
``config`` holds the knobs of ``ea_ops.backends.tvm.schedule`` and ``workload`` the tuned shape
``{"B", "T", "H", "D", "T_bucket"}``. A record applies to a call with the same kernel, causality, order,
dtype, ``H`` and ``D``. Records of this CPU's fingerprint come first; after them, records of other
fingerprints of the same architecture and vector ISA (another vendor, model or core count: the knobs are
loop orders, vector widths and unrolls, which carry over), nearest fingerprint first (``fingerprint_distance``).
Within one fingerprint the record whose ``T_bucket`` is nearest (in log2) to the call's wins, and none applies
more than ``MAX_T_DISTANCE`` buckets away: the best loop order at 4k falls off a cliff beyond (a record tuned at
T = 4096 chose ``d_t``: 1.9x slower per token at 16k and 3.3x at 64k than the ``blocked`` default), so a call
that far from every record runs the default schedule.
The MetaSchedule database the tuner kept sits in the same folder; the runtime needs only the knobs.
"""

from __future__ import annotations

import functools
import math
import os
import time
from pathlib import Path

from ... import records as _records
from ...records import t_bucket
from .target import cpu_fingerprint

BACKEND = "tvm"
MAX_T_DISTANCE = 1  # in log2 buckets: a record applies from half to twice its tuned length


def parse_fingerprint(fp: str) -> dict[str, str] | None:
    """``x86_64-amd-f25m17-avx512-2c`` -> ``{arch, vendor, family_model, isa, cores}``; None if not of that form."""
    parts = fp.split("-")
    if len(parts) != 5 or not parts[4].endswith("c") or not parts[4][:-1].isdigit():
        return None
    arch, vendor, fam, isa, cores = parts
    return {"arch": arch, "vendor": vendor, "family_model": fam, "isa": isa, "cores": cores[:-1]}


def fingerprint_distance(fp: str, here: str) -> float | None:
    """How far the records of ``fp`` are from this CPU ``here``: 0 for the same fingerprint, None when they do
    not transfer (another architecture or vector ISA: other instructions, other vector widths).

    Otherwise the sum of: 4 for another vendor, 2 for another family/model, and the log2 ratio of the core
    counts (the thread pool's split of channels is what the core count changes).
    """
    if fp == here:
        return 0.0
    a, b = parse_fingerprint(fp), parse_fingerprint(here)
    if a is None or b is None or a["arch"] != b["arch"] or a["isa"] != b["isa"]:
        return None
    d = 4.0 * (a["vendor"] != b["vendor"]) + 2.0 * (a["family_model"] != b["family_model"])
    return d + abs(math.log2(max(1, int(a["cores"]))) - math.log2(max(1, int(b["cores"]))))


@functools.lru_cache(maxsize=16)
def _backend_roots(root_pair: tuple[Path, ...]) -> tuple[Path, ...]:
    return tuple(root / BACKEND for root in root_pair)


def _roots() -> tuple[Path, ...]:
    """The ``<root>/tvm`` folders, user cache first (``stamp`` asks on every kernel launch)."""
    return _backend_roots(_records.roots())


def _listing_stamp(roots: tuple[Path, ...]) -> tuple:
    """Modification times of the ``<root>/tvm`` folders: they change when a fingerprint folder appears."""
    out = []
    for d in roots:
        try:
            out.append(os.stat(d).st_mtime_ns)
        except OSError:
            out.append(None)
    return tuple(out)


_related_cache: dict[tuple, list[str]] = {}


def related_fingerprints(here: str | None = None) -> list[str]:
    """Fingerprints with a records folder that transfer to ``here`` (this CPU), nearest first, ``here``
    included first whether or not it has records. Re-listed when a ``<root>/tvm`` folder changes."""
    here = here or cpu_fingerprint()
    roots = _roots()
    key = (here, roots, _listing_stamp(roots))
    hit = _related_cache.get(key)
    if hit is not None:
        return hit
    found: dict[str, float] = {here: 0.0}
    for root in roots:
        try:
            names = [e.name for e in os.scandir(root) if e.is_dir(follow_symlinks=False)]
        except OSError:
            continue
        for name in names:
            try:
                _records.check_name(name, "fingerprint")
            except _records.RecordError:
                continue
            d = fingerprint_distance(name, here)
            if d is not None:
                found[name] = d
    ranked = sorted(found, key=lambda fp: (found[fp], fp))
    _related_cache.clear()  # one listing per environment is enough
    _related_cache[key] = ranked
    return ranked


# How long a stamp stands before the files are looked at again: every kernel launch asks (a decode step
# too), and the stat calls of two roots and every related fingerprint cost ~40 us. Writes made by this
# process (``records.WRITES``) and another environment are seen at once; another process's within this time.
STAMP_TTL_S = 0.5
_stamp_cache: list = [None, None, 0.0]  # [key, stamp, monotonic time]


def stamp() -> tuple:
    """A cache key that changes whenever a records file this CPU may use changes (or a folder appears)."""
    roots = _roots()
    now = time.monotonic()
    key = (roots, _records.WRITES[0])
    if _stamp_cache[0] == key and now - _stamp_cache[2] < STAMP_TTL_S:
        return _stamp_cache[1]
    out = (_listing_stamp(roots), *(_records.records_stamp(BACKEND, fp) for fp in related_fingerprints()))
    _stamp_cache[:] = [key, out, now]
    return out


def load(fingerprint: str | None = None) -> list[dict]:
    """Valid records of one fingerprint (default: this CPU's), user cache first, re-read when a file changes."""
    return _records.cached_records(BACKEND, fingerprint or cpu_fingerprint())


def _matches(rec: dict, kernel: str, causal: bool, order: int, dtype: str, H: int, D: int) -> bool:
    k, w = rec["kernel"], rec["workload"]
    return (k["name"] == kernel and k["causal"] == causal and k["order"] == order and k["dtype"] == dtype
            and w.get("H") == H and w.get("D") == D)


def candidates(kernel: str, causal: bool, order: int, dtype: str, H: int, D: int, T: int,
               fingerprint: str | None = None) -> list[dict]:
    """Matching records, best first: this CPU's fingerprint (or ``fingerprint``), then the transferable ones,
    nearest fingerprint first; within one, the nearest ``T_bucket`` (the user cache wins ties), none farther than
    ``MAX_T_DISTANCE`` buckets."""
    want = t_bucket(T)
    fps = [fingerprint] if fingerprint is not None else related_fingerprints()
    out: list[dict] = []
    for fp in fps:
        found = [(_records.log2_distance(r["workload"].get("T_bucket"), want), r) for r in load(fp)
                 if _matches(r, kernel, causal, order, dtype, H, D)]
        # stable sort: user cache records come first
        out.extend(r for dist, r in sorted(found, key=lambda dr: dr[0]) if dist <= MAX_T_DISTANCE)
    return out
