"""``Compiled``: a kernel ready to run, as ``build`` (built or from the disk cache) and ``packs`` give it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Compiled:
    """A kernel ready to run: ``fn(*tensors, r)``, where its schedule came from and where its code came from."""

    fn: Any = field(repr=False)
    lib: Any = field(repr=False)
    kernel: str
    config: dict
    source: str  # the schedule's: "record", "transferred", "default", "given" or "pack"
    build_s: float  # seconds this process spent building it (0.0 when loaded)
    origin: str = "built"  # "built" in this process, "disk" (the compiled-kernel cache) or "pack" (a kernel pack)
    load_s: float = 0.0  # seconds spent loading it from disk
