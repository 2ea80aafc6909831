"""The ``ea-ops`` entry point and ``ea-ops info``."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ea_ops import cli


def test_info_json_lists_torch_backend():
    out = subprocess.run([sys.executable, "-m", "ea_ops.cli", "info", "--json"], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["backends"]["torch"]["available"] is True
    assert set(info["backends"]) >= {"torch", "tvm", "triton"}


def test_unknown_command_and_help(capsys):
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err
    assert cli.main(["--help"]) == 0
    assert "select-order" in capsys.readouterr().out


def _fail_if_called(what):
    def called(*args, **kwargs):
        raise AssertionError(f"{what} ran: the command should have stopped before any work")

    return called


# name -> (command line before --out, the expensive step that must not run, a file it writes into --out
# or "" if none, the package the command needs or None)
COMMANDS = {
    "bench": (["bench", "--workload", "smoke", "--threads", "1", "--no-progress"],
              "schedules.bench.runner.Runner.run", "bench-smoke.json", None),
    "compile-tvm": (["compile", "--backend", "tvm", "--target", "cpu", "--orders", "2"],
                    "ea_ops.backends.tvm.build.build_cpu", "manifest.json", "tvm"),
    "compile-triton": (["compile", "--backend", "triton", "--target", "cuda:sm_90", "--orders", "2"],
                       "schedules.triton.aot.compile_build", "manifest.json", "triton"),
    "report": (["report", "--preset", "tiny", "--no-progress"], "analysis.sweep.run_sweep", "report.json", "mpmath"),
    # tune writes its records in <out>/<backend>/<fingerprint>/: no fixed file name in --out itself
    "tune": (["tune", "--backend", "tvm", "--target", "cpu", "--orders", "2"], "schedules.tvm.cli_tune.run", "",
             "tvm"),
}
KINDS = ("a-file", "under-a-file", "unwritable", "name-is-a-folder")


def _bad_out(kind, tmp_path, name):
    if kind == "a-file":
        (tmp_path / "f").write_text("x")
        return tmp_path / "f", "is not a folder"
    if kind == "under-a-file":
        (tmp_path / "f").write_text("x")
        return tmp_path / "f" / "sub", "cannot be created"
    if kind == "unwritable":
        if os.geteuid() == 0:  # root ignores mode bits; /proc/self is a folder nobody can add files to
            return Path("/proc/self"), "is not writable"
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        return ro, "is not writable"
    (tmp_path / "o" / name).mkdir(parents=True)  # an output name taken by a folder
    return tmp_path / "o", f"{name!r} is an existing folder"


@pytest.mark.parametrize("command, kind", [(c, k) for c in sorted(COMMANDS) for k in KINDS
                                           if COMMANDS[c][2] or k != "name-is-a-folder"])
def test_a_bad_out_fails_fast_with_one_line(command, kind, tmp_path, monkeypatch, capsys):
    argv, expensive, name, needs = COMMANDS[command]
    if needs:
        pytest.importorskip(needs)
    monkeypatch.setattr(expensive, _fail_if_called(expensive))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    out, words = _bad_out(kind, tmp_path, name)
    rc = cli.main([*argv, "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and str(out) in lines[0], err


def test_bench_unknown_backend_is_an_argument_error(monkeypatch, capsys):
    import schedules.bench.runner

    monkeypatch.setattr(schedules.bench.runner.Runner, "run", _fail_if_called("Runner.run"))
    with pytest.raises(SystemExit) as info:
        cli.main(["bench", "--backend", "nope", "--workload", "smoke"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]  # argparse: the usage, then one line naming the error
    assert "argument --backend: invalid choice: 'nope'" in last and "auto" in last and "tvm" in last
