"""The Taylor path never forms an O(T^2) tensor: every intermediate stays O(B*T*H*D)."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import ea_ops
from ea_ops import host_pages


class LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("causal", [True, False])
def test_no_quadratic_intermediates(causal):
    B, T, H, D, order = 1, 4096, 1, 2, 6
    q, k, v = (torch.randn(B, T, H, D, requires_grad=True) for _ in range(3))
    with LargestTensor() as mode:
        o, _ = ea_ops.ea_attention(q, k, v, order=order, causal=causal, backend="torch")
        o.sum().backward()
    # Chunk-local C x C weights (C <= 64) and [N, C, t+1] features; a T x T tensor would be 8M elements.
    assert mode.largest <= 64 * B * T * H * D, mode.largest



@pytest.mark.parametrize("backend", ["tvm", "torch"])
def test_out_is_written_in_place_and_a_long_tvm_prefill_faults_no_page(backend):
    """``out=``: the same values as a new output; on TVM no fresh page at T = 16k (a new 32 MiB output is 8192
    fresh pages, each a page fault, and the kernel's two threads raced on each: ~16k faults per call)."""
    if backend == "tvm":
        pytest.importorskip("tvm")
    import resource

    B, T, H, D = 1, 16384 if backend == "tvm" else 300, 8, 64
    q, k, v = (torch.randn(B, T, H, D) * 0.5 for _ in range(3))
    want, _ = ea_ops.ea_attention(q, k, v, backend=backend)
    out = torch.full_like(q, float("nan"))
    got, _ = ea_ops.ea_attention(q, k, v, backend=backend, out=out)
    assert got is out and torch.equal(out, want)
    if backend == "tvm":
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        ea_ops.ea_attention(q, k, v, backend=backend, out=out)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        assert faults < 200, faults  # the output alone is 8192 pages
        assert torch.equal(out, want)


@pytest.mark.skipif(host_pages.huge_pages_mode() not in ("always", "madvise"),
                    reason="this kernel offers no transparent huge pages")
def test_a_new_long_output_faults_once_per_huge_page():
    """Without ``out=`` a new 32 MiB output (T = 16k) is fresh memory from glibc: 8192 pages of 4 KiB, each a
    fault (~16k with the two threads racing). On huge pages (``ea_ops.host_pages``) it is 16 faults of 2 MiB
    plus at most 1024 small pages at the unaligned ends; gradients of the backward likewise."""
    pytest.importorskip("tvm")
    import resource

    B, T, H, D = 1, 16384, 8, 64
    q, k, v = (torch.randn(B, T, H, D, requires_grad=True) for _ in range(3))
    g = torch.randn(B, T, H, D)
    ea_ops.ea_attention(q, k, v, backend="tvm")[0].backward(g)  # builds and loads the kernels
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    o, _ = ea_ops.ea_attention(q.detach(), k.detach(), v.detach(), backend="tvm")
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < 2 * 1024 + 64, faults  # 4 KiB pages: 8192 or more
    torch.testing.assert_close(o, ea_ops.ea_attention(q.detach(), k.detach(), v.detach(), backend="torch")[0],
                               rtol=1e-5, atol=1e-5)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    ea_ops.ea_attention(q, k, v, backend="tvm")[0].backward(g)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < 4 * (2 * 1024 + 64), faults  # o, dq, dk, dv: 4 x 8192 pages of 4 KiB
    assert host_pages.advise_huge(torch.empty(8 << 20))
    assert not host_pages.advise_huge(torch.empty((8 << 20) - 1))
    assert not host_pages.advise_huge(torch.empty(1 << 20))
