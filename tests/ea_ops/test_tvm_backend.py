"""The TVM backend behind the dispatch interface: records, "auto", describe, no eager TVM import."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

pytest.importorskip("tvm")

import ea_ops  # noqa: E402
from ea_ops import records  # noqa: E402
from ea_ops.backends.tvm import backend, build, tuned  # noqa: E402
from ea_ops.backends.tvm.target import cpu_fingerprint  # noqa: E402
from tests.helpers import qkv, rel_err  # noqa: E402

pytestmark = pytest.mark.tvm
ROOT = Path(__file__).resolve().parents[2]


def record(**over):
    rec = {
        "schema_version": 1, "backend": "tvm", "fingerprint": cpu_fingerprint(),
        "target": {"kind": "llvm", "mcpu": "test"},
        "kernel": {"name": "forward", "causal": True, "order": 2, "dtype": "float32"},
        "workload": {"B": 1, "T": 32, "H": 2, "D": 8, "T_bucket": 32},
        "config": {"loop": "t_d", "d_tile": 4, "h_tile": 2, "t_unroll": 2, "parallel": False},
        "latency_us": {"chosen": 1.0, "default": 2.0}, "versions": {"tvm": "test"},
    }
    rec.update(over)
    return rec


@pytest.fixture
def cache(record_roots):
    """This target's records folder in the (temporary) user cache."""
    records._warned.clear()
    return record_roots / "user" / "tvm" / cpu_fingerprint()


@pytest.fixture
def shipped(cache, record_roots):
    """This target's records folder in the (temporary) shipped cache, ``$EA_OPS_SHIPPED_CACHE``."""
    return record_roots / "shipped" / "tvm" / cpu_fingerprint()


def test_auto_runs_tvm_on_any_cpu_and_a_record_for_this_target_is_applied(cache):
    q, k, v = qkv((1, 20, 2, 8), dtype=torch.float32, seed=1)
    # No record: auto still takes TVM, with the default schedule.
    assert backend.prefers(q, 2) and backend.prefers(q, 4) and not backend.prefers(q.double(), 2)
    assert ea_ops.dispatch.resolve("auto", q, causal=True, order=2, needs_grad=False).NAME == "tvm"
    assert ea_ops.explain_backend(q, order=2).schedule["kernels"]["forward"]["source"] == "default"
    records.add_records(cache, [record()])
    assert ea_ops.dispatch.resolve("auto", q, causal=True, order=2, needs_grad=False).NAME == "tvm"
    assert ea_ops.dispatch.resolve("auto", q.double(), causal=True, order=2, needs_grad=False).NAME == "torch"
    fwd = ea_ops.explain_backend(q, order=2).schedule["kernels"]["forward"]
    assert fwd["source"] == "record" and fwd["record"]["fingerprint"] == cpu_fingerprint()
    comp = build.kernel_for("forward", True, 2, "float32", 2, 8, 20)
    assert comp.source == "record" and comp.config == record()["config"]
    o, _ = ea_ops.ea_attention(q, k, v, order=2, backend="auto")
    assert rel_err(o, ea_ops.ea_attention(q, k, v, order=2, backend="torch")[0]) < 2e-5
    info = backend.describe()
    assert info["fingerprint"] == cpu_fingerprint() and info["records"] == 1 and info["mcpu"]


def test_a_shipped_record_for_this_target_is_applied_at_run_time(shipped, monkeypatch):
    # The shipped cache holds records of other CPU classes only: write one for this machine's fingerprint, with
    # knobs no other test in this module builds, so the kernel below is built here from this record.
    from ea_ops.backends.tvm.schedule import default_cpu_config

    cfg = {"loop": "t_d", "d_tile": 2, "h_tile": 1, "t_unroll": 4, "parallel": True}
    assert cfg != default_cpu_config("forward", 2, 8)
    assert records.record_dirs("tvm", cpu_fingerprint())[1] == shipped
    records.add_records(shipped, [record(config=cfg)])
    assert [r["config"] for r in tuned.load()] == [cfg]
    built = []
    real = build.kernel_for
    monkeypatch.setattr(build, "kernel_for", lambda *a, **kw: built.append(real(*a, **kw)) or built[-1])
    q, k, v = qkv((1, 20, 2, 8), dtype=torch.float32, seed=4)
    o, _ = ea_ops.ea_attention(q, k, v, order=2, backend="tvm")
    assert [(c.kernel, c.source, c.config) for c in built] == [("forward", "record", cfg)]
    assert any(key[-1] == build._freeze(cfg) for key, _ in build.BUILD_LOG)
    assert rel_err(o, ea_ops.ea_attention(q, k, v, order=2, backend="torch")[0]) < 2e-5


def test_a_bad_config_is_skipped_with_one_warning_and_the_default_runs(cache):
    bad = record(config={"loop": "t_d", "d_tile": 3, "h_tile": 1, "t_unroll": 1, "parallel": True})
    records.add_records(cache, [bad])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        comp = build.kernel_for("forward", True, 2, "float32", 2, 8, 20)
        build._fast.clear()
        build.kernel_for("forward", True, 2, "float32", 2, 8, 20)
    assert comp.source == "default"
    msgs = [str(w.message) for w in caught if "tuned TVM record" in str(w.message)]
    assert len(msgs) == 1 and "d_tile" in msgs[0]


def test_foreign_records_are_ignored(cache):
    cache.mkdir(parents=True)
    data = {"schema_version": 1, "records": [record(fingerprint="arm-neon-4c")]}
    (cache / records.RECORDS_FILE).write_text(json.dumps(data))
    with pytest.warns(RuntimeWarning, match="another target"):
        assert tuned.load() == []
    assert build.kernel_for("forward", True, 2, "float32", 2, 8, 20).source == "default"


def test_nearest_t_bucket_wins(cache):
    near = record(workload={"B": 1, "T": 64, "H": 2, "D": 8, "T_bucket": 64},
                  config={"loop": "d_t", "d_tile": 8, "h_tile": 1, "t_unroll": 1, "parallel": True})
    records.add_records(cache, [record(), near])
    got = tuned.candidates("forward", True, 2, "float32", 2, 8, 60)
    assert got[0]["workload"]["T_bucket"] == 64
    assert tuned.candidates("forward", True, 2, "float32", 2, 8, 20)[0]["workload"]["T_bucket"] == 32


def test_a_record_applies_only_within_max_t_distance_of_its_length(cache):
    """A record tuned at 4k picks loops for 4k: from 4x its length on, the call runs the default schedule."""
    at_4k = record(workload={"B": 1, "T": 4096, "H": 2, "D": 8, "T_bucket": 4096})
    records.add_records(cache, [at_4k])
    far = 4096 << tuned.MAX_T_DISTANCE
    for T in (4096 >> tuned.MAX_T_DISTANCE, 4096, far):
        assert [r["workload"]["T_bucket"] for r in tuned.candidates("forward", True, 2, "float32", 2, 8, T)] == [4096]
    for T in (far * 2, 4096 >> (tuned.MAX_T_DISTANCE + 1)):
        assert tuned.candidates("forward", True, 2, "float32", 2, 8, T) == []
        assert build.kernel_for("forward", True, 2, "float32", 2, 8, T).source == "default"


def test_supports_and_unsupported_inputs():
    q = torch.zeros(1, 4, 1, 2)
    assert backend.supports(q, causal=True, order=2, needs_grad=True) is None
    assert "float64" in backend.supports(q.double(), causal=True, order=2, needs_grad=False)
    with pytest.raises(TypeError, match="float64"):
        ea_ops.ea_attention(q.double(), q.double(), q.double(), backend="tvm")


def test_importing_the_backend_does_not_import_tvm():
    code = ("import sys, torch, ea_ops.backends.tvm.backend as b; q = torch.zeros(1, 3, 1, 2); "
            "b.prefers(q, 2); b.unavailable_reason(); print('tvm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------------------------ records transfer
def _variant(**change) -> str:
    """This CPU's fingerprint with some fields changed (``vendor``, ``family_model``, ``isa``, ``cores``)."""
    parts = tuned.parse_fingerprint(cpu_fingerprint())
    assert parts is not None, cpu_fingerprint()
    parts.update(change)
    return f"{parts['arch']}-{parts['vendor']}-{parts['family_model']}-{parts['isa']}-{parts['cores']}c"


def test_fingerprint_distance_orders_transferable_records_and_refuses_other_isas():
    here = "x86_64-amd-f25m17-avx512-2c"
    assert tuned.fingerprint_distance(here, here) == 0.0
    cores = tuned.fingerprint_distance("x86_64-amd-f25m17-avx512-4c", here)
    model = tuned.fingerprint_distance("x86_64-amd-f26m2-avx512-2c", here)
    vendor = tuned.fingerprint_distance("x86_64-intel-f6m167-avx512-2c", here)
    assert 0 < cores < model < vendor
    assert tuned.fingerprint_distance("x86_64-amd-f25m17-avx2-2c", here) is None  # other vector ISA
    assert tuned.fingerprint_distance("aarch64-arm-f8m3337-neon-2c", here) is None  # other architecture
    assert tuned.fingerprint_distance("not-a-fingerprint", here) is None
    assert tuned.fingerprint_distance("cuda-sm_90", here) is None


def test_a_record_of_a_related_cpu_is_transferred_and_this_cpus_own_record_wins(record_roots):
    shipped = record_roots / "shipped" / "tvm"
    near = _variant(cores=str(int(tuned.parse_fingerprint(cpu_fingerprint())["cores"]) * 2))
    far = _variant(vendor="othervendor", family_model="f1m1")
    other_isa = _variant(isa="sse4" if "sse4" not in cpu_fingerprint() else "avx2")
    cfgs = {
        near: {"loop": "t_d", "d_tile": 4, "h_tile": 2, "t_unroll": 2, "parallel": False},
        far: {"loop": "d_t", "d_tile": 2, "h_tile": 1, "t_unroll": 8, "parallel": False},
        other_isa: {"loop": "d_t", "d_tile": 8, "h_tile": 1, "t_unroll": 4, "parallel": True},
    }
    for fp in (far, other_isa):
        records.add_records(shipped / fp, [record(fingerprint=fp, config=cfgs[fp])])
    q, k, v = qkv((1, 20, 2, 8), dtype=torch.float32, seed=4)
    fwd = ea_ops.explain_backend(q, order=2).schedule["kernels"]["forward"]
    assert fwd["source"] == "transferred" and fwd["record"]["fingerprint"] == far and fwd["config"] == cfgs[far]
    records.add_records(shipped / near, [record(fingerprint=near, config=cfgs[near])])
    fwd = ea_ops.explain_backend(q, order=2).schedule["kernels"]["forward"]
    assert fwd["record"]["fingerprint"] == near and fwd["config"] == cfgs[near]  # the nearest fingerprint
    comp = build.kernel_for("forward", True, 2, "float32", 2, 8, 20)
    assert comp.config == cfgs[near]
    o, _ = ea_ops.ea_attention(q, k, v, order=2)
    assert rel_err(o, ea_ops.ea_attention(q, k, v, order=2, backend="torch")[0]) < 2e-5
    own = {"loop": "d_t", "d_tile": 4, "h_tile": 1, "t_unroll": 1, "parallel": False}
    records.add_records(record_roots / "user" / "tvm" / cpu_fingerprint(), [record(config=own)])
    fwd = ea_ops.explain_backend(q, order=2).schedule["kernels"]["forward"]
    assert fwd["source"] == "record" and fwd["config"] == own
    assert other_isa not in tuned.related_fingerprints() and far in tuned.related_fingerprints()


def test_a_kernel_says_where_its_schedule_came_from_even_when_the_code_is_shared(cache):
    """A record whose knobs equal the default schedule runs the module already built for the default; the
    kernel still reports "record" (the process cache is keyed by the knobs, not by their source)."""
    from ea_ops.backends.tvm.schedule import default_cpu_config

    H, D = 1, 6  # a shape no other test builds
    assert build.kernel_for("forward", True, 2, "float32", H, D, 20).source == "default"
    cfg = default_cpu_config("forward", H, D)
    records.add_records(cache, [record(workload={"B": 1, "T": 32, "H": H, "D": D, "T_bucket": 32}, config=cfg)])
    comp = build.kernel_for("forward", True, 2, "float32", H, D, 20)
    assert comp.source == "record" and comp.config == cfg


def test_eager_calls_do_not_import_dynamo():
    """Eager forward, backward and step run the kernels without the custom ops, whose first call imports
    torch._dynamo (about 0.8 s of a new process's first call); torch.compile still gets the ops."""
    code = ("import sys, torch, ea_ops\n"
            "q = torch.randn(1, 9, 2, 8, requires_grad=True)\n"
            "o, st = ea_ops.ea_attention(q, q, q, order=2, backend='tvm', output_final_state=True)\n"
            "o.sum().backward()\n"
            "with torch.no_grad():\n"
            "    ea_ops.ea_attention(q, q, q, order=2, backend='tvm')\n"
            "ea_ops.ea_recurrent_step(q[:, 0].detach(), q[:, 0].detach(), q[:, 0].detach(), st, order=2, "
            "backend='tvm')\n"
            "print('torch._dynamo' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "False"
