"""The correctness gate of ``ea-ops bench``: a wrong kernel gets no speed and a non-zero exit."""

from __future__ import annotations

import json

import torch

from ea_ops.state import EAState
from schedules import cli_bench as bench

from .bench_fakes import FAST, install, torch_backend


def run(capsys, *args):
    rc = bench.main([*args, *FAST])
    out = capsys.readouterr()
    return rc, out.out, out.err


def refused(doc: dict) -> bool:
    return all(not w["gate"]["ok"] and w["results"] == [] for w in doc["workloads"])


def test_correct_kernel_passes_and_is_timed(monkeypatch, capsys):
    install(monkeypatch)
    rc, out, err = run(capsys, "--backend", "tvm", "--workload", "smoke", "--peers", "copy", "--json")
    assert rc == 0, err
    doc = json.loads(out)
    for w in doc["workloads"]:
        assert w["gate"]["ok"] and w["gate"]["ref_dtype"] == "float64"
        assert max(w["gate"]["errors"].values()) <= w["gate"]["tol"]
        kernel = w["results"][0]
        assert kernel["peer"] == "kernel" and kernel["status"] == "ok" and kernel["median_s"] > 0


def test_slightly_wrong_forward_is_refused(monkeypatch, capsys):
    def wrong(q, k, v, **kw):
        o, st = torch_backend.attention(q, k, v, **kw)
        return o * (1 + 1e-3), st  # 1e-3 relative: ten times the float32 tolerance

    install(monkeypatch, attention=wrong)
    rc, out, err = run(capsys, "--backend", "tvm", "--workload", "smoke", "--json")
    assert rc == 1
    doc = json.loads(out)
    assert refused(doc)
    assert all(w["gate"]["errors"]["o"] > w["gate"]["tol"] for w in doc["workloads"])
    assert "WRONG against the torch reference" in err and "no speed is reported" in err


def test_nan_in_output_is_refused(monkeypatch, capsys):
    def unwritten(q, k, v, **kw):
        o, st = torch_backend.attention(q, k, v, **kw)
        o = o.clone()
        o[0, -1, 0, 0] = float("nan")  # one element a kernel forgot to write
        return o, st

    install(monkeypatch, attention=unwritten)
    rc, out, err = run(capsys, "--backend", "tvm", "--workload", "smoke", "--json")
    assert rc == 1
    doc = json.loads(out)
    assert refused(doc)
    assert all(w["gate"]["errors"]["o"] is None for w in doc["workloads"])  # non-finite -> null in JSON


def test_wrong_gradient_is_refused_in_fwdbwd_only(monkeypatch, capsys):
    def wrong_dk(q, k, v, **kw):
        k = k + (k - k.detach()) * 0.01  # same values, gradient to k scaled by 1.01
        return torch_backend.attention(q, k, v, **kw)

    install(monkeypatch, attention=wrong_dk)
    rc, out, err = run(capsys, "--backend", "tvm", "--workload", "smoke", "--mode", "fwdbwd", "--json")
    assert rc == 1
    doc = json.loads(out)
    assert refused(doc)
    for w in doc["workloads"]:
        errs, tol = w["gate"]["errors"], w["gate"]["tol"]
        assert errs["dk"] > tol and errs["o"] <= tol and errs["dq"] <= tol and errs["dv"] <= tol
    rc, out, err = run(capsys, "--backend", "tvm", "--workload", "smoke", "--mode", "fwd", "--peers", "copy")
    assert rc == 0, err


def test_wrong_state_in_step_is_refused(monkeypatch, capsys):
    def wrong_step(q, k, v, state, **kw):
        o, st = torch_backend.recurrent_step(q, k, v, state, **kw)
        return o, EAState(st.S, st.Z * 1.01, st.m)

    install(monkeypatch, recurrent_step=wrong_step)
    rc, out, err = run(capsys, "--backend", "tvm", "--shape", "1,256,2,16", "--mode", "step", "--json")
    assert rc == 1
    doc = json.loads(out)
    assert refused(doc)
    assert doc["workloads"][0]["gate"]["errors"]["Z"] > doc["workloads"][0]["gate"]["tol"]


def test_raising_kernel_is_refused(monkeypatch, capsys):
    def crash(q, k, v, **kw):
        raise RuntimeError("kernel launch failed")

    install(monkeypatch, attention=crash)
    rc, out, err = run(capsys, "--backend", "tvm", "--workload", "smoke")
    assert rc == 1
    assert "raised RuntimeError: kernel launch failed" in err
    assert "NOT TIMED" in out


def test_unavailable_backend_is_a_clear_error(monkeypatch, capsys):
    install(monkeypatch, "triton", unavailable="no CUDA device")
    rc, out, err = run(capsys, "--backend", "triton", "--workload", "smoke")
    assert rc == 2
    assert "backend='triton' is not available: no CUDA device" in err and "Available: torch" in err
    assert out == ""


def test_float32_reference_for_large_workloads(monkeypatch):
    from schedules.bench import gate

    assert gate.reference_dtype(gate.REF64_MAX_ELEMS) == torch.float64
    assert gate.reference_dtype(gate.REF64_MAX_ELEMS + 1) == torch.float32
