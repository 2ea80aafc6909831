"""``EA_OPS_LOG_CALLS=FILE``: the call signatures a program runs, for ``ea-ops tune --from-log FILE``.

With the variable set, ``ea_attention`` and ``ea_recurrent_step`` append each distinct signature they see
to FILE as one JSON line (``LINE_FIELDS``), once per signature per process. Each line is written with one
``write`` on a descriptor opened with ``O_APPEND``, so processes that log to one file at once never
interleave. Logging never raises into the caller: a file that cannot be written gives one warning and
logging stays off for that path. Unset, a call pays one environment lookup; under ``torch.compile``
nothing is logged (the traced region must stay free of file I/O).

The same module reads such a file back (``read_log``): line by line, each validated field by field and
never evaluated; a bad line is skipped with its reason (docs/design.md section 5, validation).
"""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import torch

from . import records
from .checks import MAX_ORDER

ENV = "EA_OPS_LOG_CALLS"
LOG_VERSION = 1
MAX_LOG_BYTES = 4 << 20  # a log holds distinct signatures only: tens of lines for a model, not megabytes
MAX_LINE_BYTES = 1024
_MAX_DIM = 2**31 - 1  # the largest extent any backend indexes
KINDS = ("forward", "step")
# field -> allowed types (bool is checked apart: it is an int to Python)
LINE_FIELDS: dict[str, type | tuple[type, ...]] = {
    "v": int, "kind": str, "needs_grad": bool, "B": int, "T": int, "n_seqs": (int, type(None)),
    "T_bucket": int, "H": int, "D": int, "order": int, "dtype": str, "causal": bool, "device": str,
}

_seen: set[tuple] = set()
_off: set[str] = set()  # paths that could not be written: logging is off for them
_lock = threading.Lock()


def note(kind: str, q: torch.Tensor, *, order: int, causal: bool, needs_grad: bool,
         segments: list[tuple[int, int]] | None = None) -> None:
    """Log a validated call once per signature: ``kind`` "forward" (``q [B, T, H, D]``) or "step" (``[B, H, D]``).

    ``segments``: the ``(begin, end)`` pairs of ``cu_seqlens``; the line then carries their count, and
    ``T_bucket`` is that of the mean length (``records.t_bucket``).
    """
    path = os.environ.get(ENV)
    if not path:
        return
    try:
        if torch.compiler.is_compiling() or path in _off:
            return
        if kind == "step":
            (B, H, D), T = q.shape, 1
        else:
            B, T, H, D = q.shape
        if B * T * H * D == 0:  # nothing reaches a kernel
            return
        n_seqs = None if segments is None else len(segments)
        key = (path, kind, needs_grad, B, T, n_seqs, H, D, order, q.dtype, causal, q.device.type)
        if key in _seen:
            return
        with _lock:
            if key in _seen:
                return
            _seen.add(key)
            line = {"v": LOG_VERSION, "kind": kind, "needs_grad": bool(needs_grad), "B": B, "T": T,
                    "n_seqs": n_seqs, "T_bucket": records.t_bucket(T, n_seqs or 1), "H": H, "D": D,
                    "order": order, "dtype": str(q.dtype).removeprefix("torch."), "causal": bool(causal),
                    "device": q.device.type}
            _append(path, (json.dumps(line, sort_keys=True) + "\n").encode())
    except Exception as exc:  # a log must never break the call it describes
        _off.add(path)
        records.warn_once(f"{ENV}:{path}", f"ea-ops: {ENV}={path!r} cannot be written, calls are not logged "
                                           f"({type(exc).__name__}: {exc})")


def _append(path: str, data: bytes) -> None:
    """One ``write`` at the end of a regular file (created 0644); OSError otherwise."""
    # O_NONBLOCK: a FIFO without a reader fails at once instead of blocking the caller
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0),
                 0o644)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError("not a regular file")
        if os.write(fd, data) != len(data):
            raise OSError("short write")
    finally:
        os.close(fd)


def reset() -> None:
    """Forget the signatures and failed paths of this process (tests; a program that rotates its log)."""
    with _lock:
        _seen.clear()
        _off.clear()


# ------------------------------------------------------------------------------------------------ reading
class LogError(ValueError):
    """A log line that is not one ``note`` writes."""


def _positive(line: dict, key: str) -> int:
    val = line[key]
    if not 1 <= val <= _MAX_DIM:
        raise LogError(f"{key}={val} is not in 1..{_MAX_DIM}")
    return val


def validate_line(text: str) -> dict:
    """One log line as a dict of ``LINE_FIELDS``, or LogError saying what is wrong (nothing is evaluated)."""
    if len(text.encode("utf-8", "replace")) > MAX_LINE_BYTES:
        raise LogError(f"longer than {MAX_LINE_BYTES} bytes")
    try:
        line = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise LogError(f"not JSON ({type(exc).__name__})") from None
    if not isinstance(line, dict):
        raise LogError(f"not a JSON object but {type(line).__name__}")
    if set(line) != set(LINE_FIELDS):
        missing, extra = sorted(set(LINE_FIELDS) - set(line)), sorted(set(line) - set(LINE_FIELDS))
        raise LogError(f"fields differ (missing {missing}, unknown {extra})")
    for key, types in LINE_FIELDS.items():
        val = line[key]
        if not isinstance(val, types) or isinstance(val, bool) != (types is bool):
            raise LogError(f"field {key!r} has type {type(val).__name__}")
    if line["v"] != LOG_VERSION:
        raise LogError(f"version {line['v']}, expected {LOG_VERSION}")
    if line["kind"] not in KINDS:
        raise LogError(f"kind {line['kind']!r} not in {KINDS}")
    for key in ("B", "T", "H", "D", "T_bucket"):
        _positive(line, key)
    if line["n_seqs"] is not None and not 1 <= line["n_seqs"] <= line["T"]:
        raise LogError(f"n_seqs={line['n_seqs']} is not in 1..T")
    if line["T_bucket"] != records.t_bucket(line["T"], line["n_seqs"] or 1):
        raise LogError(f"T_bucket={line['T_bucket']} is not the bucket of T={line['T']}")
    if not 0 <= line["order"] <= MAX_ORDER or line["order"] % 2:
        raise LogError(f"order={line['order']} is not an even int in 0..{MAX_ORDER}")
    for key in ("dtype", "device"):
        try:
            records.check_name(line[key], key)
        except records.RecordError as exc:
            raise LogError(str(exc)) from None
    if line["kind"] == "step" and (line["T"] != 1 or line["n_seqs"] is not None or not line["causal"]):
        raise LogError("a step has T=1, no n_seqs and causal=true")
    return line


def read_log(path: str | os.PathLike) -> tuple[list[dict], list[str]]:
    """``(lines, skipped)``: the valid lines of a call log, and one ``"line N: why"`` per skipped line.

    The file must be a regular file of at most ``MAX_LOG_BYTES`` (OSError otherwise).
    """
    data = records.read_regular(Path(path), limit=MAX_LOG_BYTES)
    good, skipped = [], []
    for n, raw in enumerate(data.split(b"\n"), 1):
        if not raw.strip():
            continue
        try:
            good.append(validate_line(raw.decode("utf-8")))
        except UnicodeDecodeError:
            skipped.append(f"line {n}: not UTF-8")
        except LogError as exc:
            skipped.append(f"line {n}: {exc}")
    return good, skipped


def kernels_of(line: dict) -> list[str]:
    """The kernels a logged call runs: the step; the forward, and the backward when it needed gradients."""
    if line["kind"] == "step":
        return ["step"]
    return ["forward", "backward"] if line["needs_grad"] else ["forward"]


def mean_length(line: dict) -> int:
    """The length each kernel launch of the call sees: ``T``, or the mean sequence length (rounded up)."""
    return records.mean_length(line["T"], line["n_seqs"] or 1)
