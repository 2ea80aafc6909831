"""What ``backend="auto"`` picks, ``EA_OPS_BACKEND``, and ``explain_backend`` / ``ea-ops info --explain``."""

from __future__ import annotations

import json

import pytest
import torch

import ea_ops
from ea_ops import cli, dispatch
from ea_ops.errors import BackendUnavailableError

pytest.importorskip("tvm")


def _q(shape=(1, 16, 2, 8), dtype=torch.float32):
    return torch.zeros((), dtype=dtype).expand(shape)


@pytest.mark.parametrize("shape", [(1, 16, 2, 8), (1, 2048, 12, 48), (3, 5, 1, 7), (2, 3, 5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("order", [0, 4, 10])
def test_auto_on_the_cpu_takes_tvm_at_any_shape_order_and_dtype_without_records(record_roots, shape, dtype,
                                                                                 order):
    q = _q(shape, dtype)
    assert dispatch.resolve("auto", q, causal=True, order=order, needs_grad=True).NAME == "tvm"
    ex = ea_ops.explain_backend(q, order=order, needs_grad=True)
    assert ex.backend == "tvm" and ex.via == "auto"
    kernels = ex.schedule["kernels"]
    assert set(kernels) == ({"step"} if len(shape) == 3 else {"forward", "backward"})
    assert all(k["source"] == "default" for k in kernels.values())


def test_auto_falls_back_to_torch_only_where_tvm_cannot_run_the_call():
    ex = ea_ops.explain_backend(_q(dtype=torch.float64))
    assert ex.backend == "torch" and "float64" in ex.passed["tvm"]
    assert "chunk" in ex.schedule


def test_env_backend_overrides_auto_but_not_an_explicit_argument(monkeypatch):
    q = _q()
    monkeypatch.setenv("EA_OPS_BACKEND", "torch")
    assert dispatch.resolve("auto", q, causal=True, order=2, needs_grad=False).NAME == "torch"
    assert dispatch.resolve("tvm", q, causal=True, order=2, needs_grad=False).NAME == "tvm"
    assert ea_ops.explain_backend(q).via == "EA_OPS_BACKEND"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 9, 2, 4, generator=g)
    assert torch.equal(ea_ops.ea_attention(x, x, x, order=2)[0], ea_ops.ea_attention(x, x, x, order=2,
                                                                                     backend="torch")[0])
    monkeypatch.setenv("EA_OPS_BACKEND", "auto")
    assert dispatch.resolve("auto", q, causal=True, order=2, needs_grad=False).NAME == "tvm"
    monkeypatch.setenv("EA_OPS_BACKEND", "tvm")
    with pytest.raises(BackendUnavailableError, match="EA_OPS_BACKEND='tvm' cannot run this call: dtype"):
        ea_ops.ea_attention(*(torch.zeros(1, 2, 1, 4, dtype=torch.float64),) * 3)
    monkeypatch.setenv("EA_OPS_BACKEND", "fastest")
    with pytest.raises(ValueError, match="EA_OPS_BACKEND must be one of"):
        ea_ops.ea_attention(x, x, x)
    with pytest.raises(ValueError, match="EA_OPS_BACKEND must be one of"):
        ea_ops.explain_backend(q)


def test_explain_backend_rejects_bad_arguments():
    with pytest.raises(TypeError, match="q must be a torch.Tensor"):
        ea_ops.explain_backend([1, 2])
    with pytest.raises(ValueError, match=r"q must have shape \[B, T, H, D\]"):
        ea_ops.explain_backend(_q((4, 4)))
    with pytest.raises(ValueError, match="order must be even"):
        ea_ops.explain_backend(_q(), order=3)
    with pytest.raises(TypeError, match="needs_grad must be a bool"):
        ea_ops.explain_backend(_q(), needs_grad=1)
    with pytest.raises(ValueError, match="causal=True"):
        ea_ops.explain_backend(_q((1, 2, 4)), causal=False)
    with pytest.raises(BackendUnavailableError, match="backend='triton'"):
        ea_ops.explain_backend(_q(), backend="triton")


def test_info_explain_prints_the_choice_as_text_and_json(capsys, record_roots):
    assert cli.main(["info", "--explain", "--shape", "1,2048,12,48", "--order", "4", "--grad"]) == 0
    text = capsys.readouterr().out
    assert "backend: tvm (chosen by auto)" in text and "forward: default schedule" in text
    assert "backward: default schedule" in text
    assert cli.main(["info", "--explain", "--shape", "8,8,64", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["backend"] == "tvm" and data["call"]["kind"] == "step" and "step" in data["schedule"]["kernels"]
    assert cli.main(["info", "--explain", "--dtype", "float64", "--backend", "tvm"]) == 2
    assert "float64" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["info", "--explain", "--shape", "1,2"])


def test_info_says_what_auto_runs_on_the_cpu_and_which_records_transfer(capsys):
    assert cli.main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["auto_on_cpu"] == "tvm"
    assert info["large_outputs"] in ("fresh", "fresh-huge", "reused", "unknown")
    assert isinstance(info["backends"]["tvm"]["transferable_records"], dict)


def test_info_says_whether_large_cpu_outputs_get_fresh_pages(monkeypatch, capsys):
    import platform

    from ea_ops import cli_info

    if platform.libc_ver()[0] != "glibc":
        assert cli_info.large_outputs() == "unknown"
        return
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.setattr(cli_info.host_pages, "huge_pages_mode", lambda: "never")
    assert cli_info.large_outputs() == "fresh"
    monkeypatch.setattr(cli_info.host_pages, "huge_pages_mode", lambda: "madvise")
    assert cli_info.large_outputs() == "fresh-huge"
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=4294967296")
    assert cli_info.large_outputs() == "reused"
