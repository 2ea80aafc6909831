"""ea-ops tune --backend tvm --shape / --from-log: the options, the workloads they make, the time budgets, and
tiny real tuning runs whose records the runtime then applies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from ea_ops import records
from schedules import cli_tune
from schedules.tvm import workloads as wl
from schedules.tvm.workloads import Workload

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_tuning(monkeypatch):
    """The TVM runner must not start: every bad option is refused before any work."""
    import schedules.tvm.cli_tune as tvm_tune

    def called(args):
        raise AssertionError("the tuner ran")

    monkeypatch.setattr(tvm_tune, "run", called)


@pytest.mark.parametrize("argv, option", [
    (["--shape", "1,64,2"], "--shape"),
    (["--shape", "1,64,two,8"], "--shape"),
    (["--shape", "1,0,2,8"], "--shape"),
    (["--shape", "1,-64,2,8"], "--shape"),
    (["--shape", "4096,4096,256,64"], "--shape"),  # 2^38 elements: beyond int32 indexing
    (["--shape", "1,64,2,8", "--kernels", "forward,sideways"], "--kernels"),
    (["--shape", "1,64,2,8", "--kernels", ","], "--kernels"),
    (["--shape", "1,64,2,8", "--dtypes", "float64"], "--dtypes"),
    (["--shape", "1,64,2,8", "--dtypes", "int8,float32"], "--dtypes"),
    (["--shape", "1,64,2,8", "--orders", "3"], "--orders"),
    (["--shape", "1,64,2,8", "--causal", "--non-causal"], "--non-causal"),
    (["--shape", "1,64,2,8", "--kernel-budget", "0"], "--kernel-budget"),
    (["--shape", "1,64,2,8", "--time-budget", "nan"], "--time-budget"),
    (["--shape", "1,64,2,8", "--workloads", "tiny"], "--workloads"),
    (["--kernels", "step"], "--kernels"),  # chooses among --shape/--from-log workloads: neither given
])
def test_bad_options_exit_2_naming_the_option(argv, option, no_tuning, capsys):
    with pytest.raises(SystemExit) as exc:
        cli_tune.main(["--backend", "tvm", *argv])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and option in err.splitlines()[-1], err


def test_shape_options_are_for_tvm(no_tuning, capsys):
    with pytest.raises(SystemExit) as exc:
        cli_tune.main(["--backend", "triton", "--shape", "1,64,2,8"])
    assert exc.value.code == 2 and "--shape" in capsys.readouterr().err


def test_shapes_make_one_workload_per_kernel_order_dtype_and_causality():
    got = wl.for_shapes([(2, 1000, 4, 16)], [2, 4], ["float32", "bfloat16"], ["forward", "backward", "step"], None)
    assert len(got) == 2 * 2 * (2 + 2 + 1)
    steps = [w for w in got if w.kernel == "step"]
    assert {(w.B, w.T, w.causal) for w in steps} == {(2, 1, True)}  # one token, causal only
    assert {w.causal for w in got if w.kernel == "forward"} == {True, False}
    only = wl.for_shapes([(1, 64, 2, 8)], [2], ["float32"], ["forward"], "non-causal")
    assert only == [Workload("forward", False, 2, "float32", 1, 64, 2, 8)]


def test_dedupe_keeps_one_workload_per_runtime_slot_the_largest():
    a = Workload("forward", True, 2, "float32", 1, 3000, 2, 8)
    b = Workload("forward", True, 2, "float32", 2, 4000, 2, 8)  # bucket 4096 too, larger B*T
    c = Workload("forward", True, 2, "float32", 1, 5000, 2, 8)  # bucket 8192
    got, notes = wl.dedupe([a, b, a, c])
    assert got == [b, c] and len(notes) == 2 and all("T bucket 4096" in n for n in notes)


def _log_line(**change):
    base = {"v": 1, "kind": "forward", "needs_grad": False, "B": 1, "T": 40, "n_seqs": None, "T_bucket": 64,
            "H": 2, "D": 8, "order": 2, "dtype": "float32", "causal": False, "device": "cpu"}
    return json.dumps({**base, **change})


def test_log_lines_become_the_kernels_they_ran():
    lines = [json.loads(x) for x in (
        _log_line(needs_grad=True),
        _log_line(T=40, n_seqs=4, T_bucket=16, causal=True),  # packed: each sequence runs on its own
        _log_line(kind="step", T=1, T_bucket=1, causal=True, B=8),
        _log_line(device="cuda"), _log_line(device="cuda", T=80, T_bucket=128),
        _log_line(dtype="float64"),
    )]
    work, skipped = wl.from_log(lines, dtypes=["float32", "bfloat16", "float16"])
    assert work == [Workload("forward", False, 2, "float32", 1, 40, 2, 8),
                    Workload("backward", False, 2, "float32", 1, 40, 2, 8),
                    Workload("forward", True, 2, "float32", 1, 10, 2, 8),
                    Workload("step", True, 2, "float32", 8, 1, 2, 8)]
    assert skipped == ["skipped 2 forward float32 on cuda call(s): the TVM tuner measures cpu kernels",
                       "skipped 1 forward float64 on cpu call(s): dtype float64 (tuning float32,bfloat16,float16)"]
    only, _ = wl.from_log(lines, dtypes=["float32"], kernels=["backward", "step"], causal="non-causal")
    assert [w.kernel for w in only] == ["backward", "step"]  # the step is causal whatever --non-causal says


def test_kernel_budgets_default_to_two_minutes_and_share_a_total(monkeypatch, tmp_path):
    pytest.importorskip("tvm")
    import schedules.tvm.cli_tune as tvm_tune

    seen = []

    def fake_tune(w, tgt, folder, trials, deadline, rpc, label=""):
        seen.append(deadline - tvm_tune.time.monotonic())
        return None

    monkeypatch.setattr(tvm_tune, "tune_workload", fake_tune)

    def budgets(*argv):
        seen.clear()
        cli_tune.main(["--backend", "tvm", "--shape", "1,64,2,8", "--shape", "1,64,4,8", "--kernels", "forward",
                       "--out", str(tmp_path), *argv])
        return seen

    assert budgets() == pytest.approx([120, 120, 120, 120], abs=1)  # 2 shapes x causal and not
    # a total: each kernel gets its share of what is left (time a kernel did not use goes to the next)
    assert budgets("--time-budget", "40") == pytest.approx([10, 40 / 3, 20, 40], abs=1)
    assert budgets("--time-budget", "40", "--kernel-budget", "3") == pytest.approx([3] * 4, abs=1)


def test_select_fits_its_candidates_and_passes_into_the_deadline(monkeypatch):
    pytest.importorskip("tvm")
    import schedules.tvm.cli_tune as tvm_tune
    from schedules.tvm import measure

    clock = [1000.0]
    monkeypatch.setattr(tvm_tune, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    monkeypatch.setattr(tvm_tune, "_knobs", lambda tgt, w, trace: {"id": trace})
    monkeypatch.setattr(tvm_tune, "_default_cfg", lambda tgt, w: {"id": "default"})
    monkeypatch.setenv("EA_OPS_TVM_SELECT_PASSES", "4")
    calls = []

    def fake_times(w, cfgs, **k):  # this CPU: the runtime's kernels (measure.runtime_times)
        calls.append(len(cfgs))
        clock[0] += 10.0  # each pass takes 10 s
        return [1.0 + i for i in range(len(cfgs))]

    monkeypatch.setattr(measure, "runtime_times", fake_times)
    monkeypatch.setattr(measure, "measure", lambda *a, **k: pytest.fail("MetaSchedule's builds timed on this CPU"))
    tgt = types.SimpleNamespace(kind="cpu", target=None, scheduled=lambda w, c: c)
    top = [types.SimpleNamespace(trace=i) for i in range(40)]
    w = Workload("forward", True, 2, "float32", 1, 64, 2, 8)
    # 25 s left at 1 s a trial: two passes fit 25 / (2 * SELECT_COST) - 1 = 4 candidates and the default
    cfg, chosen, default, passes = tvm_tune.select(w, tgt, top, None, deadline=1025.0, per_trial=1.0)
    assert calls == [5, 5] and passes == 2  # a third pass would end at 1030
    assert cfg == {"id": 0} and chosen == 1.0 and default == 5.0
    calls.clear()
    tvm_tune.select(w, tgt, top, None)  # no deadline: every pass, TOP_K candidates
    assert calls == [tvm_tune.TOP_K + 1] * 4


def test_a_new_record_replaces_the_one_in_its_runtime_slot(tmp_path):
    pytest.importorskip("tvm")
    from schedules.tvm.cli_tune import same_runtime_slot

    def rec(T, bucket, d_tile):
        return {"schema_version": 1, "backend": "tvm", "fingerprint": "fp", "target": {},
                "kernel": {"name": "forward", "causal": True, "order": 2, "dtype": "float32"},
                "workload": {"B": 1, "T": T, "H": 2, "D": 8, "T_bucket": bucket}, "config": {"d_tile": d_tile},
                "latency_us": {"chosen": 1.0, "default": 2.0}, "versions": {}}

    records.add_records(tmp_path, [rec(3000, 4096, 4), rec(5000, 8192, 4)], same_slot=same_runtime_slot)
    records.add_records(tmp_path, [rec(4000, 4096, 8)], same_slot=same_runtime_slot)
    got = records.read_records_file(tmp_path / records.RECORDS_FILE, backend="tvm", fingerprint="fp")
    assert sorted((r["workload"]["T"], r["config"]["d_tile"]) for r in got) == [(4000, 8), (5000, 4)]


# ---------------------------------------------------------------------------------------- real tuning runs
def _tune(*argv, cwd=ROOT, timeout=600):
    env = {**os.environ, "EA_OPS_TVM_SELECT_PASSES": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "ea_ops.cli", "tune", "--backend", "tvm", "--trials", "1",
                           "--json", *argv], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def _records(root):
    from ea_ops.backends.tvm.target import cpu_fingerprint

    fp = cpu_fingerprint()
    return records.read_records_file(root / "tvm" / fp / records.RECORDS_FILE, backend="tvm", fingerprint=fp)


LOG_LINES = [
    "garbage {",
    json.dumps({"__import__('os').system('touch pwned')": 1}),
    _log_line(T=60, causal=True),  # forward, causal: the one CPU call that --causal keeps
    _log_line(B=True),
    _log_line(device="cuda"),
    _log_line(dtype="float64"),
    _log_line(T=60, causal=True),  # the same call from another process
    _log_line(T=60),  # non-causal: left out by --causal
]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """One tiny tuning run (seconds per kernel): a --shape and a --from-log full of bad lines. The log's call
    (T=60) falls in the shape's T bucket (T=48 -> 64): one kernel is tuned, the larger."""
    pytest.importorskip("tvm")
    tmp = tmp_path_factory.mktemp("tune")
    log = tmp / "calls.jsonl"
    text = "\n".join(LOG_LINES) + "\n"
    log.write_text(text)
    res = _tune("--shape", "1,48,2,8", "--orders", "2", "--kernels", "forward", "--causal", "--from-log", str(log),
                "--out", str(tmp / "out"), cwd=tmp)
    assert res.returncode == 0, res.stderr[-3000:]
    assert log.read_text() == text  # the log is left as it was
    return types.SimpleNamespace(res=res, root=tmp / "out", cwd=tmp, recs=_records(tmp / "out"))


def test_a_tuned_shape_is_what_the_next_call_runs(tuned):
    err = tuned.res.stderr
    assert "forward-causal-t2-float32-B1T48H2D8 shares T bucket 64 with forward-causal-t2-float32-B1T60H2D8" in err
    assert "[1/1] forward-causal-t2-float32-B1T60H2D8" in err  # the progress bar names the workload
    (rec,) = tuned.recs
    assert rec["kernel"] == {"name": "forward", "causal": True, "order": 2, "dtype": "float32"}
    assert rec["workload"] == {"B": 1, "T": 60, "H": 2, "D": 8, "T_bucket": 64}
    # A fresh process, as a user's next run: this one's kernel caches may hold the same config built as the
    # default, and then say "default" whatever the record says.
    code = ("import json, torch, ea_ops\n"
            "from ea_ops.backends.tvm import build\n"
            "from tests.helpers import qkv, rel_err\n"
            "q, k, v = qkv((1, 64, 2, 8), dtype=torch.float32)\n"
            "o = ea_ops.ea_attention(q, k, v, order=2, backend='tvm')[0]\n"
            "want = ea_ops.ea_attention(q.double(), k.double(), v.double(), order=2, backend='torch')[0]\n"
            "comp = build.kernel_for('forward', True, 2, 'float32', 2, 8, 64)\n"  # what that call got, cached
            "print(json.dumps({'source': comp.source, 'config': comp.config, 'err': rel_err(o, want)}))\n")
    env = {**os.environ, "EA_OPS_CACHE_DIR": str(tuned.root), "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.splitlines()[-1])
    assert got["source"] == "record" and got["config"] == rec["config"] and got["err"] < 1e-5


def test_from_log_tunes_the_valid_lines_and_says_what_it_skipped(tuned):
    err = tuned.res.stderr
    assert "line 1: not JSON" in err and "line 2: fields differ" in err and "line 4: field 'B' has type bool" in err
    assert "skipped 1 forward float32 on cuda call(s)" in err and "forward float64 on cpu" in err
    assert "left out 1 kernel(s)" in err
    assert [r["workload"]["T"] for r in tuned.recs] == [60]  # the log's call, once; nothing else
    assert not (tuned.cwd / "pwned").exists()


def test_a_packed_call_runs_the_record_of_its_mean_length(record_roots, monkeypatch):
    # A logged call with cu_seqlens is tuned at its mean length (B = 1): the runtime must look records up by
    # that length too, not by the packed T.
    pytest.importorskip("tvm")
    import torch

    import ea_ops
    from ea_ops.backends.tvm import build
    from ea_ops.backends.tvm.target import cpu_fingerprint

    fp = cpu_fingerprint()
    mean_cfg = {"loop": "t_d", "d_tile": 4, "h_tile": 2, "t_unroll": 2, "parallel": False}
    total_cfg = {"loop": "d_t", "d_tile": 8, "h_tile": 1, "t_unroll": 4, "parallel": True}

    def rec(T, cfg):
        return {"schema_version": 1, "backend": "tvm", "fingerprint": fp, "target": {},
                "kernel": {"name": "forward", "causal": True, "order": 2, "dtype": "float32"},
                "workload": {"B": 1, "T": T, "H": 2, "D": 8, "T_bucket": records.t_bucket(T)}, "config": cfg,
                "latency_us": {"chosen": 1.0, "default": 2.0}, "versions": {}}

    records.add_records(record_roots / "user" / "tvm" / fp, [rec(16, mean_cfg), rec(64, total_cfg)])
    seen = []
    real = build.kernel_for

    def spy(*args, **kwargs):
        comp = real(*args, **kwargs)
        seen.append((args[-1], comp.source, comp.config))
        return comp

    monkeypatch.setattr(build, "kernel_for", spy)
    q = torch.randn(1, 64, 2, 8)
    ea_ops.ea_attention(q, q, q, order=2, backend="tvm", cu_seqlens=torch.tensor([0, 10, 30, 47, 64]))
    assert seen == [(16, "record", mean_cfg)]  # four sequences, mean 16 rows
    seen.clear()
    ea_ops.ea_attention(q, q, q, order=2, backend="tvm")
    assert seen == [(64, "record", total_cfg)]
