"""Huge pages for large CPU outputs (Linux): fewer page faults on fresh memory.

glibc maps every allocation of ``FRESH_BYTES`` or more anew (its largest dynamic mmap threshold on 64-bit), so
each 4 KiB page of a new long-sequence output faults once it is written: about 1.8 us a fault on the
measured VM, more than the kernel spends per page (docs/measurements.md section 14). Advising the buffer's
2 MiB-aligned interior as huge pages (``MADV_HUGEPAGE``, honoured when
``/sys/kernel/mm/transparent_hugepage/enabled`` is ``always`` or ``madvise``) makes it one fault per 2 MiB.
The advice is only a hint about our own buffer; it changes nothing else in the process and is gone when glibc
unmaps the buffer. torch's own ``THP_MEM_ALLOC_ENABLE=1`` does the same for every allocation of 2 MiB or more.
"""

from __future__ import annotations

import ctypes
import sys

from torch import Tensor

FRESH_BYTES = 32 << 20
HUGE_PAGE = 2 << 20
_MADV_HUGEPAGE = 14  # <asm-generic/mman-common.h>


def _load_madvise():
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_madvise = _load_madvise()


def huge_pages_mode() -> str | None:
    """The kernel's transparent huge page setting (``always``, ``madvise`` or ``never``); None off Linux."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            text = f.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def advise_huge(t: Tensor) -> bool:
    """Advise huge pages for the whole 2 MiB pages inside ``t``'s memory when ``t`` is a CPU tensor of at least
    ``FRESH_BYTES``; call it before the first write. Returns whether the kernel took the advice (False off
    Linux, below the size, or when refused: transparent huge pages ``never``)."""
    nbytes = t.numel() * t.element_size()
    if _madvise is None or t.device.type != "cpu" or nbytes < FRESH_BYTES:
        return False
    start = -(-t.data_ptr() // HUGE_PAGE) * HUGE_PAGE
    end = (t.data_ptr() + nbytes) // HUGE_PAGE * HUGE_PAGE
    return end > start and _madvise(start, end - start, _MADV_HUGEPAGE) == 0
