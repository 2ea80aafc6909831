"""analysis.study end to end on the test-only ``smoke`` preset: a softmax model learns trivial recall, the JSON has
one entry per model x setting, the same seeds give the same numbers, bad arguments are refused by name, and the
files are written atomically."""

import dataclasses
import json
import os

import pytest

import ea_ops.records
from analysis import cli_study
from analysis.study import PRESETS, Setting, StudyConfig, run_study
from analysis.study.frontier import frontier, smallest_order
from analysis.study.output import FILES, STUDY_JSON, write_all
from analysis.study.train import train_run

SMOKE = PRESETS["smoke"]


def test_softmax_learns_trivial_recall_and_a_broken_one_does_not():
    cfg = SMOKE.replace(steps=120, hidden=32, num_keys=4, num_values=4, eval_every=60, val_size=64, test_size=64)
    s = Setting("mqar", 8, 2)
    r = train_run(cfg, "softmax", s, 1e-2, 0)
    assert r["test_accuracy"] >= 0.9, r  # chance is 1/4
    assert r["curve_steps"] == [60, 120] and len(r["curve_val_accuracy"]) == 2
    lazy = train_run(cfg.replace(steps=2, eval_every=1), "softmax", s, 1e-2, 0)
    assert lazy["test_accuracy"] < 0.6  # two steps do not solve it: the task is not trivially guessable


def _numbers(study):
    return [(r["model"], r["setting"], r["per_seed_accuracy"], r["curve_val_accuracy_mean"], r["lr_grid"])
            for r in study["results"]], study["frontier"]


def test_cli_smoke_writes_every_cell_and_the_same_seeds_give_the_same_numbers(tmp_path, capsys):
    cfg = SMOKE.replace(seeds=(0, 1))
    assert cli_study.main(["--out", str(tmp_path), "--preset", "smoke", "--no-progress"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == sorted(FILES)  # and no temp files left beside them
    study = json.loads((tmp_path / STUDY_JSON).read_text())
    cells = {(r["model"], r["task"], r["setting"]) for r in study["results"]}
    want = {(m, s.task, s.name()) for m in SMOKE.models for s in SMOKE.settings}
    assert cells == want and len(study["results"]) == len(want)
    for r in study["results"]:
        assert 0 <= r["accuracy"] <= 1 and r["seeds"] == [0] and r["params"] > 0 and r["lr"] in SMOKE.lrs
    assert [c["model"] for c in study["cost"]] == list(SMOKE.models)
    assert all(c["train_step_ms"] > 0 and all(v > 0 for v in c["decode_tokens_per_s"].values())
               for c in study["cost"])
    a = run_study(cfg, progress=False)
    b = run_study(cfg, progress=False)
    assert _numbers(a) == _numbers(b)
    assert [r["per_seed_accuracy"][0] for r in a["results"]] == [r["accuracy"] for r in study["results"]]
    # a different first seed trains a different model
    c = run_study(cfg.replace(seeds=(5, 1)), progress=False)
    assert [r["curve_val_accuracy_mean"] for r in c["results"]] != [r["curve_val_accuracy_mean"]
                                                                   for r in a["results"]]


def test_frontier_properties():
    rows = frontier((0.1, 1.0, 4.0), (2, 8, 16), seq_len=32, channels=8)
    peaks = [r["exact_peak_mean"] for r in rows]
    assert peaks == sorted(peaks) and peaks[-1] > 2 * peaks[0]  # larger scale: spikier exact EA
    small = rows[0]["errors"]
    assert small["2"]["max"] > small["8"]["max"] > small["16"]["max"]  # higher order: closer, where it converges
    assert rows[-1]["errors"]["2"]["max"] > rows[0]["errors"]["2"]["max"]  # spikier: EA-t further from exact
    assert smallest_order(rows[0], 1e-2) in (2, 8) and smallest_order(rows[-1], 1e-12) is None


@pytest.mark.parametrize("kw,word", [
    ({"models": ("softmax", "gru")}, "models"), ({"lrs": (0.0,)}, "lrs"), ({"seeds": (1, 1)}, "seeds"),
    ({"hidden": 10, "heads": 4}, "heads"), ({"settings": (Setting("mqar", 5, 2),)}, "seq_len"),
    ({"settings": (Setting("sort", 20, 2),)}, "task"), ({"steps": 0}, "steps"), ({"frontier_orders": (3,)}, "even"),
    ({"exact_max_len": 0}, "exact_max_len"),
])
def test_bad_config_names_the_field(kw, word):
    with pytest.raises(ValueError, match=word):
        SMOKE.replace(**kw)
    with pytest.raises(ValueError, match="preset"):
        run_study("huge")
    with pytest.raises(TypeError, match="cfg"):
        run_study(3)


def test_exact_ea_trains_only_up_to_exact_max_len_and_the_estimate_counts_what_runs():
    from analysis.study.estimate import estimate_seconds
    from analysis.study.presets import cells

    cfg = SMOKE.replace(models=("softmax", "ea-exact", "ea-2-rms"),
                        settings=(Setting("mqar", 16, 2), Setting("mqar", 24, 2)))
    assert len(cells(cfg)) == 6
    short = cfg.replace(exact_max_len=16)
    assert cells(short) == [(m, s) for s in cfg.settings for m in cfg.models if (m, s.seq_len) != ("ea-exact", 24)]
    study = {"config": {"lrs": [3e-3], "seeds": [0], "steps": 30, "batch": 16, "hidden": 16},
             "results": [{"model": m, "seq_len": 16, "train_seconds": 30 * t}
                         for m, t in (("softmax", 1.0), ("ea-exact", 5.0), ("ea-2-rms", 1.0))]}
    # the skipped cell is the exact model at T 24: 5 s a step, scaled by (24/16)^2, for 30 steps
    assert estimate_seconds(cfg, study) - estimate_seconds(short, study) == pytest.approx(30 * 5.0 * 1.5 ** 2)
    assert PRESETS["full"].exact_max_len == 32  # the full preset's exact EA stays at T 32 (an hour, not two)


def test_cli_refuses_bad_arguments_by_name(tmp_path, capsys):
    assert cli_study.main(["--out", str(tmp_path), "--preset", "smoke", "--models", "softmax,gru"]) == 2
    err = capsys.readouterr().err
    assert "--models" in err and "gru" in err
    f = tmp_path / "file"
    f.write_text("x")
    assert cli_study.main(["--out", str(f), "--preset", "smoke"]) == 2
    assert "--out" in capsys.readouterr().err
    assert cli_study.main(["--out", str(tmp_path), "--quick", "--preset", "full"]) == 2
    assert "--quick" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli_study.main(["--out", str(tmp_path), "--preset", "huge"])
    assert exc.value.code == 2


def test_writes_are_atomic(tmp_path, monkeypatch):
    old = '{"old": true}\n'
    (tmp_path / STUDY_JSON).write_text(old)
    study = {"preset": "x", "date": "d", "machine": "m", "ea_backend": "torch", "wall_seconds": 0.0,
             "config": {"seeds": [0], "lrs": [1e-3], "num_values": 4}, "frontier": [], "results": [], "cost": []}

    def fail(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ea_ops.records.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_all(tmp_path, study, plots=False)
    assert (tmp_path / STUDY_JSON).read_text() == old  # the old file whole, no half-written one
    assert os.listdir(tmp_path) == [STUDY_JSON]  # and no temp file left
    monkeypatch.undo()
    write_all(tmp_path, study, plots=False)
    assert json.loads((tmp_path / STUDY_JSON).read_text())["preset"] == "x"


def test_studyconfig_is_a_frozen_record():
    assert isinstance(SMOKE, StudyConfig)
    with pytest.raises(dataclasses.FrozenInstanceError):
        SMOKE.steps = 3  # type: ignore[misc]
