"""ea_ops.kernel_store with plain bytes for libraries: what a reader sees while a writer stores (no TVM here;
tests/ea_ops/test_tvm_kernel_cache.py runs real kernels through it)."""

from __future__ import annotations

import hashlib
import json
import threading
import time
import warnings
from pathlib import Path

import pytest

from ea_ops import kernel_store, records

KEY = {"backend": "test", "kernel": "forward", "order": 2}


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setattr(records, "_warned", set())
    root = tmp_path / "cache"
    return kernel_store.KernelStore(root, root / "kernels" / "test" / "here")


def _read(path: str) -> bytes:
    return Path(path).read_bytes()


def _load(store) -> tuple[bytes | None, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = store.load(KEY, _read)
    return got, [str(w.message) for w in caught]


def test_a_reader_during_an_export_sees_nothing_then_the_whole_entry(store):
    """The exporter writes under a temporary name: until the rename, the entry does not exist."""
    half, rest = b"\x7fELF" + b"a" * 5000, b"b" * 5000
    midway, resume = threading.Event(), threading.Event()

    def export(path: str) -> None:
        with open(path, "wb") as fh:
            fh.write(half)
            fh.flush()
            midway.set()
            assert resume.wait(30)
            fh.write(rest)

    writer = threading.Thread(target=lambda: store.save(KEY, export))
    writer.start()
    try:
        assert midway.wait(30)
        assert _load(store) == (None, [])  # no half library, no warning
    finally:
        resume.set()
        writer.join(30)
    assert _load(store) == (half + rest, [])


def test_a_reader_waits_for_the_manifest_of_a_replaced_library(store):
    """Between a writer's rename and its manifest, a reader would see new bytes with the old checksum."""
    assert store.save(KEY, lambda p: Path(p).write_bytes(b"old library"))
    lib, man = store.paths(KEY)
    new = b"new library, other bytes"
    in_window = threading.Event()

    def writer() -> None:  # what save does once its temp is written: rename, then the manifest, under the lock
        with records.locked(store.folder):
            tmp = lib.with_name(".tmp-new")
            tmp.write_bytes(new)
            tmp.replace(lib)
            in_window.set()
            time.sleep(0.3)
            doc = json.loads(man.read_text())
            doc.update(bytes=len(new), sha256=hashlib.sha256(new).hexdigest())
            records.atomic_write_json(man, doc)

    t = threading.Thread(target=writer)
    t.start()
    try:
        assert in_window.wait(30)
        assert _load(store) == (new, [])
    finally:
        t.join(30)


def test_a_folder_that_cannot_be_created_is_reported_once_and_nothing_breaks(tmp_path, monkeypatch):
    monkeypatch.setattr(records, "_warned", set())
    (tmp_path / "file").write_text("x")
    store = kernel_store.KernelStore(tmp_path / "file", tmp_path / "file" / "kernels")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not store.save(KEY, lambda p: Path(p).write_bytes(b"x"))
        assert not store.save(KEY, lambda p: Path(p).write_bytes(b"x"))
        assert store.load(KEY, _read) is None
    msgs = [str(w.message) for w in caught]
    assert len(msgs) == 1 and "not a folder" in msgs[0], msgs
