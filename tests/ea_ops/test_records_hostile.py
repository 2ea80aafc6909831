"""Records files that are not small plain JSON (a FIFO, a link to /dev/zero, a huge or deeply nested file,
bad UTF-8, a folder): one warning, no records, and neither ``backend="auto"`` nor ``ea-ops info`` breaks.

Each case runs in a child process with a time limit and, while it reads, an address-space limit: a
regression (a read that blocks on the FIFO or never ends on /dev/zero) fails the test instead of hanging
the suite or filling the machine's memory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import ea_ops
from ea_ops import records
from ea_ops.backends.tvm import backend, tuned
from ea_ops.backends.tvm.target import cpu_fingerprint

ROOT = Path(__file__).resolve().parents[2]

# The child: read the file twice, then run "auto" and `ea-ops info`, recording every warning on the way.
CHILD = r"""
import contextlib, io, json, resource, sys, warnings
from pathlib import Path

import ea_ops
from ea_ops import cli, records
from ea_ops.backends.tvm.target import cpu_fingerprint
from tests.helpers import qkv, rel_err

def vm_bytes():
    for line in open("/proc/self/status"):
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024

path = Path(sys.argv[1])
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (vm_bytes() + (512 << 20), hard))
    try:
        got = [records.read_records_file(path, backend="tvm", fingerprint=cpu_fingerprint()) for _ in range(2)]
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    q, k, v = qkv((1, 16, 2, 8), dtype=__import__("torch").float32, seed=3)
    o = ea_ops.ea_attention(q, k, v, order=2, backend="auto")[0]
    err = rel_err(o, ea_ops.ea_attention(q, k, v, order=2, backend="torch")[0])
    with contextlib.redirect_stdout(io.StringIO()) as out:
        rc = cli.main(["info", "--json"])
    info = json.loads(out.getvalue())
print(json.dumps({"records": got, "err": err, "rc": rc, "info_records": info["backends"]["tvm"].get("records"),
                  "warnings": [str(w.message) for w in caught if "ea-ops" in str(w.message)]}))
"""


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _dev_zero(path: Path) -> None:
    path.symlink_to("/dev/zero")


def _too_big(path: Path) -> None:
    # Valid JSON and a valid (empty) records file, padded one byte past the limit: size alone rejects it.
    head = b'{"schema_version": 1, "records": []}'
    path.write_bytes(head + b" " * (records.MAX_RECORDS_BYTES + 1 - len(head)))


def _deep(path: Path) -> None:
    path.write_text("[" * 100_000 + "]" * 100_000)


def _bad_utf8(path: Path) -> None:
    path.write_bytes(b'{"schema_version": 1, "records": ["\xff\xfe"]}')


def _folder(path: Path) -> None:
    path.mkdir()


@pytest.mark.parametrize("make", [_fifo, _dev_zero, _too_big, _deep, _bad_utf8, _folder],
                         ids=lambda f: f.__name__.strip("_"))
def test_hostile_records_file_gives_one_warning_and_nothing_breaks(record_roots, make):
    folder = record_roots / "user" / "tvm" / cpu_fingerprint()
    folder.mkdir(parents=True)
    path = folder / records.RECORDS_FILE
    make(path)
    try:  # the child inherits EA_OPS_CACHE_DIR / EA_OPS_SHIPPED_CACHE; `-c` puts its cwd (ROOT) on sys.path
        out = subprocess.run([sys.executable, "-c", CHILD, str(path)], cwd=ROOT, capture_output=True, text=True,
                             timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"reading a {make.__name__.strip('_')} records file did not finish in 60 s")
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["records"] == [[], []]
    assert len(res["warnings"]) == 1, res["warnings"]
    assert "skipping tuned records" in res["warnings"][0] and str(path) in res["warnings"][0]
    assert res["err"] < 2e-5  # the float32 bound of test_tvm_backend's record test, whichever backend ran
    assert res["rc"] == 0 and res["info_records"] in (0, None)


def test_a_records_lookup_that_raises_falls_back_to_the_default_schedule_with_one_warning(monkeypatch):
    from ea_ops.backends.tvm import build

    def broken(*args, **kwargs):
        raise RecursionError("nested too deeply")

    monkeypatch.setattr(tuned, "candidates", broken)
    records._warned.clear()
    q = torch.zeros(1, 4, 2, 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            assert backend.prefers(q, 2) is True  # reads no file
            assert build.choose_cpu_config("forward", True, 2, "float32", 2, 8, 4)[1] == "default"
            o, _ = ea_ops.ea_attention(q, q, q, order=2, backend="auto")
            assert torch.isfinite(o).all()
    msgs = [str(w.message) for w in caught]
    assert len(msgs) == 1 and "RecursionError" in msgs[0] and "default schedule" in msgs[0]
