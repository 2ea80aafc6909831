"""Kernel packs (issue 17): ``ea-ops compile`` builds tuned TVM kernels into a folder with a manifest; another
process that cannot compile runs them through ``ea_ops.load_kernels`` or ``EA_OPS_KERNELS``; an altered pack,
or one built for another host or version, is refused with an error that says why."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest
import torch

import ea_ops
from ea_ops import KernelPackError

tvm = pytest.importorskip("tvm")

from ea_ops.backends.tvm import packs  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SHAPE, ORDER = "2x16", 2


def _compile(out: Path, target: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ea_ops.cli", "compile", "--backend", "tvm", "--target", target,
                           "--orders", str(ORDER), "--shapes", SHAPE, "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def pack(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pack") / "cpu"
    res = _compile(out, "cpu")
    assert res.returncode == 0, res.stderr[-3000:]
    return out


# The child process: `import tvm` (the compiler's Python package) fails, its runtime libraries stay.
_NO_COMPILER = textwrap.dedent("""
    import importlib.abc, importlib.machinery, sys

    class NoCompiler(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, name, path, target=None):
            if name != "tvm":
                return None
            real = importlib.machinery.PathFinder.find_spec(name, path)
            return None if real is None else importlib.machinery.ModuleSpec(name, self, origin=real.origin,
                                                                            is_package=True)
        def create_module(self, spec):
            return None
        def exec_module(self, module):
            raise ImportError("no TVM compiler in this process")

    sys.meta_path.insert(0, NoCompiler())
""")

_RUN = textwrap.dedent("""
    import json, os, sys
    import torch, ea_ops
    from ea_ops.backends.tvm import build
    if os.environ.get("PACK_BY") == "call":
        ea_ops.load_kernels(sys.argv[1])
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 37, 2, 16, requires_grad=True) for _ in range(3))
    out = {}
    for causal in (True, False):
        o, _ = ea_ops.ea_attention(q, k, v, order=2, causal=causal, backend="tvm")
        grads = torch.autograd.grad(o.sum(), (q, k, v))
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        ref, _ = ea_ops.ea_attention(*leaves, order=2, causal=causal, backend="torch")
        want = torch.autograd.grad(ref.sum(), leaves)
        out[str(causal)] = max([float((o - ref).abs().max())] + [float((a - b).abs().max())
                                                               for a, b in zip(grads, want)])
    state = ea_ops.EAState.empty(2, 2, 16, 2)
    dec = ea_ops.EADecoder(state, order=2, backend="tvm")
    o_t = dec.step(q[:, 0].detach(), k[:, 0].detach(), v[:, 0].detach())
    out["step"] = float((o_t - v[:, 0].detach()).abs().max())
    out["builds"] = len(build.BUILD_LOG)
    out["tvm_imported"] = sys.modules.get("tvm") is not None
    print(json.dumps(out))
""")


def _run_child(pack: Path, by: str) -> dict:
    env = {**os.environ, "EA_OPS_KERNEL_CACHE": "0", "PACK_BY": by}
    if by == "env":
        env["EA_OPS_KERNELS"] = str(pack)
    res = subprocess.run([sys.executable, "-c", _NO_COMPILER + _RUN, str(pack)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("by", ["call", "env"])
def test_a_pack_runs_in_a_process_that_cannot_compile(pack, by):
    got = _run_child(pack, by)
    assert got["builds"] == 0 and not got["tvm_imported"]
    assert got["True"] < 1e-5 and got["False"] < 1e-5 and got["step"] < 1e-6


def test_without_the_pack_that_process_cannot_run_tvm(pack):
    """The control: the same child with no pack must compile, and cannot."""
    env = {**os.environ, "EA_OPS_KERNEL_CACHE": "0", "PACK_BY": "none"}
    res = subprocess.run([sys.executable, "-c", _NO_COMPILER + _RUN, str(pack)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and "no TVM compiler in this process" in res.stderr


def test_the_manifest_names_target_versions_sources_and_checksums(pack):
    man = json.loads((pack / "manifest.json").read_text())
    assert man["format"] == packs.FORMAT and man["target"]["arch"] == packs.host_arch()
    assert man["versions"]["tvm"] and man["versions"]["tvm_ffi"] and len(man["sources_sha256"]) == 64
    kinds = {(k["kernel"], k["causal"]) for k in man["kernels"]}
    assert kinds == {("forward", True), ("forward", False), ("backward", True), ("backward", False), ("step", True)}
    for k in man["kernels"]:
        f = k["files"]["library"]
        assert packs.sha256_of(pack / f["path"]) == f["sha256"] and k["schedule"] and k["schedule_source"]


def _copy(pack: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(pack, dst)
    return dst


def _edit(folder: Path, fn) -> None:
    path = folder / "manifest.json"
    man = json.loads(path.read_text())
    fn(man)
    path.write_text(json.dumps(man))


@pytest.mark.parametrize("change, match", [
    (lambda m: m["target"].update(mcpu="cortex-a72"), "built for the CPU model 'cortex-a72'"),
    (lambda m: m["target"].update(arch="aarch64"), "built for aarch64"),
    (lambda m: m["versions"].update(tvm="0.26.0"), "built with tvm 0.26.0"),
    (lambda m: m["versions"].update(tvm_ffi="0.1.15"), "built with tvm_ffi 0.1.15"),
    (lambda m: m.update(sources_sha256="0" * 64), "other kernel sources"),
    (lambda m: m.update(format_version=2), "format version 2"),
    (lambda m: m.update(format="something"), "not an ea-ops kernel pack manifest"),
    (lambda m: m["kernels"][0]["files"]["library"].update(path="../x.so"), "not a file name in the pack"),
    (lambda m: m["kernels"][0]["files"]["library"].update(bytes=1), "the manifest says 1"),
    (lambda m: m["kernels"][0].update(order="2"), r"kernels\[0\] is malformed"),
    (lambda m: m["target"].update(kind="rocm"), "holds 'rocm' kernels"),
])
def test_a_pack_for_another_host_or_version_or_a_bad_manifest_is_refused(pack, tmp_path, change, match):
    folder = _copy(pack, tmp_path)
    _edit(folder, change)
    with pytest.raises(KernelPackError, match=match):
        ea_ops.load_kernels(folder)


def test_an_altered_library_a_link_or_a_missing_file_is_refused(pack, tmp_path):
    folder = _copy(pack, tmp_path)
    lib = folder / json.loads((folder / "manifest.json").read_text())["kernels"][0]["files"]["library"]["path"]
    data = bytearray(lib.read_bytes())
    data[len(data) // 2] ^= 1
    lib.write_bytes(bytes(data))
    with pytest.raises(KernelPackError, match="does not match its sha256"):
        ea_ops.load_kernels(folder)
    shutil.copy(pack / lib.name, tmp_path / "real.so")
    lib.unlink()
    with pytest.raises(KernelPackError, match="is missing"):
        ea_ops.load_kernels(folder)
    lib.symlink_to(tmp_path / "real.so")
    with pytest.raises(KernelPackError, match="not a regular file"):
        ea_ops.load_kernels(folder)
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(KernelPackError, match="not a readable JSON file"):
        ea_ops.load_kernels(folder)
    with pytest.raises(KernelPackError, match="no manifest.json"):
        ea_ops.load_kernels(tmp_path)
    with pytest.raises(TypeError, match="folder must be a path"):
        ea_ops.load_kernels(3)


def test_a_generic_x86_level_pack_runs_here_and_the_level_is_checked(tmp_path, monkeypatch):
    if packs.host_arch() != "x86_64":
        pytest.skip("an x86-64 host")
    out = tmp_path / "v3"
    res = _compile(out, "cpu:x86-64-v3")
    if "avx2" not in packs._host_flags():
        pytest.skip("this CPU lacks x86-64-v3")
    assert res.returncode == 0, res.stderr[-3000:]
    man = json.loads((out / "manifest.json").read_text())
    assert man["target"]["mcpu"] == "x86-64-v3" and all(k["schedule_source"] == "default" for k in man["kernels"])
    try:
        info = ea_ops.load_kernels(out)
        assert len(info["kernels"]) == 5
        q, k, v = (torch.randn(1, 21, 2, 16) for _ in range(3))
        o, _ = ea_ops.ea_attention(q, k, v, order=ORDER, backend="tvm")
        from ea_ops.backends.tvm import build

        assert build.kernel_for("forward", True, ORDER, "float32", 2, 16, 21).origin == "pack"
        assert torch.allclose(o, ea_ops.ea_attention(q, k, v, order=ORDER, backend="torch")[0], atol=1e-5)
    finally:
        packs.unload_all()
    monkeypatch.setattr(packs, "_host_flags", lambda: {"avx", "avx2"})
    assert "x86-64-v3 (abm, bmi1" in packs.host_problem({"arch": "x86_64", "mcpu": "x86-64-v3"}, "znver5")
    assert packs.host_problem({"arch": "x86_64", "mcpu": "x86-64"}, "znver5") is None


def test_a_cross_build_for_aarch64_holds_aarch64_objects(tmp_path):
    """Checked here: the manifest and the objects' architecture (ELF e_machine 183); refused on this host.
    Not checked here: linking and running them on an Arm machine."""
    out = tmp_path / "arm"
    res = _compile(out, "aarch64")
    assert res.returncode == 0, res.stderr[-3000:]
    man = json.loads((out / "manifest.json").read_text())
    assert man["target"]["arch"] == "aarch64" and man["target"]["llvm"]["mtriple"] == "aarch64-linux-gnu"
    for k in man["kernels"]:
        with tarfile.open(out / k["files"]["objects"]["path"]) as tar:
            objs = [m for m in tar.getmembers() if m.name.endswith(".o")]
            assert objs
            for m in objs:
                head = tar.extractfile(m).read(20)
                assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 183, m.name
    if packs.host_arch() != "aarch64":
        with pytest.raises(KernelPackError, match="built for aarch64"):
            ea_ops.load_kernels(out)


def test_an_object_archive_is_linked_on_the_host_that_loads_it(tmp_path, monkeypatch):
    """The device side of a cross pack, on this host's own architecture: objects linked with cc, then loaded."""
    from ea_ops.backends.tvm import schedule
    from ea_ops.backends.tvm.target import cpu_target

    monkeypatch.setenv("EA_OPS_CACHE_DIR", str(tmp_path / "cache"))
    cfg = schedule.validate_cpu_config(schedule.default_cpu_config("forward", 2, 16), 2, 16)
    lib = tvm.compile(schedule.cpu_module("forward", True, ORDER, "float32", 2, 16, cfg), target=cpu_target())
    archive = tmp_path / "fwd.tar"
    lib.export_library(str(archive))
    so = packs._link(tmp_path, archive, packs.sha256_of(archive))
    from ea_ops.backends.tvm import disk_cache

    fn = disk_cache._load_module(str(so))["main"]
    q, k, v = (torch.randn(1, 9, 2, 16) for _ in range(3))
    o = torch.empty_like(q)
    S = torch.zeros(1, 2, ORDER + 1, 16)
    fn(q, k, v, o, S, S.clone(), torch.full((1, 2, 16), float("inf")), 1.0)
    assert torch.allclose(o, ea_ops.ea_attention(q, k, v, order=ORDER, backend="torch")[0], atol=1e-5)
    with tarfile.open(tmp_path / "bad.tar", "w") as tar:
        (tmp_path / "evil").write_text("x")
        tar.add(tmp_path / "evil", arcname="../evil.o")
    with pytest.raises(KernelPackError, match="is not a plain object file"):
        packs._link(tmp_path, tmp_path / "bad.tar", "f" * 64)
