"""``ea-ops bench --workload coldstart``: its plan, its options, and its arithmetic on fake child processes
(the real measurement spawns processes that build T=4096 kernels: it belongs to the bench, not the suite)."""

from __future__ import annotations

import json
from pathlib import Path

from schedules import cli_bench
from schedules.bench import coldstart


def test_the_dry_run_prints_the_plan(capsys):
    assert cli_bench.main(["--workload", "coldstart", "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["backend"] == "tvm" and plan["workload"]["T"] == 4096 and plan["workload"]["mode"] == "fwdbwd"
    assert plan["goal"] == coldstart.GOAL


def test_bad_options_are_refused_naming_them(capsys):
    assert cli_bench.main(["--workload", "coldstart", "--mode", "step", "--dry-run"]) == 2
    assert "--mode" in capsys.readouterr().err
    assert cli_bench.main(["--workload", "coldstart", "--order", "3", "--dry-run"]) == 2
    assert "--order" in capsys.readouterr().err


def test_pairs_medians_ratio_and_files(monkeypatch, tmp_path, capsys):
    times = iter([3.0, 0.5, 2.0, 1.0, 4.0, 0.9])  # cold, warm, cold, warm, ...
    caches = []

    def fake_child(spec, cache: Path):
        caches.append(cache)
        first = next(times)
        cold = first >= 2.0
        return {"first_s": first, "second_s": 0.05, "builds": 2 if cold else 0, "loads": 0 if cold else 2,
                "tvm_imported": cold, "dynamo_imported_by_first_call": True}

    monkeypatch.setattr(coldstart, "_child", fake_child)
    monkeypatch.setattr(coldstart, "MAX_PAIRS", 3)
    assert cli_bench.main(["--workload", "coldstart", "--budget-s", "1000", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "bench-coldstart.json").read_text())
    assert len(doc["pairs"]) == 3 and doc["cold_first_s"] == 3.0 and doc["warm_first_s"] == 0.9
    assert abs(doc["ratio"] - 0.3) < 1e-12 and doc["goal"]["met"]
    assert caches[0] == caches[1] != caches[2] == caches[3]  # each pair its own cache, shared within the pair
    assert not any(c.exists() for c in caches)  # removed after each pair
    text = (tmp_path / "bench-coldstart.txt").read_text()
    assert "warm/cold 0.300" in text and ": met" in text and "torch._dynamo" in text
    capsys.readouterr()
