"""``torch.compile(fullgraph=True)`` holds every backend on its first call (issue 12, item 5).

The backend is chosen outside the traced graph (``dispatch._choose_traced``) and the torch backend takes a
branch-free path under compile (``kernels._rows``), so nothing breaks the graph: not the import of a backend,
not the records lookup, not a data-dependent ``.item()``. Each first call runs in a fresh interpreter: in this
one, earlier tests have already loaded the backends.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

import ea_ops
from ea_ops.testing import rel_err

pytest.importorskip("tvm")

COLD = textwrap.dedent("""
    import sys, torch, ea_ops
    from ea_ops.testing import rel_err
    backend, compiler = sys.argv[1], sys.argv[2]
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 20, 2, 8, generator=g) * 0.4 for _ in range(3))
    q.requires_grad_(); k.requires_grad_(); v.requires_grad_()

    def f(q, k, v):
        o, st = ea_ops.ea_attention(q, k, v, order=4, backend=backend, output_final_state=True)
        o_t, st2 = ea_ops.ea_recurrent_step(q[:, -1].detach(), k[:, -1].detach(), v[:, -1].detach(), st,
                                            order=4, backend=backend)
        return o, o_t, st2.S

    got = torch.compile(f, fullgraph=True, backend=compiler)(q, k, v)  # the first ea_ops call of the process
    gq = torch.autograd.grad(got[0].sum(), (q, k, v))
    want = f(q, k, v)
    wq = torch.autograd.grad(want[0].sum(), (q, k, v))
    errs = [rel_err(a, b) for a, b in zip((*got, *gq), (*want, *wq))]
    print("errs", max(errs))
    assert max(errs) < 1e-5, errs
""")


@pytest.mark.parametrize(("backend", "compiler"), [("auto", "inductor"), ("torch", "aot_eager"),
                                                   ("tvm", "aot_eager")])
def test_fullgraph_on_the_first_call(backend, compiler, tmp_path):
    script = tmp_path / "cold.py"
    script.write_text(COLD)
    proc = subprocess.run([sys.executable, str(script), backend, compiler], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "errs" in proc.stdout


def test_torch_backend_under_compile_takes_the_stable_path_for_large_keys():
    """Keys near |k| = 12 need the explicit weights (the cumsum path overflows): under compile every row
    computes them and ``torch.where`` selects, which must give the eager answer, gradients included."""
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 70, 2, 4, generator=g) for _ in range(3))
    k[:, :30] += 12.0  # keys near 12 first, then small ones: a running-min drop far beyond the cumsum limit
    q[:, 5:] += 11.0
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]

    def f(q, k, v):
        return ea_ops.ea_attention(q, k, v, order=6, backend="torch")[0]

    got = torch.compile(f, fullgraph=True, backend="aot_eager")(*leaves)
    want = f(*leaves)
    assert torch.isfinite(want).all()
    assert rel_err(got, want) < 1e-5
    for a, b in zip(torch.autograd.grad(got.sum(), leaves), torch.autograd.grad(want.sum(), leaves)):
        assert rel_err(a, b) < 1e-5


def test_a_second_shape_recompiles_without_breaking_the_graph():
    torch._dynamo.reset()
    fn = torch.compile(lambda q, k, v: ea_ops.ea_attention(q, k, v, order=2)[0], fullgraph=True,
                       backend="aot_eager")
    for T in (9, 17, 33):
        q, k, v = (torch.randn(1, T, 2, 8) * 0.5 for _ in range(3))
        assert rel_err(fn(q, k, v), ea_ops.ea_attention(q, k, v, order=2)[0]) < 1e-5


def test_out_under_compile_holds_the_graph_and_writes_the_buffer():
    torch._dynamo.reset()
    q, k, v = (torch.randn(1, 40, 2, 8) * 0.5 for _ in range(3))
    out = torch.full_like(q, float("nan"))
    fn = torch.compile(lambda q, k, v, out: ea_ops.ea_attention(q, k, v, order=2, out=out)[0], fullgraph=True,
                       backend="aot_eager")
    got = fn(q, k, v, out)
    assert got.data_ptr() == out.data_ptr()
    assert rel_err(out, ea_ops.ea_attention(q, k, v, order=2, backend="torch")[0]) < 1e-5
