"""Kernel packs: TVM kernels compiled for a target and written to a folder with a manifest (``ea-ops compile``),
then run from that folder (``ea_ops.load_kernels``, ``EA_OPS_KERNELS``) without compiling anything.

**Loading a pack runs its code.** A pack is machine code. Naming its folder, as an argument or in
``EA_OPS_KERNELS``, is an explicit act of trust in whoever wrote that folder, the same trust as importing a
Python package from it. The checks below catch accidents and tampering after the build, because every file's
sha256 is in the manifest. They cannot vouch for the builder. A pack is refused, with a ``KernelPackError``
that says why, when

- its manifest is not a regular JSON file of ea-ops' pack format and version;
- it was built for another machine: another architecture, or a CPU model whose instructions this host may lack
  (the pack's LLVM ``mcpu`` must be this host's, or a generic level such as ``x86-64-v3`` that this host
  supports);
- the TVM runtime or tvm_ffi version, or the kernel sources' sha256 (the kernels' argument conventions), differ
  from this installation's;
- a file it names is missing, is not a regular file in the pack's folder (a link, a path with a separator), or
  its size or sha256 differs from the manifest;
- (CUDA) no GPU this process sees has the pack's arch (a cubin runs on one compute capability), or an entry lacks
  its library, CUDA source or cubin.

Libraries (``.so``) are loaded with tvm_ffi only: loading never imports the TVM compiler. Object archives
(``.tar``, what a cross build for another CPU writes when no linker for it is at hand) are linked on the host
that loads them, with its C compiler driver (``cc -shared``), into the user cache. That is a link, not a compile.
A CUDA kernel is a library of host code holding its CUDA C source, and the cubin nvcc built from that source;
TVM's loader gets the cubin for exactly that source (``cuda_runtime.serve_binaries``), never a compiler.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import tarfile
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import KernelPackError
from ...records import read_regular, user_cache_dir
from ..common import SCAN

FORMAT = "ea-ops-kernel-pack"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ENV = "EA_OPS_KERNELS"
MAX_MANIFEST_BYTES = 4 << 20
MAX_FILE_BYTES = 256 << 20
# x86-64 micro-architecture levels (the psABI's) by the /proc/cpuinfo flags each needs beyond the previous one
X86_LEVELS = {
    "x86-64": set(),
    "x86-64-v2": {"cx16", "lahf_lm", "popcnt", "sse4_1", "sse4_2", "ssse3"},
    "x86-64-v3": {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"},
    "x86-64-v4": {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"},
}
GENERIC = {"aarch64": ("generic",), "x86_64": tuple(X86_LEVELS)}


@dataclass(frozen=True)
class KernelPack:
    """A loaded pack: its folder, target and the kernels it serves, by ``(kernel, causal, order, dtype, H, D)``."""

    folder: Path
    target: dict
    kernels: dict = field(repr=False)

    def __len__(self) -> int:
        return len(self.kernels)


_packs: list[KernelPack] = []
_lock = threading.Lock()
_env_loaded: set[str] = set()
_generation = [0]  # bumped whenever the loaded packs change (build.kernel_for keys its fast cache on it)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_entry(path: Path) -> dict:
    """A file of the pack as its manifest names it: name, size, sha256."""
    return {"path": path.name, "bytes": path.stat().st_size, "sha256": sha256_of(path)}


def host_arch() -> str:
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(), platform.machine().lower())


def _host_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, val = line.partition(":")
                if key.strip().lower() in ("flags", "features"):
                    return set(val.split())
    except OSError:
        pass
    return set()


def host_problem(target: dict, host_mcpu: str) -> str | None:
    """Why a pack built for ``target`` (its ``arch`` and LLVM ``mcpu``) cannot run on this host, or None."""
    arch, mcpu = target.get("arch"), target.get("mcpu")
    if arch != host_arch():
        return f"it was built for {arch}, this host is {host_arch()}"
    if mcpu == host_mcpu:
        return None
    if mcpu in GENERIC.get(arch, ()):
        if arch == "x86_64":
            names = list(X86_LEVELS)
            need = set().union(*(X86_LEVELS[n] for n in names[:names.index(mcpu) + 1]))
            missing = sorted(need - _host_flags())
            if missing:
                return f"it needs {mcpu} ({', '.join(missing)} missing on this CPU)"
        return None
    return (f"it was built for the CPU model {mcpu!r} and this host is {host_mcpu!r}: build it for this model "
            "or for a generic level (ea-ops compile --target cpu:x86-64-v3)")


def write_manifest(out: Path, *, target: dict, kernels: list[dict], versions: dict, sources_sha256: str,
                   extra: dict | None = None) -> dict:
    """The pack's manifest over the files already in ``out`` (each entry's ``files``: role -> file name),
    checksummed here; written atomically."""
    from ...records import atomic_write_json

    entries = []
    for k in kernels:
        files = {role: file_entry(out / name) for role, name in k["files"].items()}
        entries.append({**k, "files": files})
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "backend": "tvm", "target": target,
                "versions": versions, "sources_sha256": sources_sha256, "kernels": entries, **(extra or {})}
    atomic_write_json(out / MANIFEST, manifest)
    return manifest


def _fail(folder: Path, why: str) -> KernelPackError:
    return KernelPackError(f"kernel pack {folder}: {why}")


def read_manifest(folder: Path) -> dict:
    """The validated manifest of the pack in ``folder`` (KernelPackError otherwise)."""
    path = folder / MANIFEST
    try:
        data = json.loads(read_regular(path, limit=MAX_MANIFEST_BYTES).decode("utf-8"))
    except FileNotFoundError:
        raise _fail(folder, f"no {MANIFEST} (not a pack folder)") from None
    except (OSError, ValueError, RecursionError, MemoryError) as exc:
        raise _fail(folder, f"{MANIFEST} is not a readable JSON file ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise _fail(folder, f"{MANIFEST} is not an ea-ops kernel pack manifest")
    if data.get("format_version") != FORMAT_VERSION:
        raise _fail(folder, f"format version {data.get('format_version')!r}, this ea-ops reads {FORMAT_VERSION}")
    for key, kind in (("target", dict), ("versions", dict), ("sources_sha256", str), ("kernels", list)):
        if not isinstance(data.get(key), kind):
            raise _fail(folder, f"{MANIFEST}: {key!r} must be a {kind.__name__}")
    for i, k in enumerate(data["kernels"]):
        ok = (isinstance(k, dict) and k.get("kernel") in ("forward", "backward", "step")
              and isinstance(k.get("causal"), bool) and isinstance(k.get("files"), dict)
              and all(isinstance(k.get(n), int) and not isinstance(k.get(n), bool) for n in ("order", "H", "D"))
              and isinstance(k.get("dtype"), str) and isinstance(k.get("schedule"), dict))
        if not ok:
            raise _fail(folder, f"{MANIFEST}: kernels[{i}] is malformed")
    return data


def _checked_file(folder: Path, entry: object, where: str) -> Path:
    """The file a manifest entry names, after its name, type, size and sha256 checks."""
    if not (isinstance(entry, dict) and isinstance(entry.get("path"), str) and isinstance(entry.get("bytes"), int)
            and isinstance(entry.get("sha256"), str)):
        raise _fail(folder, f"{where}: a file entry needs path, bytes and sha256")
    name = entry["path"]
    if not name or os.sep in name or (os.altsep and os.altsep in name) or name in (".", ".."):
        raise _fail(folder, f"{where}: {name!r} is not a file name in the pack's folder")
    path = folder / name
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise _fail(folder, f"{where}: {name} is missing") from None
    import stat

    if not stat.S_ISREG(st.st_mode):
        raise _fail(folder, f"{where}: {name} is not a regular file (a link or something else)")
    if st.st_size != entry["bytes"] or st.st_size > MAX_FILE_BYTES:
        raise _fail(folder, f"{where}: {name} has {st.st_size} bytes, the manifest says {entry['bytes']}")
    if sha256_of(path) != entry["sha256"]:
        raise _fail(folder, f"{where}: {name} does not match its sha256 in the manifest (altered)")
    return path


def load(folder: str | os.PathLike) -> KernelPack:
    """Verify the pack in ``folder`` and load its kernels for this process; later calls of the TVM backend
    with a shape, order and dtype the pack holds run its kernels (for any B and T). See the module docstring
    for what is checked, and for what loading means: it runs the pack's code."""
    from . import disk_cache
    from .compiled import Compiled

    folder = Path(folder).expanduser().resolve()
    man = read_manifest(folder)
    target = man["target"]
    kind = target.get("kind")
    if kind == "cpu":
        problem, sources = host_problem(target, disk_cache._mcpu()), disk_cache.SOURCES
    elif kind == "cuda":
        from . import cuda_device

        problem, sources = cuda_device.pack_problem(target.get("arch"), cuda_device.visible_archs()), \
            disk_cache.CUDA_SOURCES
        if target.get("host_arch") != host_arch():
            problem = f"its host code was built for {target.get('host_arch')}, this host is {host_arch()}"
    else:
        raise _fail(folder, f"it holds {kind!r} kernels; ea-ops runs cpu and cuda packs")
    if problem:
        raise _fail(folder, problem)
    have = disk_cache.versions()
    for name in ("tvm", "tvm_ffi"):
        if man["versions"].get(name) != have[name]:
            raise _fail(folder, f"built with {name} {man['versions'].get(name)}, this host has {have[name]}")
    if man["sources_sha256"] != disk_cache.sources_sha256(sources):
        raise _fail(folder, "built from other kernel sources than this ea-ops' (sources_sha256 differs)")
    kernels = {}
    for i, k in enumerate(man["kernels"]):
        if kind == "cuda":
            lib = _load_cuda_entry(folder, k, f"kernels[{i}]")
            key = cuda_key(k["kernel"], k["causal"], k["order"], k["dtype"], k["H"], k["D"], target["arch"],
                           k["schedule"].get("variant"))
        else:
            lib = _load_cpu_entry(folder, k, f"kernels[{i}]")
            key = (k["kernel"], True if k["kernel"] == "step" else k["causal"], k["order"], k["dtype"], k["H"],
                   k["D"])
        try:
            fn = lib["main"]
        except Exception as exc:  # a library without the kernels' entry point
            raise _fail(folder, f"kernels[{i}]: no function 'main' ({type(exc).__name__}: {exc})") from None
        kernels[key] = Compiled(fn, lib, k["kernel"], dict(k["schedule"]), "pack", 0.0, "pack")
    pack = KernelPack(folder, target, kernels)
    with _lock:
        _packs[:] = [p for p in _packs if p.folder != folder] + [pack]
        _generation[0] += 1
    return pack


def _load_cpu_entry(folder: Path, k: dict, where: str):
    """The runtime module of a CPU kernel entry: its shared library, or its object archive linked here."""
    from . import disk_cache

    files = k["files"]
    if "library" in files:
        path = _checked_file(folder, files["library"], where)
    elif "objects" in files:
        path = _link(folder, _checked_file(folder, files["objects"], where), files["objects"]["sha256"])
    else:
        raise _fail(folder, f"{where} has no library or objects file")
    try:
        return disk_cache._load_module(str(path))
    except Exception as exc:  # what the loader raises for a library it cannot use
        raise _fail(folder, f"{where}: {path.name} did not load ({type(exc).__name__}: {exc})") from None


def cuda_key(kernel: str, causal: bool, order: int, dtype: str, H: int, D: int, arch: str, variant: str | None):
    """The key of a CUDA pack kernel. The step is the causal forward's one-thread-per-channel kernel at T = 1."""
    if kernel == "step":
        kernel, causal, variant = "forward", True, SCAN
    return (kernel, causal, order, dtype, H, D, arch, variant)


def _checked_bytes(folder: Path, entry: dict, where: str) -> bytes:
    """The bytes of a checked file, checked again as read (what is served to the loader is what was hashed)."""
    data = _checked_file(folder, entry, where).read_bytes()
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise _fail(folder, f"{where}: {entry['path']} changed while it was read")
    return data


def _load_cuda_entry(folder: Path, k: dict, where: str):
    """The runtime module of a CUDA kernel entry: its library (host code + CUDA module) with the cubin built
    from its source served to TVM's loader (``cuda_runtime``): nothing is compiled."""
    from . import cuda_runtime

    files = k["files"]
    for role in ("library", "source", "cubin"):
        if role not in files:
            why = " (the pack was built without nvcc)" if role == "cubin" else ""
            raise _fail(folder, f"{where} has no {role} file{why}: loading it would need a CUDA compiler")
    lib_path = _checked_file(folder, files["library"], where)
    source, cubin = (_checked_bytes(folder, files[role], where) for role in ("source", "cubin"))
    try:
        return cuda_runtime.load_module(str(lib_path), {cuda_runtime.source_sha256(source): cubin})
    except cuda_runtime.CudaRuntimeError as exc:
        raise _fail(folder, str(exc)) from None
    except Exception as exc:  # what the loader raises for a library or cubin it cannot use
        raise _fail(folder, f"{where}: {lib_path.name} did not load ({type(exc).__name__}: {exc})") from None


def _link(folder: Path, archive: Path, digest: str) -> Path:
    """A shared library from a pack's object archive, linked once into the user cache (by its sha256)."""
    out_dir = user_cache_dir() / "kernels" / "tvm" / "linked"
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = out_dir / f"{digest[:32]}.so"
    if target.exists():
        return target
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise _fail(folder, f"{archive.name} holds objects to link, and this host has no C compiler driver (cc)")
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        objs = []
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                name = Path(member.name).name
                if not member.isfile() or name != member.name or not name.endswith(".o"):
                    raise _fail(folder, f"{archive.name}: {member.name!r} is not a plain object file")
                src = tar.extractfile(member)
                dst = Path(tmp) / name
                dst.write_bytes(src.read())
                objs.append(str(dst))
        part = Path(tmp) / "lib.so"
        res = subprocess.run([cc, "-shared", "-fPIC", "-o", str(part), *objs], capture_output=True, text=True,
                             timeout=300)
        if res.returncode:
            raise _fail(folder, f"linking {archive.name} failed: {res.stderr[-2000:]}")
        os.replace(part, target)
    return target


def load_env() -> None:
    """Load the packs ``EA_OPS_KERNELS`` names (folders separated by ``os.pathsep``), once per value."""
    text = os.environ.get(ENV, "")
    if not text or text in _env_loaded:
        return
    with _lock:
        if text in _env_loaded:
            return
        _env_loaded.add(text)
    for part in text.split(os.pathsep):
        if part.strip():
            load(part.strip())


def generation() -> int:
    """A number that changes whenever the loaded packs do (after loading ``EA_OPS_KERNELS``'s)."""
    if os.environ.get(ENV):
        load_env()
    return _generation[0]


def lookup(kernel: str, causal: bool, order: int, dtype: str, H: int, D: int, *, target: str = "cpu",
           variant: str | None = None) -> Any | None:
    """The loaded pack kernel for this call (the last pack loaded wins), or None. ``target``: ``"cpu"``, or the
    CUDA arch of the tensors' GPU with the schedule ``variant`` wanted (``cuda_key``)."""
    if not _packs:
        return None
    if target == "cpu":
        key = (kernel, True if kernel == "step" else causal, order, dtype, H, D)
    else:
        key = cuda_key(kernel, causal, order, dtype, H, D, target, variant)
    for pack in reversed(_packs):
        hit = pack.kernels.get(key)
        if hit is not None:
            return hit
    return None


def loaded() -> list[KernelPack]:
    return list(_packs)


def unload_all() -> None:
    """Forget every loaded pack (tests)."""
    with _lock:
        _packs.clear()
        _env_loaded.clear()
        _generation[0] += 1
