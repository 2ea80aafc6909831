"""Tuned records: schema validation, skipping bad files with one warning, atomic merged writes."""

import json
import threading
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
