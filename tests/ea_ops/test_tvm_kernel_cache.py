"""Compiled TVM kernels on disk: a second process loads instead of building, and anything not provably ours
and intact is rebuilt with one warning (ea_ops/kernel_store.py, ea_ops/backends/tvm/disk_cache.py)."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

pytest.importorskip("tvm")

import ea_ops  # noqa: E402
from ea_ops import kernel_store, records  # noqa: E402
from ea_ops.backends.tvm import build, disk_cache  # noqa: E402
from tests.helpers import qkv, rel_err  # noqa: E402

pytestmark = pytest.mark.tvm
ROOT = Path(__file__).resolve().parents[2]
SHAPE = (1, 16, 2, 8)  # tiny, order 2: the kernels build in well under a second
CHILD_TIMEOUT_S = 120


def _forward():
    q, k, v = qkv(SHAPE, dtype=torch.float32, seed=3)
    return ea_ops.ea_attention(q, k, v, order=2, backend="tvm")[0]


def _reference():
    q, k, v = qkv(SHAPE, dtype=torch.float64, seed=3)
    return ea_ops.ea_attention(q, k, v, order=2, backend="torch")[0]


@pytest.fixture
def fresh(monkeypatch):
    """No kernel in this process's caches and a clean warn-once memory; returns a function that points the user
    cache at a folder."""
    monkeypatch.setattr(build, "_modules", {})
    monkeypatch.setattr(build, "_fast", {})
    monkeypatch.setattr(build, "BUILD_LOG", [])
    monkeypatch.setattr(build, "LOAD_LOG", [])
    monkeypatch.setattr(records, "_warned", set())
    monkeypatch.delenv(disk_cache.ENV, raising=False)

    def use(root: Path) -> None:
        monkeypatch.setenv("EA_OPS_CACHE_DIR", str(root))

    return use


def _forget() -> None:
    """A new process, as far as the kernel caches go (the disk stays)."""
    build._modules.clear()
    build._fast.clear()
    records._warned.clear()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A user cache holding the forward kernel of ``SHAPE`` (built once for the module), and its output."""
    root = tmp_path_factory.mktemp("pristine") / "cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EA_OPS_CACHE_DIR", str(root))
        mp.delenv(disk_cache.ENV, raising=False)
        mp.setattr(build, "_modules", {})
        mp.setattr(build, "_fast", {})
        out = _forward()
        entries = sorted(disk_cache.store().folder.glob("*.so"))
    assert len(entries) == 1, entries
    return root, out


def _copy(pristine, tmp_path) -> tuple[Path, Path, Path]:
    """The pristine cache copied under ``tmp_path``: ``(root, library, manifest)``."""
    root = tmp_path / "cache"
    shutil.copytree(pristine[0], root, symlinks=True)
    lib = next((root / "kernels" / "tvm").glob("*/*.so"))
    return root, lib, lib.with_suffix(".json")


def _call_and_warnings(expected):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = _forward()
    assert torch.equal(out, expected)  # bit for bit the kernel that was built first
    assert rel_err(out, _reference()) < 2e-5  # the float32 bound of test_tvm_backend's record test
    return [str(w.message) for w in caught if "ea-ops" in str(w.message)]


def test_a_stored_kernel_is_loaded_and_runs_bit_for_bit(fresh, pristine, tmp_path):
    root, lib, man = _copy(pristine, tmp_path)
    fresh(root)
    assert _call_and_warnings(pristine[1]) == []
    assert build.BUILD_LOG == [] and len(build.LOAD_LOG) == 1
    comp = build.kernel_for("forward", True, 2, "float32", SHAPE[2], SHAPE[3], SHAPE[1])
    assert comp.origin == "disk" and comp.build_s == 0.0 and comp.load_s > 0
    doc = json.loads(man.read_text())
    assert doc["key"]["kernel"] == "forward" and doc["key"]["order"] == 2 and doc["key"]["H"] == SHAPE[2]
    assert doc["key"]["target"]["mcpu"] and doc["key"]["tvm"] and doc["info"]["target"]


def _flip_bytes(root, lib, man):
    data = bytearray(lib.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 16] = bytes(b ^ 0xFF for b in data[mid:mid + 16])
    lib.write_bytes(bytes(data))  # same size, other bytes
    return "sha256 does not match"


def _delete_manifest(root, lib, man):
    man.unlink()
    return "has no manifest"


def _garble_manifest(root, lib, man):
    man.write_text('{"manifest_version": 1, "writer": "ea-ops", "key": ')
    return "not readable JSON"


def _manifest_of_another_key(root, lib, man):
    doc = json.loads(man.read_text())
    doc["key"]["order"] = 4
    man.write_text(json.dumps(doc))
    return "for another key"


def _library_is_a_link(root, lib, man):
    # A link to an intact copy of the very same bytes: only the link itself is wrong.
    elsewhere = root.parent / "elsewhere.so"
    shutil.copyfile(lib, elsewhere)
    lib.unlink()
    lib.symlink_to(elsewhere)
    return "symbolic link"


@pytest.mark.parametrize("tamper", [_flip_bytes, _delete_manifest, _garble_manifest, _manifest_of_another_key,
                                    _library_is_a_link], ids=lambda f: f.__name__.strip("_"))
def test_a_bad_entry_is_rebuilt_with_one_warning_and_replaced(fresh, pristine, tmp_path, tamper):
    root, lib, man = _copy(pristine, tmp_path)
    why = tamper(root, lib, man)
    fresh(root)
    msgs = _call_and_warnings(pristine[1])
    assert len(msgs) == 1 and why in msgs[0] and str(lib) in msgs[0], msgs
    assert len(build.BUILD_LOG) == 1 and build.LOAD_LOG == []
    assert not lib.is_symlink() and json.loads(man.read_text())["key"]["order"] == 2
    _forget()  # the next process loads the replaced entry
    assert _call_and_warnings(pristine[1]) == []
    assert len(build.BUILD_LOG) == 1 and len(build.LOAD_LOG) == 1


def _group_writable_leaf(root, lib, man):
    lib.parent.chmod(0o770)
    return lib.parent, "writable by group"


def _world_writable_root(root, lib, man):
    root.chmod(0o707)
    return root, "writable by others"


def _another_owner(root, lib, man):
    return None, "not by this user"


def _linked_folder(root, lib, man):
    # Our own folder, reached through a link: whoever can change the link chooses what is loaded.
    real = root.parent / "real"
    lib.parent.rename(real)
    lib.parent.symlink_to(real, target_is_directory=True)
    return lib.parent, "symbolic link"


@pytest.mark.parametrize("untrust", [_group_writable_leaf, _world_writable_root, _another_owner, _linked_folder],
                         ids=lambda f: f.__name__.strip("_"))
def test_a_folder_we_cannot_trust_is_neither_loaded_from_nor_written(fresh, pristine, tmp_path, monkeypatch,
                                                                     untrust):
    root, lib, man = _copy(pristine, tmp_path)
    _flip_bytes(root, lib, man)  # a rebuild would replace it, if the folder were written
    before = (lib.read_bytes(), man.read_bytes(), sorted(p.name for p in lib.parent.iterdir()))
    folder, why = untrust(root, lib, man)
    if folder is None:
        real = os.getuid()
        monkeypatch.setattr(kernel_store, "_uid", lambda: real + 1)
    fresh(root)
    msgs = _call_and_warnings(pristine[1])
    assert len(msgs) == 1 and why in msgs[0] and "kept in memory" in msgs[0], msgs
    assert len(build.BUILD_LOG) == 1 and build.LOAD_LOG == []
    assert (lib.read_bytes(), man.read_bytes(), sorted(p.name for p in lib.parent.iterdir())) == before
    _forget()  # still not trusted in the next process: built again, never loaded
    assert len(_call_and_warnings(pristine[1])) == 1
    assert len(build.BUILD_LOG) == 2 and build.LOAD_LOG == []


def test_the_cache_can_be_turned_off(fresh, pristine, tmp_path, monkeypatch):
    root, lib, _ = _copy(pristine, tmp_path)
    fresh(root)
    monkeypatch.setenv(disk_cache.ENV, "0")
    shutil.rmtree(lib.parent)
    assert _call_and_warnings(pristine[1]) == []
    assert len(build.BUILD_LOG) == 1 and build.LOAD_LOG == [] and not lib.parent.exists()


def test_the_key_changes_with_the_code_and_the_config(tmp_path, monkeypatch):
    cfg = {"loop": "d_t", "d_tile": 8, "h_tile": 1, "t_unroll": 1, "parallel": True}
    base = disk_cache.key("forward", True, 2, "float32", 2, 8, cfg)
    assert kernel_store.entry_name(base) == kernel_store.entry_name(dict(reversed(list(base.items()))))
    others = [disk_cache.key("forward", True, 2, "float32", 2, 8, {**cfg, "t_unroll": 2}),
              disk_cache.key("forward", False, 2, "float32", 2, 8, cfg),
              disk_cache.key("backward", True, 2, "float32", 2, 8, cfg),
              disk_cache.key("forward", True, 4, "float32", 2, 8, cfg),
              disk_cache.key("forward", True, 2, "float16", 2, 8, cfg),
              disk_cache.key("forward", True, 2, "float32", 4, 8, cfg)]
    assert len({kernel_store.entry_name(k) for k in [base, *others]}) == 7
    # An edit to a kernel source file is a new key.
    for name in disk_cache.SOURCES:
        shutil.copyfile(disk_cache._HERE / name, tmp_path / name)
    with open(tmp_path / "tir_math.py", "a") as fh:
        fh.write("\n# edited\n")
    monkeypatch.setattr(disk_cache, "_HERE", tmp_path)
    disk_cache.sources_sha256.cache_clear()
    try:
        assert disk_cache.key("forward", True, 2, "float32", 2, 8, cfg)["sources_sha256"] != base["sources_sha256"]
    finally:
        disk_cache.sources_sha256.cache_clear()


def test_every_module_the_generated_code_depends_on_is_in_the_key():
    here = disk_cache._HERE
    trees = {name: ast.parse((here / name).read_text()) for name in disk_cache.SOURCES if name != "build.py"}
    build_tree = ast.parse((here / "build.py").read_text())
    trees["build.build_cpu"] = next(n for n in ast.walk(build_tree)
                                    if isinstance(n, ast.FunctionDef) and n.name == "build_cpu")
    used = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                used |= {f"{node.module}.py"} if node.module else {f"{a.name}.py" for a in node.names}
    assert used and used <= set(disk_cache.SOURCES), used - set(disk_cache.SOURCES)


CHILD = r"""
import hashlib, json, sys, time
from pathlib import Path
go = Path(sys.argv[1])
import torch, ea_ops
from ea_ops.backends.tvm import build
from tests.helpers import qkv
q, k, v = qkv((1, 16, 2, 8), dtype=torch.float32, seed=3, requires_grad=True)
deadline = time.monotonic() + 60
while not go.exists() and time.monotonic() < deadline:  # start together: the builds and stores overlap
    time.sleep(0.01)
o = ea_ops.ea_attention(q, k, v, order=2, backend="tvm")[0]
o.backward(torch.ones_like(o))
digest = hashlib.sha256(b"".join(t.detach().numpy().tobytes() for t in (o, q.grad, k.grad, v.grad))).hexdigest()
print(json.dumps({"builds": len(build.BUILD_LOG), "loads": len(build.LOAD_LOG), "digest": digest,
                  "tvm_imported": "tvm" in sys.modules, "o": o.detach().double().tolist()}))
"""


def _children(n: int, root: Path, go: Path) -> list[dict]:
    env = {**os.environ, "EA_OPS_CACHE_DIR": str(root), "PYTHONPATH": str(ROOT)}
    env.pop(disk_cache.ENV, None)
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(go)], cwd=ROOT, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(n)]
    time.sleep(0.2)
    go.touch()
    out = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=CHILD_TIMEOUT_S)
            assert p.returncode == 0, stderr[-3000:]
            assert "ea-ops" not in stderr, stderr[-3000:]  # no warning: nothing was refused
            out.append(json.loads(stdout.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return out


def test_concurrent_builders_leave_a_valid_cache_and_a_later_process_loads_it_bit_for_bit(tmp_path):
    root, go = tmp_path / "cache", tmp_path / "go"
    first = _children(3, root, go)
    ref = _reference()
    for res in first:
        # forward and backward: built, or loaded when another process stored it first (a late start under load)
        assert res["builds"] + res["loads"] == 2
        assert rel_err(torch.tensor(res["o"], dtype=torch.float64), ref) < 2e-5
    assert len({res["digest"] for res in first}) == 1
    assert sum(res["builds"] for res in first) >= 2  # each kernel built by someone, into an empty cache
    folder = root / "kernels" / "tvm" / disk_cache.cpu_fingerprint()
    libs = sorted(folder.glob("*.so"))
    assert len(libs) == 2 and not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    for lib in libs:  # every entry verifies against its manifest
        doc = json.loads(lib.with_suffix(".json").read_text())
        store = kernel_store.KernelStore(root, folder)
        os.close(store._verified_fd(lib, lib.with_suffix(".json"), doc["key"]))
    (later,) = _children(1, root, tmp_path / "go")
    assert later["builds"] == 0 and later["loads"] == 2
    assert later["digest"] == first[0]["digest"]  # forward and gradients bit for bit
    assert not later["tvm_imported"]  # a hit needs only TVM's runtime libraries (disk_cache docstring)
