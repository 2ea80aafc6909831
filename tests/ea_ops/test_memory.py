"""The Taylor path never forms an O(T^2) tensor: every intermediate stays O(B*T*H*D)."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import ea_ops


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


def test_fresh_large_outputs_fault_each_page_once():
    """A 32 MiB output comes from new mmap pages (glibc); the TVM forward, whose two threads write the same
    rows, must fault each of its pages once (it faulted each twice: both threads raced on every page)."""
    pytest.importorskip("tvm")
    import resource

    from ea_ops.backends import pages

    B, T, H, D = 1, 16384, 8, 64
    q, k, v = (torch.randn(B, T, H, D) * 0.5 for _ in range(3))
    ea_ops.ea_attention(q, k, v, backend="tvm")  # build (or load) the kernel first
    probe = torch.empty(B, T, H, D)
    if not pages.is_fresh(probe):  # an allocator that reuses pages (GLIBC_TUNABLES, jemalloc): nothing to test
        pytest.skip("this allocator hands out reused pages for 32 MiB")
    del probe
    own_pages = B * T * H * D * 4 // pages.PAGE
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    o, _ = ea_ops.ea_attention(q, k, v, backend="tvm")
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults <= own_pages * 1.05 + 256, (faults, own_pages)
    ref, _ = ea_ops.ea_attention(q[:, :256], k[:, :256], v[:, :256], backend="torch")
    assert torch.allclose(o[:, :256], ref, rtol=1e-4, atol=1e-5)


def test_is_fresh_tells_untouched_pages_from_written_ones():
    from ea_ops.backends import pages

    t = torch.empty(64 << 20, dtype=torch.uint8)  # 64 MiB: mmap under glibc, never touched
    if pages._MINCORE is None:
        pytest.skip("no mincore on this platform")
    fresh = pages.is_fresh(t)
    pages.touch_if_fresh(t)
    assert not pages.is_fresh(t)
    assert fresh or not pages.is_fresh(torch.empty(64 << 20, dtype=torch.uint8))  # reused pages stay "not fresh"
    small = torch.empty(100, dtype=torch.uint8)
    assert pages.touch_if_fresh(small) is small
