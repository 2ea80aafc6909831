"""Exceptions of ea_ops."""


class BackendUnavailableError(RuntimeError):
    """A requested backend cannot run here (missing extra, wrong device, unsupported feature)."""


class KernelPackError(ValueError):
    """A kernel pack (``ea_ops.load_kernels``) was refused: malformed, altered, or built for another host or
    version. The message says which."""
