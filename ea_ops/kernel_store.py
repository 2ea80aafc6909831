"""Compiled kernels kept between processes: trust checks, manifests and atomic stores (docs/design.md section 5).

Loading a shared library runs its code, so an entry ``<name>.so`` is loaded only when

- every folder from the cache root down to the entry's folder is a real folder (not a symbolic link), owned by
  this user and not writable by group or others;
- the library is a regular file (not a link), owned by this user and not writable by group or others;
- its manifest ``<name>.json`` (read by ``records.read_regular``: a regular file, a size cap, JSON only) was
  written by ea-ops for the same key, and names the library's size and sha256, which its bytes match.

Anything else is not loaded: the caller rebuilds, with one warning (``records.warn_once``), and replaces the
entry only when the folder passes the checks; a kernel built for an untrusted folder stays in memory.

Writers export to a temporary name in the entry's folder tagged with their pid (``records.temp_file_beside``:
the stale-temp cleanup of ``records`` applies), fsync it, then, under the folder's exclusive lock, rename it into
place and write the manifest atomically. Readers check and load under the shared lock, so concurrent writers
never show a reader one process's library with another's manifest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from . import records

MANIFEST_VERSION = 1
WRITER = "ea-ops"
MAX_MANIFEST_BYTES = 64 << 10
MAX_LIBRARY_BYTES = 256 << 20  # real kernels are well under 1 MiB
LIBRARY_SUFFIX = ".so"
_T = TypeVar("_T")


class _Refused(Exception):
    """Why an entry is not loaded."""


def _uid() -> int:
    """The user whose files are trusted (a function, so tests can pretend to be someone else)."""
    return os.getuid()


def entry_name(key: dict) -> str:
    """The file stem of ``key``: the sha256 of its canonical JSON (the manifest keeps the key in clear)."""
    return hashlib.sha256(_canonical(key).encode()).hexdigest()[:32]


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _mode_problem(path: Path, st: os.stat_result, what: str) -> str | None:
    if st.st_uid != _uid():
        return f"{what} {path} is owned by uid {st.st_uid}, not by this user (uid {_uid()})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        who = "group and others" if st.st_mode & stat.S_IWGRP and st.st_mode & stat.S_IWOTH else (
            "group" if st.st_mode & stat.S_IWGRP else "others")
        return f"{what} {path} is writable by {who} (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def folder_problem(root: Path, folder: Path, *, create: bool = False) -> str | None:
    """None when ``root`` and every folder below it down to ``folder`` can be trusted, else why not.

    A missing folder raises FileNotFoundError, unless ``create``: then it is made, readable by this user only.
    """
    root, folder = Path(root), Path(folder)
    chain = [root]
    for part in folder.relative_to(root).parts:
        chain.append(chain[-1] / part)
    if create:
        root.parent.mkdir(parents=True, exist_ok=True)
    for path in chain:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            if not create:
                raise
            with contextlib.suppress(FileExistsError):  # another process made it first: checked below
                os.mkdir(path, 0o700)
            st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            return f"{path} is a symbolic link"
        if not stat.S_ISDIR(st.st_mode):
            return f"{path} is not a folder"
        problem = _mode_problem(path, st, "folder")
        if problem:
            return problem
    return None


@dataclass(frozen=True)
class KernelStore:
    """Compiled kernels in ``folder`` (under the cache ``root``), one ``<name>.so`` + ``<name>.json`` per key."""

    root: Path
    folder: Path

    def paths(self, key: dict) -> tuple[Path, Path]:
        """``(library, manifest)`` of ``key``."""
        name = entry_name(key)
        return self.folder / f"{name}{LIBRARY_SUFFIX}", self.folder / f"{name}.json"

    def _warn_folder(self, why: str) -> None:
        records.warn_once(f"kernel-store:{self.folder}:{why}",
                          f"ea-ops: not using the compiled-kernel cache {self.folder}: {why}; kernels are built "
                          "in this process and kept in memory only")

    def load(self, key: dict, loader: Callable[[str], _T]) -> _T | None:
        """``loader(path)`` of the verified library of ``key``, or None: nothing stored (silently), or an entry
        or folder that fails a check (one warning; the caller rebuilds)."""
        lib, man = self.paths(key)
        try:
            problem = folder_problem(self.root, self.folder)
            if problem is None and not (_exists(lib) or _exists(man)):
                return None
        except FileNotFoundError:
            return None
        except OSError as exc:
            problem = f"{type(exc).__name__}: {exc}"
        if problem:
            self._warn_folder(problem)
            return None
        try:
            with records.locked(self.folder, shared=True):
                fd = self._verified_fd(lib, man, key)
                try:
                    return loader(str(lib))
                finally:
                    os.close(fd)
        except _Refused as exc:
            why = str(exc)
        except Exception as exc:  # a loader that fails on a verified file: rebuild rather than break the call
            why = f"it did not load ({type(exc).__name__}: {exc})"
        records.warn_once(f"kernel-store:{lib}:{why}",
                          f"ea-ops: not loading the cached kernel {lib}: {why}; rebuilding it")
        return None

    def _verified_fd(self, lib: Path, man: Path, key: dict) -> int:
        """An open descriptor of ``lib`` whose bytes match its manifest; the name still points at it."""
        want = self._manifest(man, key, lib)
        try:
            fd = os.open(lib, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise _Refused("its manifest names a library that is missing") from None
        except OSError as exc:  # ELOOP: a symbolic link
            raise _Refused("the library is a symbolic link" if _is_link(lib) else f"{exc}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise _Refused("the library is not a regular file")
            problem = _mode_problem(lib, st, "library")
            if problem:
                raise _Refused(problem)
            if st.st_size != want["bytes"]:
                raise _Refused(f"the library has {st.st_size} bytes, its manifest says {want['bytes']}")
            digest = hashlib.sha256()
            with os.fdopen(os.dup(fd), "rb") as fh:
                while chunk := fh.read(1 << 20):
                    digest.update(chunk)
            if digest.hexdigest() != want["sha256"]:
                raise _Refused("the library's sha256 does not match its manifest")
            now = os.stat(lib, follow_symlinks=False)
            if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                raise _Refused("the library was replaced while it was checked")
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _manifest(self, man: Path, key: dict, lib: Path) -> dict:
        try:
            st = os.lstat(man)
        except FileNotFoundError:
            raise _Refused("it has no manifest") from None
        if not stat.S_ISREG(st.st_mode):
            raise _Refused("its manifest is not a regular file")
        problem = _mode_problem(man, st, "manifest")
        if problem:
            raise _Refused(problem)
        try:
            doc = json.loads(records.read_regular(man, limit=MAX_MANIFEST_BYTES).decode("utf-8"))
        except (OSError, ValueError, RecursionError, MemoryError) as exc:
            raise _Refused(f"its manifest is not readable JSON ({type(exc).__name__}: {exc})") from None
        if not isinstance(doc, dict) or doc.get("manifest_version") != MANIFEST_VERSION \
                or doc.get("writer") != WRITER:
            raise _Refused(f"its manifest is not an ea-ops kernel manifest (version {MANIFEST_VERSION})")
        if doc.get("key") != json.loads(_canonical(key)):
            raise _Refused("its manifest is for another key")
        if doc.get("file") != lib.name:
            raise _Refused(f"its manifest names another file ({doc.get('file')!r})")
        size, digest = doc.get("bytes"), doc.get("sha256")
        if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= MAX_LIBRARY_BYTES:
            raise _Refused(f"its manifest gives no valid size (at most {MAX_LIBRARY_BYTES} bytes)")
        if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise _Refused("its manifest gives no valid sha256")
        return doc

    def save(self, key: dict, export: Callable[[str], None], info: dict | None = None) -> bool:
        """Store the library that ``export(path)`` writes, for ``key``; False (with one warning) when the folder
        is not trusted or cannot be written. ``info`` goes into the manifest as it is (JSON data)."""
        lib, man = self.paths(key)
        try:
            problem = folder_problem(self.root, self.folder, create=True)
        except OSError as exc:
            problem = f"it cannot be created ({type(exc).__name__}: {exc})"
        if problem:
            self._warn_folder(problem)
            return False
        tmp = None
        try:
            fd, tmp = records.temp_file_beside(lib)
            os.close(fd)
            export(tmp)
            st = os.lstat(tmp)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(f"the exporter left no regular file at {tmp}")
            os.chmod(tmp, 0o644)
            digest = hashlib.sha256()
            with open(tmp, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    digest.update(chunk)
                os.fsync(fh.fileno())
            doc = {"manifest_version": MANIFEST_VERSION, "writer": WRITER, "key": json.loads(_canonical(key)),
                   "file": lib.name, "bytes": st.st_size, "sha256": digest.hexdigest(), "info": info or {}}
            with records.locked(self.folder):
                try:  # another process stored the same kernel meanwhile: keep its entry
                    os.close(self._verified_fd(lib, man, key))
                    return True
                except _Refused:
                    pass
                os.replace(tmp, lib)
                tmp = None
                records.atomic_write_json(man, doc)
            return True
        except OSError as exc:
            self._warn_folder(f"writing {lib.name} failed ({type(exc).__name__}: {exc})")
            return False
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    def entries(self) -> int:
        """How many manifests the folder holds (0 when it is missing or unreadable)."""
        try:
            return sum(1 for e in os.scandir(self.folder) if e.name.endswith(".json") and not e.name.startswith("."))
        except OSError:
            return 0


def _exists(path: Path) -> bool:
    try:
        os.lstat(path)
    except FileNotFoundError:
        return False
    return True


def _is_link(path: Path) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)
    except OSError:
        return False
