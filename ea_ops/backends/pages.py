"""Fresh pages of large CPU outputs: write them once, on distinct pages per thread, before a kernel does.

glibc serves an allocation of 32 MiB or more (its largest dynamic mmap threshold) from new ``mmap`` pages every
time, and the first write to each page is a page fault. A multi-threaded kernel that writes the rows of
``[B, T, H, D]`` in time order has every thread writing every page, so both threads of a 2-core machine fault
on the same pages: twice the faults of the output's own pages and twice the time (B1 T16k H8 D64 float32
forward, 32 MiB output: 16.2k faults and +15 ms on a 5 ms kernel). ``torch``'s fill splits the buffer
into one range per thread: one fault per page, about half the time (docs/measurements.md section 14).
No write happens when the first page is already mapped (memory reused from the heap, as under
``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=...``, README "Long sequences"); ``mincore`` tells, once per output.
"""

from __future__ import annotations

import ctypes
import mmap
import sys

from torch import Tensor

PAGE = mmap.PAGESIZE
MIN_BYTES = 1 << 20  # below this glibc reuses heap memory, and faults cost less than the check


def _mincore():
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).mincore
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    fn.restype = ctypes.c_int
    return fn


_MINCORE = _mincore()


def is_fresh(t: Tensor) -> bool:
    """Whether the first whole page of ``t``'s memory has never been touched (not resident)."""
    if _MINCORE is None:
        return False
    start = -(-t.data_ptr() // PAGE) * PAGE
    if start + PAGE > t.data_ptr() + t.nbytes:
        return False
    vec = ctypes.c_ubyte(0)
    if _MINCORE(start, PAGE, ctypes.byref(vec)) != 0:
        return False
    return not vec.value & 1


def touch_if_fresh(t: Tensor) -> Tensor:
    """``t`` (a contiguous CPU output about to be written by a kernel), its pages faulted in once if fresh."""
    if t.device.type == "cpu" and t.nbytes >= MIN_BYTES and is_fresh(t):
        t.zero_()
    return t
