"""Tuned records: JSON data that tuners write and the runtime reads (docs/design.md section 5).

Layout: ``<root>/<backend>/<fingerprint>/records.json`` holding ``{"schema_version": 1, "records": [...]}``;
a backend may keep more files in the same folder (TVM: its MetaSchedule JSON database). Roots, searched in
order: the user cache (``$EA_OPS_CACHE_DIR``, default ``~/.cache/ea-ops``) and the shipped
``autotune_cache/`` (``$EA_OPS_SHIPPED_CACHE`` overrides it). Records are data only: parsed with ``json``,
validated field by field, never unpickled or executed. Only regular files of at most ``MAX_RECORDS_BYTES`` are
read (never a FIFO or a device); a bad file is skipped with one warning.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import re
import stat
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
RECORDS_FILE = "records.json"
# Real records files are a few KiB; a larger one is not ours, and reading it would cost the caller memory.
MAX_RECORDS_BYTES = 4 << 20
_KERNELS = ("forward", "backward", "step")
_DTYPES = ("float32", "bfloat16", "float16")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
_warned: set[str] = set()


class RecordError(ValueError):
    """A record or records file that does not match the schema."""


def user_cache_dir() -> Path:
    return Path(os.environ.get("EA_OPS_CACHE_DIR") or Path.home() / ".cache" / "ea-ops")


def shipped_dir() -> Path:
    """The shipped records: ``$EA_OPS_SHIPPED_CACHE``, else ``ea_ops/autotune_cache`` where a wheel installs
    them, else the source tree's top-level ``autotune_cache/`` (a checkout or an editable install)."""
    env = os.environ.get("EA_OPS_SHIPPED_CACHE")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    installed = here / "autotune_cache"
    return installed if installed.is_dir() else here.parent / "autotune_cache"


def record_dirs(backend: str, fingerprint: str) -> list[Path]:
    """Folders that may hold records for this backend and target, user cache first."""
    check_name(backend, "backend")
    check_name(fingerprint, "fingerprint")
    return [root / backend / fingerprint for root in roots()]


def check_name(value: object, what: str) -> str:
    if not isinstance(value, str) or not _SAFE_NAME.match(value) or value in (".", ".."):
        raise RecordError(f"{what} must be a plain name of letters, digits, '.', '_' or '-', got {value!r}")
    return value


def _require(d: dict, key: str, types: type | tuple[type, ...], where: str) -> Any:
    if key not in d:
        raise RecordError(f"{where}: missing field {key!r}")
    val = d[key]
    if not isinstance(val, types) or isinstance(val, bool) and bool not in (
        types if isinstance(types, tuple) else (types,)
    ):
        raise RecordError(f"{where}: field {key!r} has type {type(val).__name__}")
    return val


def _json_scalar_tree(value: Any, where: str, depth: int = 0) -> None:
    if depth > 8:
        raise RecordError(f"{where}: nested too deeply")
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise RecordError(f"{where}: non-string key {k!r}")
            _json_scalar_tree(v, where, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _json_scalar_tree(v, where, depth + 1)
    elif not (value is None or isinstance(value, (str, int, float, bool))):
        raise RecordError(f"{where}: value of type {type(value).__name__}")


def validate_record(rec: object, *, backend: str | None = None, fingerprint: str | None = None) -> dict:
    """Check one record against the schema; returns it, or raises RecordError saying what is wrong."""
    if not isinstance(rec, dict):
        raise RecordError(f"record must be an object, got {type(rec).__name__}")
    where = "record"
    ver = _require(rec, "schema_version", int, where)
    if ver != SCHEMA_VERSION:
        raise RecordError(f"{where}: schema_version {ver}, expected {SCHEMA_VERSION}")
    b = check_name(_require(rec, "backend", str, where), "backend")
    fp = check_name(_require(rec, "fingerprint", str, where), "fingerprint")
    if backend is not None and b != backend:
        raise RecordError(f"{where}: backend {b!r}, expected {backend!r}")
    if fingerprint is not None and fp != fingerprint:
        raise RecordError(f"{where}: fingerprint {fp!r} is another target than {fingerprint!r}")
    _require(rec, "target", dict, where)
    kernel = _require(rec, "kernel", dict, where)
    name = _require(kernel, "name", str, "record.kernel")
    if name not in _KERNELS:
        raise RecordError(f"record.kernel: name {name!r} not in {_KERNELS}")
    _require(kernel, "causal", bool, "record.kernel")
    order = _require(kernel, "order", int, "record.kernel")
    if order < 0 or order % 2:
        raise RecordError(f"record.kernel: order {order} is not a non-negative even int")
    dtype = _require(kernel, "dtype", str, "record.kernel")
    if dtype not in _DTYPES:
        raise RecordError(f"record.kernel: dtype {dtype!r} not in {_DTYPES}")
    _require(rec, "workload", dict, where)
    _require(rec, "config", dict, where)
    lat = _require(rec, "latency_us", dict, where)
    for key in ("chosen", "default"):
        val = lat.get(key)
        if val is not None and (not isinstance(val, (int, float)) or isinstance(val, bool) or val < 0):
            raise RecordError(f"record.latency_us: {key} must be a non-negative number or null")
    _require(rec, "versions", dict, where)
    for key in ("target", "workload", "config", "versions"):
        _json_scalar_tree(rec[key], f"record.{key}")
    return rec


def _warn_once(path: Path, why: str) -> None:
    warn_once(f"{path}:{why}", f"ea-ops: skipping tuned records in {path}: {why}")


def read_regular(path: Path, *, limit: int = MAX_RECORDS_BYTES) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``limit`` bytes, else OSError.

    A FIFO, a device (a link to /dev/zero) or a folder in a cache someone else can write would block or
    never end: the type is checked before opening, and again on the open descriptor (the name may have been
    swapped in between); O_NONBLOCK keeps even that open from waiting on a FIFO.
    """
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise OSError("not a regular file")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError("not a regular file")
        if st.st_size > limit:
            raise OSError(f"{st.st_size} bytes, above the {limit}-byte limit")
        data = fh.read(limit + 1)  # the file may have grown since fstat
    if len(data) > limit:
        raise OSError(f"above the {limit}-byte limit")
    return data


def read_records_file(path: Path, *, backend: str, fingerprint: str) -> list[dict]:
    """Valid records of one file; a malformed file or record is skipped with one warning."""
    try:
        data = json.loads(read_regular(path).decode("utf-8"))
    except FileNotFoundError:
        return []
    # Anything a hostile file can make the parser raise: bad syntax or UTF-8 (ValueError), nesting beyond the
    # interpreter's stack (RecursionError), an unreadable or odd file (OSError), a huge value (MemoryError).
    except (OSError, ValueError, RecursionError, MemoryError) as exc:
        _warn_once(path, f"not readable JSON ({type(exc).__name__}: {exc})")
        return []
    if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
        _warn_once(path, f"not a schema_version {SCHEMA_VERSION} records file")
        return []
    recs = data.get("records")
    if not isinstance(recs, list):
        _warn_once(path, "field 'records' is not a list")
        return []
    good = []
    for rec in recs:
        try:
            good.append(validate_record(rec, backend=backend, fingerprint=fingerprint))
        except RecordError as exc:
            _warn_once(path, str(exc))
    return good


@functools.lru_cache(maxsize=16)
def _roots_in(cache_env: str | None, shipped_env: str | None, home: str | None) -> tuple[Path, Path]:
    return user_cache_dir(), shipped_dir()


def roots() -> tuple[Path, Path]:
    """``(user cache, shipped)``, resolved once per environment: the three variables they read are the cache
    key. Lookups on every kernel launch (a decode step included) use it: ``Path.resolve`` and friends cost
    ~50 us."""
    env = os.environ
    return _roots_in(env.get("EA_OPS_CACHE_DIR"), env.get("EA_OPS_SHIPPED_CACHE"), env.get("HOME"))


@functools.lru_cache(maxsize=64)
def _records_files(backend: str, fingerprint: str, root_pair: tuple[Path, Path]) -> tuple[str, ...]:
    check_name(backend, "backend")
    check_name(fingerprint, "fingerprint")
    return tuple(str(root / backend / fingerprint / RECORDS_FILE) for root in root_pair)


def records_stamp(backend: str, fingerprint: str) -> tuple:
    """The modification times of this target's records files (None where absent): a cache key that changes
    whenever a tuner writes, so runtimes can keep parsed records between calls. Only the two ``stat`` calls
    are left per call (``roots``)."""
    out = []
    for f in _records_files(backend, fingerprint, roots()):
        try:
            out.append(os.stat(f).st_mtime_ns)
        except OSError:
            out.append(None)
    return tuple(out)


def load_records(backend: str, fingerprint: str) -> list[dict]:
    """All valid records for this backend and target: user cache first, then shipped."""
    out: list[dict] = []
    for d in record_dirs(backend, fingerprint):
        out.extend(read_records_file(d / RECORDS_FILE, backend=backend, fingerprint=fingerprint))
    return out


# A writer's temporary file is ``.<name>.<pid>.<random>.tmp``: the pid lets the next writer to the folder
# tell a temp left by a killed writer (pid gone) from a live writer's. Past this age a temp is stale even when
# its pid is in use (pids are reused; another host or container sharing the folder has its own pids).
STALE_TEMP_S = 3600.0


# ------------------------------------------------------------------------------------ lookup at run time
_loaded: dict[tuple[str, str], tuple[tuple, list[dict]]] = {}


def cached_records(backend: str, fingerprint: str) -> list[dict]:
    """``load_records``, kept between calls and re-read when a records file changes (its stamp)."""
    key = (backend, fingerprint)
    stamp = records_stamp(backend, fingerprint)
    hit = _loaded.get(key)
    if hit is None or hit[0] != stamp:
        hit = (stamp, load_records(backend, fingerprint))
        _loaded[key] = hit
    return hit[1]


def t_bucket(rows: int, n_seqs: int = 1) -> int:
    """The ``T_bucket`` of every record: the mean sequence length ``rows / n_seqs`` rounded up to a power of
    two (at least 1). Records are chosen per bucket: the best schedule at 64k is not the best at 4k."""
    mean = max(1.0, rows / max(1, n_seqs))
    return 1 << max(0, math.ceil(math.log2(mean) - 1e-12))


def mean_length(rows: int, n_seqs: int = 1) -> int:
    """The mean sequence length ``rows / n_seqs`` rounded up (at least 1): a length in the call's ``t_bucket``,
    for lookups that take a length (TVM's ``kernel_for``), and what each kernel launch of a packed call sees."""
    return max(1, -(-rows // max(1, n_seqs)))


def log2_distance(got: object, want: int) -> float:
    """``|log2 got - log2 want|`` of two bucket values (``inf`` when ``got`` is not a positive int)."""
    if isinstance(got, bool) or not isinstance(got, int) or got < 1:
        return math.inf
    return abs(math.log2(got) - math.log2(want))


def warn_once(key: str, message: str) -> None:
    """One ``RuntimeWarning`` per ``key`` in this process (records, schedules and configs that are skipped)."""
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


# ------------------------------------------------------------------------------------------------ writing
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _remove_stale_temps(path: Path) -> None:
    """Remove temps of ``path`` left by writers that died; a live writer's is kept."""
    prefix = f".{path.name}."
    now = time.time()
    with contextlib.suppress(OSError):
        for entry in os.scandir(path.parent):
            name = entry.name
            if not (name.startswith(prefix) and name.endswith(".tmp")):
                continue
            pid_text = name[len(prefix):].split(".", 1)[0]
            try:
                old = now - entry.stat(follow_symlinks=False).st_mtime > STALE_TEMP_S
                if old or pid_text.isdigit() and not _pid_alive(int(pid_text)):
                    os.unlink(entry.path)
            except OSError:  # gone already (another writer cleaned it), or not ours to remove
                continue


def temp_file_beside(path: Path) -> tuple[int, str]:
    """``(fd, name)`` of a new empty temporary file in ``path``'s folder, named for this process
    (``.<name>.<pid>.<random>.tmp``), after removing the temps of ``path`` that killed writers left."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path)
    return tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")


# Bumped by every write in this process, so that lookups which re-check files only now and then
# (``ea_ops.backends.tvm.tuned.stamp``) see this process's own writes at once.
WRITES = [0]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: readers see old or new, never half.

    Temps that killed writers left beside ``path`` are removed first.
    """
    WRITES[0] += 1
    path = Path(path)
    fd, tmp = temp_file_beside(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; records and reports are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """``atomic_write_bytes`` of ``text`` in UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


@contextlib.contextmanager
def locked(folder: Path, *, shared: bool = False) -> Iterator[None]:
    """An exclusive lock on ``folder`` (a ``.lock`` file), so concurrent tuners merge rather than clobber;
    ``shared=True`` takes a shared one (readers that must not see a writer's half-done change)."""
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _same_slot(a: dict, b: dict) -> bool:
    return a["kernel"] == b["kernel"] and a["workload"] == b["workload"]


def add_records(folder: Path, new: list[dict], *, same_slot=None) -> Path:
    """Validate ``new`` and merge it into ``folder/records.json`` (a newer record replaces the same slot).

    ``same_slot(old, new) -> bool`` says which old records a new one replaces; by default those with the same
    kernel and workload. A backend whose lookup ignores part of the workload passes its own key (TVM: a
    record at another T of the same ``T_bucket`` is the same slot to the runtime).
    """
    folder = Path(folder)
    same_slot = same_slot or _same_slot
    for rec in new:
        validate_record(rec)
    with locked(folder):
        path = folder / RECORDS_FILE
        old: list[dict] = []
        if path.exists() and new:
            old = read_records_file(path, backend=new[0]["backend"], fingerprint=new[0]["fingerprint"])
        kept = [r for r in old if not any(same_slot(r, n) for n in new)]
        atomic_write_json(path, {"schema_version": SCHEMA_VERSION, "records": kept + new})
    return path
