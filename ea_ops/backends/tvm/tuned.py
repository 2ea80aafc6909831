"""Tuned records of the TVM backend at run time: which record applies to a call (no TVM import here).

Records (``ea_ops.records`` schema v1) live in ``<root>/tvm/<fingerprint>/records.json``; for a CPU record
``config`` holds the knobs of ``ea_ops.backends.tvm.schedule`` and ``workload`` the tuned shape
``{"B", "T", "H", "D", "T_bucket"}``. A record applies to a call with the same kernel, causality, order,
dtype, ``H`` and ``D``; among several, the one whose ``T_bucket`` is nearest (in log2) to the call's.
The MetaSchedule database the tuner kept sits in the same folder; the runtime needs only the knobs.
"""

from __future__ import annotations

from ... import records as _records
from ...records import t_bucket
from .target import cpu_fingerprint

BACKEND = "tvm"


def load(fingerprint: str | None = None) -> list[dict]:
    """Valid records for this target (user cache first), re-read when a records file changes."""
    return _records.cached_records(BACKEND, fingerprint or cpu_fingerprint())


def _matches(rec: dict, kernel: str, causal: bool, order: int, dtype: str, H: int, D: int) -> bool:
    k, w = rec["kernel"], rec["workload"]
    return (k["name"] == kernel and k["causal"] == causal and k["order"] == order and k["dtype"] == dtype
            and w.get("H") == H and w.get("D") == D)


def candidates(kernel: str, causal: bool, order: int, dtype: str, H: int, D: int, T: int,
               fingerprint: str | None = None) -> list[dict]:
    """Matching records, best first (nearest ``T_bucket``; the user cache wins ties)."""
    found = [r for r in load(fingerprint) if _matches(r, kernel, causal, order, dtype, H, D)]
    want = t_bucket(T)
    # stable sort: user cache records come first
    return sorted(found, key=lambda rec: _records.log2_distance(rec["workload"].get("T_bucket"), want))


def has_forward_record(order: int, dtype: str, H: int, D: int, fingerprint: str | None = None) -> bool:
    return any(_matches(r, "forward", r["kernel"]["causal"], order, dtype, H, D) for r in load(fingerprint))
