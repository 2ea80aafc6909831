"""The TVM backend's CUDA path, as far as it runs without a GPU (issue 17 item 3; the GPU runs are
tests/ea_ops/test_tvm_cuda_gpu.py, through scripts/gpu_check.sh).

Checked here: the device plumbing (a tensor's capability -> its arch and kernels, a pack's arch against the GPUs,
the stream kernels launch on), that ``auto`` keeps Triton on CUDA, that a ``cuda:sm_90`` pack builds with a cubin
of that arch holding the kernels its library launches, that the arguments the runtime passes match the built
functions' parameters (read from the pack's manifest, which records them from the built module), and that a CUDA
pack is refused or loaded as it should be, with TVM's CUDA loader replaced by a stand-in that does what its
sources say it does (the only part not run: the real loader and the kernels on a GPU).
"""

from __future__ import annotations

import json
import math
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ea_ops
from ea_ops import KernelPackError
from ea_ops.backends.tvm import build, cuda_device, ops, packs
from ea_ops.backends.tvm.compiled import Compiled

tvm = pytest.importorskip("tvm")
import tvm_ffi  # noqa: E402

from ea_ops.backends.tvm import args as kernel_args  # noqa: E402
from ea_ops.backends.tvm import cuda_runtime  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
ORDER, H, D = 2, 2, 16


# ------------------------------------------------------------------------------------------- devices
@pytest.mark.parametrize("cap, arch", [((9, 0), "sm_90"), ((8, 0), "sm_80"), ((8, 6), "sm_86"), ((10, 0), "sm_100")])
def test_arch_of_a_capability_and_back(cap, arch):
    assert cuda_device.arch_of(cap) == arch and cuda_device.capability_of(arch) == cap


@pytest.mark.parametrize("bad", [(0, 0), (9, 10), ("9", 0)])
def test_a_bad_capability_is_refused(bad):
    with pytest.raises(ValueError, match="compute capability"):
        cuda_device.arch_of(bad)


@pytest.mark.parametrize("bad", ["sm90", "sm_9", "compute_90", 90, None])
def test_a_bad_arch_is_refused(bad):
    with pytest.raises(ValueError, match="looks like sm_90"):
        cuda_device.capability_of(bad)


def test_the_kernel_target_of_a_tensor_is_its_gpus_arch(monkeypatch):
    seen = []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i: seen.append(i) or ((9, 0) if i == 1 else (8, 0)))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert cuda_device.target_of(torch.device("cpu")) == "cpu"
    assert cuda_device.target_of(torch.device("cuda", 0)) == "sm_80"
    assert cuda_device.target_of(torch.device("cuda")) == "sm_90"  # no index: the current device
    assert seen == [0, 1]
    with pytest.raises(ValueError, match="CPU and CUDA tensors"):
        cuda_device.target_of(torch.device("meta"))


@pytest.mark.parametrize("arch, visible, match", [
    ("sm_90", {"cuda:0": "sm_90"}, None),
    ("sm_90", {"cuda:0": "sm_80", "cuda:1": "sm_90"}, None),
    ("sm_90", {"cuda:0": "sm_80"}, r"built for sm_90 and no GPU here is \(cuda:0 is sm_80\).*--target cuda:sm_80"),
    ("sm_80", {"cuda:0": "sm_90", "cuda:1": "sm_90"}, "built for sm_80 .*cuda:1 is sm_90"),
    ("sm_90", {}, "sees no CUDA device"),
    ("gfx90a", {"cuda:0": "sm_90"}, "not a CUDA arch"),
    (None, {"cuda:0": "sm_90"}, "not a CUDA arch"),
])
def test_a_packs_arch_must_be_a_visible_gpus(arch, visible, match):
    why = cuda_device.pack_problem(arch, visible)
    if match is None:
        assert why is None
    else:
        assert why is not None and __import__("re").search(match, why), why


def test_kernels_launch_on_the_current_stream_of_the_tensors_device(monkeypatch):
    """``launch`` sets tvm_ffi's stream for the tensors' GPU to torch's current stream there, for the call only."""
    class FakeStream:
        cuda_stream = 0xBEEF

    entered = []

    class FakeGuard:
        def __init__(self, idx):
            entered.append(idx)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

    monkeypatch.setattr(torch.cuda, "current_stream", lambda i: FakeStream() if i == 1 else None)
    monkeypatch.setattr(torch.cuda, "device", FakeGuard)
    seen = []
    cuda_device.launch(lambda *a: seen.append((tvm_ffi.get_raw_stream(tvm_ffi.device("cuda", 1)), a)),
                       torch.device("cuda", 1), (1, 2))
    assert seen == [(0xBEEF, (1, 2))] and entered == [1]
    assert tvm_ffi.get_raw_stream(tvm_ffi.device("cuda", 1)) != 0xBEEF  # restored after the call


# ----------------------------------------------------------------------------------------- dispatch
def _probe(device="cuda", dtype=torch.float32, shape=(1, 8, H, D)):
    from ea_ops.dispatch import _Probe

    return _Probe(device, dtype, shape)


def test_tvm_takes_cuda_tensors_when_named_and_auto_keeps_triton(monkeypatch):
    from ea_ops import dispatch
    from ea_ops.backends.tvm import backend

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert backend.supports(_probe(), causal=True, order=ORDER, needs_grad=True) is None
    assert not backend.prefers(_probe(), ORDER)
    assert dispatch.choose("tvm", _probe(), causal=True, order=ORDER, needs_grad=True).backend == "tvm"
    auto = dispatch.choose("auto", _probe(), causal=True, order=ORDER, needs_grad=True)
    assert auto.backend == ("triton" if "triton" not in auto.passed else "torch")
    # where Triton cannot run the call, auto still passes TVM by on CUDA and falls back to torch
    triton = dispatch.load("triton") if dispatch.available().get("triton") is None else None
    if triton is not None:
        monkeypatch.setattr(triton, "supports", lambda *a, **kw: "stand-in refusal")
    auto = dispatch.choose("auto", _probe(), causal=True, order=ORDER, needs_grad=True)
    assert auto.backend == "torch" and "not used by auto for cuda" in auto.passed["tvm"]
    assert backend.supports(_probe(dtype=torch.float64), causal=True, order=ORDER, needs_grad=False)
    assert "CPU and CUDA" in backend.supports(_probe("meta"), causal=True, order=ORDER, needs_grad=False)
    # CPU calls as before: auto takes TVM
    assert dispatch.choose("auto", _probe("cpu"), causal=True, order=ORDER, needs_grad=True).backend == "tvm"


def test_without_cuda_the_backend_says_why(monkeypatch):
    from ea_ops.backends.tvm import backend
    from ea_ops.errors import BackendUnavailableError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "torch.cuda.is_available() is False" in backend.supports(_probe(), causal=True, order=2, needs_grad=False)
    q = torch.zeros(1, 4, H, D, device="meta")
    with pytest.raises(BackendUnavailableError, match="CPU and CUDA"):
        ea_ops.ea_attention(q, q, q, order=2, backend="tvm")


@pytest.mark.parametrize("env, nvrtc, nvcc, want", [
    ({}, True, None, "nvrtc"), ({}, False, "/usr/bin/nvcc", "nvcc"), ({}, False, None, None),
    ({"TVM_CUDA_COMPILE_MODE": "NVCC"}, True, None, "nvcc"),
])
def test_the_cuda_compiler_of_in_process_builds(monkeypatch, env, nvrtc, nvcc, want):
    monkeypatch.setattr(shutil, "which", lambda name: nvcc)
    assert build.cuda_compiler(env, have_nvrtc=nvrtc) == want


def test_a_build_without_tvms_cuda_runtime_is_refused_clearly(monkeypatch):
    """Here TVM keeps the CUDA kernel as source only (no driver): building it in-process must say so."""
    from ea_ops.errors import BackendUnavailableError

    if tvm_ffi.get_global_func(cuda_runtime.CUDA_LOADER, allow_missing=True) is not None:
        pytest.skip("TVM's CUDA runtime is loaded here")
    monkeypatch.setenv("TVM_CUDA_COMPILE_MODE", "nvcc")
    cfg = cuda_device.default_config("forward", False)
    with pytest.raises(BackendUnavailableError, match="source only: its CUDA runtime"):
        build.build_cuda("forward", False, ORDER, "float32", H, D, cfg, "sm_90")
    with pytest.raises(cuda_runtime.CudaRuntimeError, match="CUDA runtime is not available in this process"):
        cuda_runtime.load_runtime()


# --------------------------------------------------------------------------- binaries for the loader
def test_the_compile_callback_serves_only_the_packs_binaries_and_is_restored():
    name = cuda_runtime.COMPILE_CALLBACK
    original = tvm_ffi.get_global_func(name, allow_missing=True)
    try:
        tvm_ffi.register_global_func(name, lambda src: b"previous", override=True)
        with cuda_runtime.serve_binaries({cuda_runtime.source_sha256("src A"): b"\x7fELF-A"}) as served:
            fn = tvm_ffi.get_global_func(name)
            assert fn("src A") == b"\x7fELF-A"
            with pytest.raises(RuntimeError, match="loading a pack never compiles"):
                fn("src B")
        assert served == [cuda_runtime.source_sha256("src A")]
        assert tvm_ffi.get_global_func(name)("src B") == b"previous"
        tvm_ffi.get_global_func("ffi.FunctionRemoveGlobal")(name)
        with cuda_runtime.serve_binaries({}):
            assert tvm_ffi.get_global_func(name, allow_missing=True) is not None
        assert tvm_ffi.get_global_func(name, allow_missing=True) is None  # `import tvm` can register its own
    finally:
        if original is not None:
            tvm_ffi.register_global_func(name, original, override=True)


# ------------------------------------------------------------------------------------- the sm_90 pack
@pytest.fixture(scope="module")
def cuda_pack(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cuda") / "sm90"
    res = subprocess.run([sys.executable, "-m", "ea_ops.cli", "compile", "--backend", "tvm", "--target", "cuda:sm_90",
                          "--orders", str(ORDER), "--shapes", f"{H}x{D}", "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def _nvcc(man: dict) -> None:
    if not man["versions"]["nvcc"]:
        pytest.skip("nvcc is not on the PATH: the pack has no cubin")


def test_the_sm90_pack_holds_libraries_and_cubins_of_sm90_with_its_kernels(cuda_pack):
    from schedules.tvm.cubin import cubin_info

    man = _manifest(cuda_pack)
    _nvcc(man)
    assert man["target"] == {"kind": "cuda", "arch": "sm_90", "fingerprint": "cuda-sm_90",
                             "host_arch": packs.host_arch()}
    assert {(k["kernel"], k["causal"], k["variant"]) for k in man["kernels"]} == {
        ("forward", True, "scan"), ("forward", True, "chunked"), ("forward", False, "scan"),
        ("backward", True, "scan"), ("backward", False, "scan")}
    for k in man["kernels"]:
        files = {role: cuda_pack / f["path"] for role, f in k["files"].items()}
        for role, f in k["files"].items():
            assert packs.sha256_of(files[role]) == f["sha256"], (k["name"], role)
        source, library = files["source"].read_bytes(), files["library"].read_bytes()
        # The CUDA module as the library holds it (CUDAModuleNode::SaveToBytes): format "cuda", the function
        # table, then the source, each length-prefixed; format "cuda" is what makes the loader ask the callback.
        at = library.index(source)
        assert struct.unpack_from("<Q", library, at - 8)[0] == len(source)
        fmt = library.rfind(struct.pack("<Q", 4) + b"cuda", 0, at)
        assert fmt >= 0 and all(n.encode() in library[fmt:at] for n in k["kernels"])
        info = cubin_info(files["cubin"].read_bytes())
        assert info["sm"] == 90 and k["kernels"] and set(k["kernels"]) <= set(info["functions"]), (k["name"], info)
        assert ".target sm_90" in files["ptx"].read_text()


def test_the_cubin_reader_knows_other_archs_and_refuses_other_files(tmp_path, cuda_pack):
    from schedules.tvm.cubin import cubin_info

    man = _manifest(cuda_pack)
    _nvcc(man)
    k = man["kernels"][0]
    out = tmp_path / "x.cubin"
    res = subprocess.run(["nvcc", "--cubin", "-arch=sm_80", "-O3", "-o", str(out), str(cuda_pack / k["files"]["ptx"]
                          ["path"])], capture_output=True, text=True, timeout=120)
    if res.returncode:  # the PTX is for sm_90: build sm_80 from the source instead
        res = subprocess.run(["nvcc", "--cubin", "-arch=sm_80", "-O3", "-o", str(out),
                              str(cuda_pack / k["files"]["source"]["path"])], capture_output=True, text=True,
                             timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert cubin_info(out.read_bytes())["sm"] == 80
    with pytest.raises(ValueError, match="ELF64"):
        cubin_info(b"not a cubin" * 10)
    so = (cuda_pack / k["files"]["library"]["path"]).read_bytes()
    with pytest.raises(ValueError, match="not a CUDA ELF"):
        cubin_info(so)  # a host library is ELF, not CUDA


def test_the_manifest_records_the_built_functions_parameters(cuda_pack):
    """The signature comes from the built module; the names are the argument table's (``args.py``)."""
    for k in _manifest(cuda_pack)["kernels"]:
        names = [p["name"] for p in k["signature"]]
        assert names == k["args"] == kernel_args.names(k["kernel"], k["causal"], k["variant"]), k["name"]
        assert all(p["dtype"] == "float32" for p in k["signature"])


def _entry(man: dict, kernel: str, causal: bool, variant: str) -> dict:
    return next(k for k in man["kernels"] if (k["kernel"], k["causal"], k["variant"]) == (kernel, causal, variant))


_TORCH = {"float32": torch.float32, "int16": torch.int16, "float16": torch.float16}


def _check_call(sig: list[dict], call: tuple, where: str) -> dict:
    """The arguments of one kernel call against the built function's parameters: count, dtype, shape (each
    symbol bound once, consistently), contiguity; the scale a float. Returns the symbols' values."""
    assert len(call) == len(sig), (where, len(call), [p["name"] for p in sig])
    bound: dict = {}
    for p, a in zip(sig, call):
        if "shape" not in p:
            assert isinstance(a, float), (where, p["name"], type(a))
            continue
        assert isinstance(a, torch.Tensor) and a.dtype == _TORCH[p["dtype"]], (where, p["name"], a.dtype)
        assert a.is_contiguous() and a.dim() == len(p["shape"]), (where, p["name"], tuple(a.shape))
        for dim, size in zip(p["shape"], a.shape):
            if isinstance(dim, int):
                assert size == dim, (where, p["name"], tuple(a.shape), p["shape"])
            else:
                assert bound.setdefault(dim, size) == size, (where, p["name"], dim, bound)
    return bound


@pytest.fixture
def as_if_on_sm90(monkeypatch, cuda_pack):
    """The ops' CUDA path on CPU tensors: target sm_90, the kernel a stand-in holding the pack entry's schedule
    that records its arguments; ``launch`` calls it directly."""
    man = _manifest(cuda_pack)
    calls: list = []
    chosen: dict = {}

    def fake_kernel_for(kernel, causal, order, dtype, H_, D_, T, config=None, *, target="cpu", channels=None):
        assert target == "sm_90" and (order, dtype, H_, D_) == (ORDER, "float32", H, D)
        variant = cuda_device.default_config(kernel, causal, channels)["variant"]
        entry = _entry(man, "forward" if kernel == "step" else kernel, True if kernel == "step" else causal,
                       chosen.get("variant", variant))
        calls.append(entry)
        return Compiled(lambda *a: calls.append(a), None, kernel, entry["schedule"], "pack", 0.0, "pack")

    monkeypatch.setattr(ops, "target_of", lambda t: "sm_90")
    monkeypatch.setattr(build, "kernel_for", fake_kernel_for)
    monkeypatch.setattr(cuda_device, "launch", lambda fn, device, a: fn(*a))
    return calls, chosen


@pytest.mark.parametrize("causal, variant", [(True, "chunked"), (True, "scan"), (False, "scan")])
def test_the_runtime_forward_passes_what_the_built_function_takes(as_if_on_sm90, causal, variant):
    calls, chosen = as_if_on_sm90
    chosen["variant"] = variant
    B, T = 3, 70
    q, k, v = (torch.randn(B, T, H, D) for _ in range(3))
    S = torch.zeros(B, H, ORDER + 1, D)
    ops.forward_impl(q, k, v, S, S.clone(), torch.full((B, H, D), math.inf), ORDER, causal, 0.5, [], True)
    entry, call = calls
    assert entry["variant"] == variant
    bound = _check_call(entry["signature"], call, entry["name"])
    assert bound["B"] == B and call[-1] == pytest.approx(math.sqrt(0.5))
    if variant == "chunked":
        assert bound["NC"] == -(-T // entry["schedule"]["chunk"])


@pytest.mark.parametrize("causal", [True, False])
def test_the_runtime_backward_and_packed_sequences_pass_what_the_built_function_takes(as_if_on_sm90, causal):
    calls, _ = as_if_on_sm90
    T = 50
    q, k, v, g = (torch.randn(1, T, H, D) for _ in range(4))
    S = torch.zeros(2, H, ORDER + 1, D)
    ops.backward_impl(q, k, v, g, S, S.clone(), torch.full((2, H, D), math.inf), ORDER, causal, 1.0, [0, 20, T])
    entry = calls[0]
    launches = calls[1:]
    assert entry["kernel"] == "backward" and len(launches) == 2  # one launch per packed sequence
    assert [_check_call(entry["signature"], c, entry["name"])["B"] for c in launches] == [1, 1]


def test_the_runtime_step_runs_the_causal_scan_at_one_token(as_if_on_sm90):
    calls, _ = as_if_on_sm90
    B = 4
    q, k, v = (torch.randn(B, H, D) for _ in range(3))
    S = torch.zeros(B, H, ORDER + 1, D)
    ops.step_impl(q, k, v, S, S.clone(), torch.full((B, H, D), math.inf), ORDER, 1.0)
    entry, call = calls
    assert (entry["kernel"], entry["causal"], entry["variant"]) == ("forward", True, "scan")
    assert _check_call(entry["signature"], call, "step") == {"B": B, "T_1": 1}


# ------------------------------------------------------------------------------------ loading the pack
def _copy(pack: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(pack, dst)
    return dst


def test_a_cuda_pack_needs_a_gpu_of_its_arch(cuda_pack, monkeypatch):
    with pytest.raises(KernelPackError, match="sees no CUDA device"):
        ea_ops.load_kernels(cuda_pack)
    monkeypatch.setattr(cuda_device, "visible_archs", lambda: {"cuda:0": "sm_80"})
    with pytest.raises(KernelPackError, match=r"built for sm_90 and no GPU here is \(cuda:0 is sm_80\)"):
        ea_ops.load_kernels(cuda_pack)


def test_a_cuda_pack_with_an_altered_or_missing_cubin_is_refused(cuda_pack, tmp_path, monkeypatch):
    man = _manifest(cuda_pack)
    _nvcc(man)
    monkeypatch.setattr(cuda_device, "visible_archs", lambda: {"cuda:0": "sm_90"})
    folder = _copy(cuda_pack, tmp_path)
    cubin = folder / man["kernels"][0]["files"]["cubin"]["path"]
    data = bytearray(cubin.read_bytes())
    data[len(data) // 2] ^= 1
    cubin.write_bytes(bytes(data))
    with pytest.raises(KernelPackError, match="does not match its sha256"):
        ea_ops.load_kernels(folder)
    del man["kernels"][0]["files"]["cubin"]
    (folder / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(KernelPackError, match="has no cubin file .*built without nvcc"):
        ea_ops.load_kernels(folder)
    man["sources_sha256"] = "0" * 64
    (folder / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(KernelPackError, match="other kernel sources"):
        ea_ops.load_kernels(folder)
    man["target"]["host_arch"] = "riscv64"
    (folder / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(KernelPackError, match=f"host code was built for riscv64, this host is {packs.host_arch()}"):
        ea_ops.load_kernels(folder)


def test_a_cuda_pack_loads_with_its_cubins_served_and_then_runs_the_calls(cuda_pack, monkeypatch):
    """TVM's CUDA loader stood in for: on load it hands the module's CUDA source to the compile callback and keeps
    what comes back (``JitCompileFromSource`` in src/runtime/cuda/cuda_module.cc). Every kernel must get its own
    cubin, and later calls on an sm_90 GPU must run the pack's kernels without building anything."""
    man = _manifest(cuda_pack)
    _nvcc(man)
    by_library = {(cuda_pack / k["files"]["library"]["path"]).name: k for k in man["kernels"]}
    got: dict = {}

    class FakeModule:
        def __getitem__(self, name):
            assert name == "main"
            return lambda *a: None

    def fake_load_module(path):
        k = by_library[Path(path).name]
        source = (cuda_pack / k["files"]["source"]["path"]).read_text()
        got[k["name"]] = tvm_ffi.get_global_func(cuda_runtime.COMPILE_CALLBACK)(source)
        return FakeModule()

    monkeypatch.setattr(cuda_device, "visible_archs", lambda: {"cuda:0": "sm_80", "cuda:1": "sm_90"})
    monkeypatch.setattr(cuda_runtime, "load_runtime", lambda: None)
    monkeypatch.setattr(tvm_ffi, "load_module", fake_load_module)
    before = len(build.BUILD_LOG)
    try:
        info = ea_ops.load_kernels(cuda_pack)
        assert len(info["kernels"]) == 5 and "forward-causal-t2-float32-H2D16-sm_90-chunked" in info["kernels"]
        for k in man["kernels"]:
            assert got[k["name"]] == (cuda_pack / k["files"]["cubin"]["path"]).read_bytes(), k["name"]
        for kernel, causal, channels, variant in (("forward", True, 64, "chunked"), ("forward", True, 1 << 20, "scan"),
                                                  ("step", True, 64, "scan"), ("backward", False, 64, "scan")):
            comp = build.kernel_for(kernel, causal, ORDER, "float32", H, D, 100, target="sm_90", channels=channels)
            assert comp.origin == "pack" and comp.config["variant"] == variant, (kernel, causal, channels)
        assert len(build.BUILD_LOG) == before
        assert packs.lookup("forward", True, ORDER, "float32", H, D) is None  # not a CPU kernel
        assert packs.lookup("forward", True, ORDER, "float32", H, D, target="sm_80", variant="scan") is None
    finally:
        packs.unload_all()


def test_a_cuda_pack_from_a_log_takes_its_cuda_calls(tmp_path):
    """``ea-ops compile --target cuda:sm_90 --from-log``: the shapes, orders and dtypes of the log's CUDA calls
    (its CPU calls are for a CPU pack), each with every CUDA variant."""
    from types import SimpleNamespace

    from schedules.tvm import cli_compile

    base = {"v": 1, "kind": "forward", "needs_grad": False, "B": 1, "T": 40, "n_seqs": None, "T_bucket": 64,
            "H": 2, "D": 8, "order": 2, "dtype": "float32", "causal": False, "device": "cuda"}
    log = tmp_path / "calls.jsonl"
    log.write_text("\n".join(json.dumps({**base, **c}) for c in (
        {}, {"H": 4, "D": 32, "order": 6, "dtype": "bfloat16", "kind": "step", "T": 1, "T_bucket": 1, "causal": True},
        {"device": "cpu", "H": 8, "D": 64}, {"dtype": "float64"})) + "\n")
    args = SimpleNamespace(orders=[6], dtypes=["float32"], shapes=None, heads=None, dim=None, from_log=str(log))
    combos = sorted({(H, D, o, dt) for _, _, o, dt, H, D in cli_compile._work(args, cli_compile._shapes(args),
                                                                               "cuda")})
    assert combos == [(2, 8, 2, "float32"), (4, 32, 6, "bfloat16")]
    names = cli_compile.output_names("cuda", [6], ["float32"], [(8, 64)], "13.0", combos=combos)
    assert len(names) == 2 * len(cli_compile.CUDA_VARIANTS) * 4 + 1
    assert "forward-causal-chunked-t6-bfloat16-H4D32.cubin" in names and not any("H8D64" in n for n in names)


def test_the_installed_cuda_runtime_compiles_source_through_the_callback_and_launches_on_the_env_stream():
    """What the CUDA path relies on, in this TVM's libtvm_runtime_cuda.so itself (its sources say the same): the
    loader of format "cuda" turns source into code through ``tvm_callback_cuda_compile`` (what a pack serves),
    loads the result with cuModuleLoadData, and launches on tvm_ffi's environment stream (what ``launch`` sets)."""
    import importlib.util

    lib = Path(importlib.util.find_spec("tvm").origin).parent / "lib" / "libtvm_runtime_cuda.so"
    if not lib.is_file():
        pytest.skip(f"{lib} is not part of this TVM installation")
    data = lib.read_bytes()
    for needed in (cuda_runtime.CUDA_LOADER, cuda_runtime.COMPILE_CALLBACK,
                   "fmt=='cuda' requires tvm_callback_cuda_compile", "cuModuleLoadData", "TVMFFIEnvGetStream"):
        assert needed.encode() in data, needed
