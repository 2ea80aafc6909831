"""``ea-ops bench``: side-by-side speed ratios against eager PyTorch, torch.compile, SDPA and a copy.

Modules: ``workloads`` (shapes and presets), ``peers`` (the timed callables), ``gate`` (correctness before
speed), ``timing`` (timers), ``runner`` (one process, one run), ``report`` (table, JSON, PNG), ``memory``
(peak memory in a fresh process), ``cli`` (the command line).
"""

from .cli import main

__all__ = ["main"]
