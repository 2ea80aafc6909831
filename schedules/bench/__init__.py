"""``ea-ops bench``, the one benchmark system: side-by-side speed ratios against the backend untuned, eager
PyTorch, torch.compile, the cumsum form, SDPA, FlashAttention and a copy.

Modules: ``workloads`` (shapes and presets), ``goals`` (the issues' targets, judged), ``peers`` (the timed
callables), ``gate`` (correctness before speed), ``timing`` (one timer per device), ``runner`` (one process,
one run), ``report`` (table, JSON, PNG), ``memory`` (peak memory in a fresh process), ``cli`` (the command line).
"""


__all__ = ["main"]
