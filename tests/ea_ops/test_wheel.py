"""The built wheel carries the shipped records, and the package installed from it finds them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted(p.relative_to(ROOT / "autotune_cache") for p in (ROOT / "autotune_cache").rglob("*.json"))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # Built from a copy of what the package is made of: setuptools keeps a build/ folder beside the sources
    # and does not clean it, so a module that moved could linger in a wheel built in the checkout.
    src = out / "src"
    for name in ("pyproject.toml", "README.md"):
        src.mkdir(exist_ok=True)
        shutil.copy(ROOT / name, src / name)
    for name in ("ea_ops", "schedules", "analysis", "autotune_cache"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".lock"))
    # no build isolation: the build must not need the network (setuptools comes with the dev extra)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "--disable-pip-version-check", "-w", str(out), str(src)],
                          capture_output=True, text=True, timeout=300, cwd=out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (whl,) = out.glob("ea_ops-*.whl")
    return whl


def test_the_wheel_contains_every_shipped_record(wheel):
    assert SHIPPED, "autotune_cache/ ships no records"
    names = set(zipfile.ZipFile(wheel).namelist())
    for rel in SHIPPED:
        assert f"ea_ops/autotune_cache/{rel.as_posix()}" in names, rel
    # every package of the tree (pyproject lists them), and nothing that is not one
    for init in sorted(ROOT.glob("*/**/__init__.py")):
        rel = init.relative_to(ROOT)
        if rel.parts[0] in ("ea_ops", "schedules", "analysis"):
            assert rel.as_posix() in names, f"{rel.parent} is missing from pyproject's package list"
    assert not any(n.startswith(("tests/", "autotune_cache/", ".venv/")) for n in names)
    assert "ea_ops/nn/accuracy_table.json" in names  # the layer's scale="auto" and accuracy tracking read it


def test_the_package_installed_from_the_wheel_finds_them(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--disable-pip-version-check",
                    "--target", str(target), str(wheel)], check=True, timeout=300, capture_output=True)
    fp = SHIPPED[0].parts[1]
    code = ("import json, ea_ops; from ea_ops import records; d = records.shipped_dir(); "
            f"print(json.dumps([str(d), len(records.load_records('tvm', {fp!r}))]))")
    env = {k: v for k, v in os.environ.items() if k != "EA_OPS_SHIPPED_CACHE"}
    env.update(PYTHONPATH=str(target), EA_OPS_CACHE_DIR=str(tmp_path / "user"))
    # run outside the source tree, so the checkout's ea_ops cannot be the one imported
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    where, n = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(where) == target / "ea_ops" / "autotune_cache"
    want = len(json.loads((ROOT / "autotune_cache" / "tvm" / fp / "records.json").read_text())["records"])
    assert n == want > 0
