"""EA_OPS_LOG_CALLS: one JSON line per distinct call signature, never an error in the call, read back validated."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

import ea_ops
from ea_ops import call_log, records

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def log(tmp_path, monkeypatch):
    path = tmp_path / "calls.jsonl"
    monkeypatch.setenv(call_log.ENV, str(path))
    call_log.reset()
    records._warned.clear()
    yield path
    call_log.reset()


def _qkv(B=1, T=16, H=2, D=4, requires_grad=False):
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(B, T, H, D, generator=g).requires_grad_(requires_grad) for _ in range(3))


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_one_line_per_distinct_signature_with_backward_noted(log):
    q, k, v = _qkv()
    for _ in range(2):  # two identical calls: one line
        ea_ops.ea_attention(q, k, v, order=2, backend="torch")
    assert len(_lines(log)) == 1
    qg, kg, vg = _qkv(requires_grad=True)
    ea_ops.ea_attention(qg, kg, vg, order=2, backend="torch")[0].sum().backward()
    ea_ops.ea_attention(q, k, v, order=4, causal=False, backend="torch", cu_seqlens=torch.tensor([0, 3, 16]))
    ea_ops.ea_recurrent_step(q[:, 0], k[:, 0], v[:, 0], None, order=2, backend="torch")
    ea_ops.ea_recurrent_step(q[:, 1], k[:, 1], v[:, 1], None, order=2, backend="torch")  # the same signature
    lines = _lines(log)
    assert len(lines) == 4
    plain, grad, packed, step = lines
    assert plain == {"v": 1, "kind": "forward", "needs_grad": False, "B": 1, "T": 16, "n_seqs": None,
                     "T_bucket": 16, "H": 2, "D": 4, "order": 2, "dtype": "float32", "causal": True,
                     "device": "cpu"}
    assert grad == {**plain, "needs_grad": True}
    # two sequences of mean length 8: the bucket of what each kernel launch sees
    assert packed == {**plain, "order": 4, "causal": False, "n_seqs": 2, "T_bucket": 8}
    assert step == {**plain, "kind": "step", "T": 1, "T_bucket": 1}
    good, bad = call_log.read_log(log)
    assert good == lines and bad == []
    assert [call_log.kernels_of(x) for x in good] == [["forward"], ["forward", "backward"], ["forward"], ["step"]]
    assert call_log.mean_length(packed) == 8


def test_unset_costs_one_environment_lookup(monkeypatch):
    monkeypatch.delenv(call_log.ENV, raising=False)
    call_log.reset()
    touched = []

    class Spy:  # stands for torch inside call_log: any use of it there is seen
        def __getattr__(self, name):
            touched.append(name)
            return getattr(torch, name)

    monkeypatch.setattr(call_log, "torch", Spy())
    q, k, v = _qkv()
    ea_ops.ea_attention(q, k, v, order=2, backend="torch")
    ea_ops.ea_recurrent_step(q[:, 0], k[:, 0], v[:, 0], None, order=2, backend="torch")
    assert touched == [] and not call_log._seen  # returned at the lookup, before anything else ran


@pytest.mark.parametrize("kind", ["folder", "fifo", "missing-folder"])
def test_an_unwritable_log_warns_once_and_never_breaks_the_call(kind, tmp_path, monkeypatch):
    target = {"folder": tmp_path, "fifo": tmp_path / "fifo", "missing-folder": tmp_path / "no" / "calls"}[kind]
    if kind == "fifo":
        os.mkfifo(target)  # no reader: opening it must fail at once, not block the call
    monkeypatch.setenv(call_log.ENV, str(target))
    call_log.reset()
    q, k, v = _qkv()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        got = ea_ops.ea_attention(q, k, v, order=2, backend="torch")[0]
        ea_ops.ea_attention(q, k, v, order=4, backend="torch")  # another signature: logging is off, no warning
    ours = [w for w in seen if call_log.ENV in str(w.message)]
    assert len(ours) == 1 and str(target) in str(ours[0].message)
    assert torch.equal(got, ea_ops.ea_attention(q, k, v, order=2, backend="torch")[0])
    if kind == "folder":
        assert list(tmp_path.iterdir()) == []
    call_log.reset()


def test_processes_log_once_per_signature_in_whole_lines(tmp_path):
    path = tmp_path / "calls.jsonl"
    start = time.time() + 3  # both children have imported torch by then: their writes overlap
    code = ("import os, sys, time, torch, ea_ops\n"
            "from ea_ops import call_log\n"
            "for rep in range(2):\n"  # real calls, each signature twice: one line each
            "    for T in (5, 9):\n"
            "        q = torch.zeros(1, T, 1, 2)\n"
            "        ea_ops.ea_attention(q, q, q, order=2, backend='torch')\n"
            f"time.sleep(max(0.0, {start} - time.time()))\n"
            "for T in range(100, 3100):\n"  # then many signatures at once, as fast as the log takes them
            "    call_log.note('forward', torch.empty(1, T, 1, 2, device='meta'), order=2, causal=True,\n"
            "                  needs_grad=False)\n")
    env = {**os.environ, call_log.ENV: str(path)}
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()
    good, bad = call_log.read_log(path)
    assert bad == []  # no line torn or merged
    assert sorted(x["T"] for x in good if x["device"] == "cpu") == [5, 5, 9, 9]  # once per process
    assert sorted(x["T"] for x in good if x["device"] == "meta") == sorted(list(range(100, 3100)) * 2)


def _line(**change):
    base = {"v": 1, "kind": "forward", "needs_grad": False, "B": 1, "T": 64, "n_seqs": None, "T_bucket": 64,
            "H": 2, "D": 8, "order": 2, "dtype": "float32", "causal": True, "device": "cpu"}
    return json.dumps({**base, **change})


@pytest.mark.parametrize("text, why", [
    ("not json", "not JSON"),
    ("[1, 2]", "not a JSON object"),
    ("[" * 100_000 + "]" * 100_000, "longer than"),
    ("[" * 500 + "]" * 500, "not a JSON object"),
    (json.dumps({"__import__('os').system('touch pwned')": 1}), "fields differ"),
    (_line(extra=1), "unknown ['extra']"),
    (_line(B=True), "'B' has type bool"),
    (_line(causal=1), "'causal' has type int"),
    (_line(T=2**40, T_bucket=2**40), "T=1099511627776 is not in"),
    (_line(T=0), "T=0 is not in"),
    (_line(T_bucket=32), "not the bucket"),
    (_line(order=3), "order=3"),
    (_line(kind="backward"), "kind 'backward'"),
    (_line(device="../../x"), "device must be a plain name"),
    (_line(dtype="float32; rm -rf"), "dtype must be a plain name"),
    (_line(v=2), "version 2"),
    (_line(kind="step"), "a step has T=1"),
    (_line(n_seqs=65), "n_seqs=65"),
])
def test_a_bad_line_is_skipped_with_its_reason(text, why, tmp_path):
    path = tmp_path / "log"
    path.write_text(_line() + "\n" + text + "\n" + _line(T=100, T_bucket=128) + "\n")
    good, bad = call_log.read_log(path)
    assert [x["T"] for x in good] == [64, 100]  # the lines around it are kept
    assert len(bad) == 1 and bad[0].startswith("line 2: ") and why in bad[0], bad
    assert not (tmp_path / "pwned").exists()


def test_a_log_that_is_not_a_small_regular_file_is_refused(tmp_path):
    big = tmp_path / "big"
    with open(big, "wb") as fh:
        fh.truncate(call_log.MAX_LOG_BYTES + 1)
    with pytest.raises(OSError, match="limit"):
        call_log.read_log(big)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="regular"):
        call_log.read_log(fifo)
    (tmp_path / "bad").write_bytes(b"\xff\xfe\n")
    assert call_log.read_log(tmp_path / "bad") == ([], ["line 1: not UTF-8"])


def test_calls_under_torch_compile_are_not_logged_and_the_graph_holds(log):
    pytest.importorskip("tvm")
    q, k, v = _qkv(T=12)
    ea_ops.ea_attention(q, k, v, order=2, backend="tvm")  # eager: logged (and dispatch's module cache filled)
    fn = torch.compile(lambda q, k, v: ea_ops.ea_attention(q, k, v, order=2, backend="tvm")[0],
                       backend="aot_eager", fullgraph=True)
    q2, k2, v2 = _qkv(B=2, T=12)
    got = fn(q2, k2, v2)
    assert [x["B"] for x in _lines(log)] == [1]  # the compiled call wrote nothing
    assert torch.allclose(got, ea_ops.ea_attention(q2, k2, v2, order=2, backend="torch")[0], atol=1e-5)
    assert [x["B"] for x in _lines(log)] == [1, 2]  # eager calls are logged again
