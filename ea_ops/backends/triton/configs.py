"""Which configuration the Triton kernels run with: a tuned record when one matches, else the default.

A configuration is a small dict: ``{"variant": "scan" | "chunked", "num_warps": w, "chunk": L}`` for the
forward and backward (``chunk`` only for ``chunked``; the non-causal kernels are always chunked), and
``{"num_warps": w}`` for the step. Programs take ``32 * w`` channels (one per thread).

Tuning keys (``workload`` of a record): ``HD = H*D``, ``lanes`` = sequences * HD rounded up to a power of two
and, for forward/backward, ``T_bucket`` = the mean sequence length rounded up to a power of two
(``ea_ops.records.t_bucket``, the key of every backend's records; the chunking choice depends on it).
A record applies to a call with the same kernel, causality, order, dtype and ``HD`` whose buckets are near
(``_MAX_DISTANCE``); the nearest wins, the user cache before the shipped one. Records are read with
``ea_ops.records`` (validated JSON only).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

from ... import records as _records
from ..common import CHUNKED, LANES_TARGET, SCAN, VARIANTS

BACKEND = "triton"
KERNELS = ("forward", "backward", "step")
WARPS = (1, 2, 4, 8)
CHUNKS = (32, 64, 128, 256)  # the chunk lengths the defaults and the curated lists use
# Longest chunk per block size: narrow blocks serve small H*D, where lanes are scarce and short chunks pay.
MAX_CHUNK = {1: 64, 2: 128, 4: 256, 8: 256}
_MAX_DISTANCE = 2.0
_forced: list[tuple[str | None, dict]] = []


# ---------------------------------------------------------------------------------------- validation
def validate(kernel: str, cfg: object, *, strict: bool = True) -> dict:
    """A clean copy of ``cfg`` for ``kernel``, or ValueError saying what is wrong.

    ``strict`` (records) also requires ``chunk`` to be one of ``CHUNKS``; tests may force other chunks.
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if not isinstance(cfg, dict):
        raise ValueError(f"config must be a dict, got {type(cfg).__name__}")
    w = cfg.get("num_warps")
    if isinstance(w, bool) or w not in WARPS:
        raise ValueError(f"config num_warps must be one of {WARPS}, got {w!r}")
    if kernel == "step":
        if set(cfg) != {"num_warps"}:
            raise ValueError(f"step config takes only num_warps, got keys {sorted(cfg)}")
        return {"num_warps": w}
    variant = cfg.get("variant")
    if variant not in VARIANTS:
        raise ValueError(f"config variant must be 'scan' or 'chunked', got {variant!r}")
    if variant == SCAN:
        if set(cfg) != {"variant", "num_warps"}:
            raise ValueError(f"scan config takes variant and num_warps, got keys {sorted(cfg)}")
        return {"variant": SCAN, "num_warps": w}
    chunk = cfg.get("chunk")
    if set(cfg) != {"variant", "num_warps", "chunk"}:
        raise ValueError(f"chunked config takes variant, num_warps and chunk, got keys {sorted(cfg)}")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or not 1 <= chunk <= 1 << 16:
        raise ValueError(f"config chunk must be an int in [1, 65536], got {chunk!r}")
    if strict and chunk not in CHUNKS:
        raise ValueError(f"config chunk must be one of {CHUNKS}, got {chunk}")
    return {"variant": CHUNKED, "num_warps": w, "chunk": chunk}


# ------------------------------------------------------------------------------------------- buckets
def lanes_bucket(n_seqs: int, HD: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, n_seqs * HD))))


def workload(kernel: str, *, HD: int, n_seqs: int, rows: int) -> dict:
    """The tuning key of a call (see the module docstring)."""
    w = {"HD": int(HD), "lanes": lanes_bucket(n_seqs, HD)}
    if kernel != "step":
        w["T_bucket"] = _records.t_bucket(rows, n_seqs)
    return w


# ------------------------------------------------------------------------------------------ defaults
def default_warps(HD: int) -> int:
    return 4 if HD >= 128 else 2 if HD >= 64 else 1


def default_chunk(n_seqs: int, HD: int, rows: int) -> int:
    """The longest chunk in ``CHUNKS`` that still gives ``LANES_TARGET`` (channel, chunk) scans."""
    lanes = max(1, n_seqs * HD)
    mean = max(1.0, rows / max(1, n_seqs))
    for chunk in sorted(CHUNKS, reverse=True):
        if lanes * math.ceil(mean / chunk) >= LANES_TARGET:
            return chunk
    return min(CHUNKS)


def default(kernel: str, *, causal: bool, HD: int, n_seqs: int, rows: int) -> dict:
    """The untuned choice: split T into chunks when ``seqs * H * D`` is below ``LANES_TARGET`` (docs/design.md)."""
    w = default_warps(HD)
    if kernel == "step":
        return {"num_warps": w}
    mean = rows / max(1, n_seqs)
    chunk = min(default_chunk(n_seqs, HD, rows), MAX_CHUNK[w])
    if causal and (n_seqs * HD >= LANES_TARGET or mean <= min(CHUNKS)):
        return {"variant": SCAN, "num_warps": w}
    return {"variant": CHUNKED, "num_warps": w, "chunk": chunk}


# ------------------------------------------------------------------------------------------- records
def load(fp: str) -> list[dict]:
    """Valid records for fingerprint ``fp`` (user cache first), re-read when a records file changes."""
    return _records.cached_records(BACKEND, fp)


def _distance(rec_w: dict, want: dict) -> float:
    return sum(weight * _records.log2_distance(rec_w.get(key), want[key])
               for key, weight in (("lanes", 1.0), ("T_bucket", 0.5)) if key in want)


def from_records(kernel: str, *, causal: bool, order: int, dtype: str, HD: int, n_seqs: int, rows: int,
                 fp: str) -> dict | None:
    """The configuration of the nearest matching record, or None."""
    want = workload(kernel, HD=HD, n_seqs=n_seqs, rows=rows)
    best, best_d = None, math.inf
    for rec in load(fp):
        k, w = rec["kernel"], rec["workload"]
        if (k["name"], k["causal"], k["order"], k["dtype"]) != (kernel, causal, order, dtype) or w.get("HD") != HD:
            continue
        d = _distance(w, want)
        if d < best_d:
            best, best_d = rec, d
    if best is None or best_d > _MAX_DISTANCE:
        return None
    try:
        return validate(kernel, best["config"])
    except ValueError as exc:
        _records.warn_once(f"{fp}:{exc}", f"ea-ops: ignoring a Triton record with a bad config ({exc})")
        return None


@contextlib.contextmanager
def forced(config: dict, kernel: str | None = None) -> Iterator[None]:
    """Within the block, calls of ``kernel`` (every kernel if None) run ``config`` (tests, the tuner)."""
    if kernel is not None:
        validate(kernel, config, strict=False)
    _forced.append((kernel, dict(config)))
    try:
        yield
    finally:
        _forced.pop()


def choose(kernel: str, *, causal: bool, order: int, dtype: str, HD: int, n_seqs: int, rows: int,
           fp: str | None) -> dict:
    """Forced configuration, else the nearest tuned record for ``fp``, else the default."""
    for k, cfg in reversed(_forced):
        if k is None or k == kernel:
            if kernel == "step":
                return {"num_warps": cfg["num_warps"]}
            if not causal and cfg.get("variant") == SCAN:  # non-causal runs chunked; keep the warps
                cfg = {**default(kernel, causal=False, HD=HD, n_seqs=n_seqs, rows=rows),
                       "num_warps": cfg["num_warps"]}
            return validate(kernel, cfg, strict=False)
    if fp is not None:
        try:
            hit = from_records(kernel, causal=causal, order=order, dtype=dtype, HD=HD, n_seqs=n_seqs, rows=rows,
                               fp=fp)
        except Exception as exc:  # a broken cache must never break a call; load_records already warned
            _records.warn_once(f"{fp}:unusable:{exc}", f"ea-ops: Triton records not usable ({exc})")
            hit = None
        if hit is not None:
            return hit
    return default(kernel, causal=causal, HD=HD, n_seqs=n_seqs, rows=rows)
