"""Exceptions of ea_ops."""


class BackendUnavailableError(RuntimeError):
    """A requested backend cannot run here (missing extra, wrong device, unsupported feature)."""
