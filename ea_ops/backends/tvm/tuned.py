"""Tuned records of the TVM backend at run time: which record applies to a call (no TVM import here).

Records (``ea_ops.records`` schema v1) live in ``<root>/tvm/<fingerprint>/records.json``; for a CPU record
``config`` holds the knobs of ``ea_ops.backends.tvm.schedule`` and ``workload`` the tuned shape
``{"B", "T", "H", "D", "T_bucket"}``. A record applies to a call with the same kernel, causality, order,
dtype, ``H`` and ``D``; among several, the one whose ``T_bucket`` is nearest (in log2) to the call's.
The MetaSchedule database the tuner kept sits in the same folder; the runtime needs only the knobs.
"""

from __future__ import annotations

import math
import warnings

from ... import records as _records
from .target import cpu_fingerprint

BACKEND = "tvm"
_cache: dict[str, tuple[tuple, list[dict]]] = {}
_warned: set[str] = set()


def t_bucket(T: int) -> int:
    """``T`` rounded up to a power of two (at least 1)."""
    return 1 << max(0, math.ceil(math.log2(max(T, 1))))


def load(fingerprint: str | None = None) -> list[dict]:
    """Valid records for this target (user cache first), re-read when a records file changes."""
    fp = fingerprint or cpu_fingerprint()
    stamp = _records.records_stamp(BACKEND, fp)
    hit = _cache.get(fp)
    if hit is None or hit[0] != stamp:
        hit = (stamp, _records.load_records(BACKEND, fp))
        _cache[fp] = hit
    return hit[1]


def _matches(rec: dict, kernel: str, causal: bool, order: int, dtype: str, H: int, D: int) -> bool:
    k, w = rec["kernel"], rec["workload"]
    return (k["name"] == kernel and k["causal"] == causal and k["order"] == order and k["dtype"] == dtype
            and w.get("H") == H and w.get("D") == D)


def candidates(kernel: str, causal: bool, order: int, dtype: str, H: int, D: int, T: int,
               fingerprint: str | None = None) -> list[dict]:
    """Matching records, best first (nearest ``T_bucket``; the user cache wins ties)."""
    found = [r for r in load(fingerprint) if _matches(r, kernel, causal, order, dtype, H, D)]
    want = math.log2(t_bucket(T))

    def dist(rec):
        tb = rec["workload"].get("T_bucket")
        return abs(math.log2(tb) - want) if isinstance(tb, int) and tb > 0 else math.inf

    return sorted(found, key=dist)  # stable: user cache records come first


def has_forward_record(order: int, dtype: str, H: int, D: int, fingerprint: str | None = None) -> bool:
    return any(_matches(r, "forward", r["kernel"]["causal"], order, dtype, H, D) for r in load(fingerprint))


def warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)
