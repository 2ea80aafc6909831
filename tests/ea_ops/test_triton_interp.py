"""Runs the interpreter-mode Triton tests (tests/ea_ops/triton_interp/) in their own processes.

``TRITON_INTERPRET=1`` must be set before Triton is imported, and this process imports Triton for the
ahead-of-time tests, so each module runs in a child pytest. The children are started at collection
(``tests/conftest.py`` calls ``start``) and run one at a time on a background thread, beside the rest of the
suite: the interpreter is single-threaded Python, so they use the core the main session leaves idle. These
tests run last and wait for their child. The child's report is parsed: every test must have passed (none
skipped), and a failure shows the child's output here.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import os
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent / "triton_interp"
# the least number of tests each module holds: a module that silently collects fewer fails here
MODULES = {"interp_kernels.py": 47, "interp_api.py": 15, "interp_hostile.py": 64, "interp_properties.py": 9}
# per child; generous because the children share the machine with the rest of the suite
TIMEOUT_S = 900

_pool: concurrent.futures.ThreadPoolExecutor | None = None
_runs: dict[str, concurrent.futures.Future] = {}
_procs: list[subprocess.Popen] = []


def _run(module: str, folder: Path) -> tuple[int, str, Path]:
    report = folder / "report.xml"
    env = {**os.environ, "TRITON_INTERPRET": "1", "EA_OPS_CACHE_DIR": str(folder / "cache")}
    cmd = [sys.executable, "-m", "pytest", "-q", str(HERE / module), f"--junitxml={report}",
           # the interpreter evaluates both sides of tl.where; inf - inf or exp(inf) in the discarded side warns
           "-W", "ignore:invalid value encountered:RuntimeWarning", "-W", "ignore:overflow encountered:RuntimeWarning"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _procs.append(proc)
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        out += f"\n[killed after {TIMEOUT_S} s]"
    return proc.returncode, out[-8000:], report


def start(modules: list[str] | None = None) -> None:
    """Starts the child runs of ``modules`` (all by default) in the background, once."""
    global _pool
    if _pool is None:
        _pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="triton-interp")
        atexit.register(stop)
    for module in modules or sorted(MODULES):
        if module not in _runs:
            folder = Path(tempfile.mkdtemp(prefix=f"ea-ops-{module[:-3]}-"))
            atexit.register(shutil.rmtree, folder, True)
            _runs[module] = _pool.submit(_run, module, folder)


def stop() -> None:
    """Ends the children still running (an interrupted session must not leave them behind)."""
    for fut in _runs.values():
        fut.cancel()
    for proc in _procs:
        if proc.poll() is None:
            proc.kill()
    if _pool is not None:
        _pool.shutdown(wait=False, cancel_futures=True)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_triton_kernels_under_the_interpreter(module):
    start([module])
    rc, out, report = _runs[module].result()
    assert rc == 0, f"interpreter tests failed ({module}):\n{out}"
    suite = ET.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    tests, failures, errors, skipped = (int(suite.get(a, 0)) for a in ("tests", "failures", "errors", "skipped"))
    assert (failures, errors, skipped) == (0, 0, 0), out
    assert tests >= MODULES[module], f"only {tests} tests ran in {module}:\n{out}"
