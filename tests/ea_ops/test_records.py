"""Tuned records: schema validation, skipping bad files with one warning, atomic merged writes."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings

import pytest

from ea_ops import records


def rec(**over):
    r = {
        "schema_version": 1, "backend": "tvm", "fingerprint": "x86-avx2-2c",
        "target": {"kind": "llvm", "mcpu": "znver3"},
        "kernel": {"name": "forward", "causal": True, "order": 6, "dtype": "float32"},
        "workload": {"T_bucket": 4096, "HD": 512}, "config": {"tile": 8},
        "latency_us": {"chosen": 4000.0, "default": 5200.0}, "versions": {"tvm": "0.27"},
    }
    r.update(over)
    return r


@pytest.fixture
def cache(record_roots):
    return record_roots


def test_valid_record_round_trip(cache):
    folder = records.record_dirs("tvm", "x86-avx2-2c")[0]
    records.add_records(folder, [rec()])
    assert records.load_records("tvm", "x86-avx2-2c") == [rec()]


@pytest.mark.parametrize("bad, words", [
    (rec(schema_version=2), "schema_version 2"),
    (rec(backend="../x"), "plain name"),
    (rec(kernel={"name": "fwd", "causal": True, "order": 6, "dtype": "float32"}), "name 'fwd'"),
    (rec(kernel={"name": "forward", "causal": True, "order": 5, "dtype": "float32"}), "order 5"),
    (rec(kernel={"name": "forward", "causal": "yes", "order": 6, "dtype": "float32"}), "'causal'"),
    (rec(latency_us={"chosen": -1}), "non-negative"),
    (rec(config=[1, 2]), "'config' has type list"),
    ({k: v for k, v in rec().items() if k != "target"}, "missing field 'target'"),
])
def test_validation_names_the_problem(bad, words):
    with pytest.raises(records.RecordError) as info:
        records.validate_record(bad)
    assert words in str(info.value)


def test_foreign_and_malformed_records_are_skipped_with_one_warning(cache):
    folder = records.record_dirs("tvm", "x86-avx2-2c")[1]
    folder.mkdir(parents=True)
    data = {"schema_version": 1, "records": [rec(), rec(fingerprint="arm-neon-4c"), {"junk": 1}]}
    (folder / records.RECORDS_FILE).write_text(json.dumps(data))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = records.load_records("tvm", "x86-avx2-2c")
        records.load_records("tvm", "x86-avx2-2c")
    assert got == [rec()]
    msgs = [str(w.message) for w in caught]
    assert len(msgs) == 2 and any("another target" in m for m in msgs)


@pytest.mark.parametrize("text", ["{not json", "[]", '{"schema_version": 9, "records": []}',
                                  '{"schema_version": 1, "records": 3}', "\x80\x81"])
def test_unreadable_files_give_no_records(cache, text):
    folder = records.record_dirs("tvm", "fp")[0]
    folder.mkdir(parents=True)
    (folder / records.RECORDS_FILE).write_bytes(text.encode("utf-8", "surrogateescape")
                                                if isinstance(text, str) else text)
    with pytest.warns(RuntimeWarning, match="skipping tuned records"):
        assert records.load_records("tvm", "fp") == []


def test_atomic_write_leaves_no_temp_files_and_concurrent_merges_keep_all(cache):
    folder = cache / "user" / "tvm" / "x86-avx2-2c"

    def writer(i):
        records.add_records(folder, [rec(workload={"T_bucket": 2**i})])

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = records.load_records("tvm", "x86-avx2-2c")
    assert sorted(r["workload"]["T_bucket"] for r in got) == [2**i for i in range(8)]
    assert [p.name for p in folder.iterdir() if p.name.endswith(".tmp")] == []


def test_same_slot_is_replaced(cache):
    folder = cache / "user" / "tvm" / "x86-avx2-2c"
    records.add_records(folder, [rec()])
    records.add_records(folder, [rec(config={"tile": 16})])
    assert [r["config"] for r in records.load_records("tvm", "x86-avx2-2c")] == [{"tile": 16}]


# A writer that stops inside fsync (after its temp file exists) and says so; run as its own process.
_BLOCKED_WRITER = r"""
import importlib.util, os, sys, time
from pathlib import Path

spec = importlib.util.spec_from_file_location("records_alone", sys.argv[1])  # stdlib only: no torch import
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)

def stuck(fd):
    print("in fsync", flush=True)
    time.sleep(600)

os.fsync = stuck
mod.atomic_write_text(Path(sys.argv[2]), "{}")
"""


def _blocked_writer(path):
    proc = subprocess.Popen([sys.executable, "-c", _BLOCKED_WRITER, records.__file__, str(path)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "in fsync"
    return proc


def _temps(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_a_killed_writers_temp_is_removed_by_the_next_write_and_a_live_writers_is_kept(tmp_path):
    path = tmp_path / records.RECORDS_FILE
    killed, live = _blocked_writer(path), _blocked_writer(path)
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
        assert len(_temps(tmp_path)) == 2
        live_temps = [n for n in _temps(tmp_path) if f".{live.pid}." in n]
        assert len(live_temps) == 1
        records.atomic_write_text(path, "{}")
        assert _temps(tmp_path) == live_temps
    finally:
        for proc in (killed, live):
            proc.kill()
            proc.wait(timeout=30)
    records.atomic_write_text(path, "{}")  # now that writer is dead too
    assert _temps(tmp_path) == []
    assert path.read_text() == "{}"


def test_temps_older_than_the_stale_age_are_removed_even_with_a_live_pid(tmp_path):
    path = tmp_path / records.RECORDS_FILE
    old = tmp_path / f".{path.name}.{os.getpid()}.abcdefgh.tmp"  # this process is alive, but the temp is old
    old.write_text("")
    past = time.time() - records.STALE_TEMP_S - 60
    os.utime(old, (past, past))
    records.atomic_write_text(path, "{}")
    assert _temps(tmp_path) == []
