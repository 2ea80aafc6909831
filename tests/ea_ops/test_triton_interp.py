"""Runs the interpreter-mode Triton tests (tests/ea_ops/triton_interp/) in their own process.

``TRITON_INTERPRET=1`` must be set before Triton is imported, and this process imports Triton for the
ahead-of-time tests, so each module runs in a child pytest. The child's report is parsed: every test must
have passed (none skipped), and a failure shows the child's output here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent / "triton_interp"
# the least number of tests each module holds: a module that silently collects fewer fails here
MODULES = {"interp_kernels.py": 47, "interp_api.py": 15, "interp_hostile.py": 64, "interp_properties.py": 9}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_triton_kernels_under_the_interpreter(module, tmp_path):
    report = tmp_path / "report.xml"
    env = {**os.environ, "TRITON_INTERPRET": "1", "EA_OPS_CACHE_DIR": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "pytest", "-q", str(HERE / module), f"--junitxml={report}",
           # the interpreter evaluates both sides of tl.where; inf - inf or exp(inf) in the discarded side warns
           "-W", "ignore:invalid value encountered:RuntimeWarning", "-W", "ignore:overflow encountered:RuntimeWarning"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    out = (proc.stdout + proc.stderr)[-8000:]
    assert proc.returncode == 0, f"interpreter tests failed ({module}):\n{out}"
    suite = ET.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    tests, failures, errors, skipped = (int(suite.get(a, 0)) for a in ("tests", "failures", "errors", "skipped"))
    assert (failures, errors, skipped) == (0, 0, 0), out
    assert tests >= MODULES[module], f"only {tests} tests ran in {module}:\n{out}"
