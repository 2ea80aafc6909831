"""The ``ea-ops`` entry point and ``ea-ops info``."""

import json
import subprocess
import sys

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
