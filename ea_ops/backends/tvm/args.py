"""The arguments of every TVM kernel, in call order: one table, read by the kernels (which declare their
buffers from it), the tuner (which fills each argument by its role) and the exporter (which writes the
names into a pack's manifest).

An argument is ``name:kind:role``. Kinds: ``seq`` ``[B, T, H, D]`` (in the kernel's dtype for the data and
gradients, float32 for scratch), ``state`` ``[B, H, t+1, D]`` and ``m`` ``[B, H, D]`` (float32), ``scalar``
(``r = sqrt(scale)``, always last). Roles: ``x`` input data, ``o`` written by the kernel, ``0`` zeros,
``+inf`` / ``-inf`` running minima, ``r`` the scale. The CUDA chunked forward's chunk states (``SC, ZC,
MC``) have their own shapes and are declared by that kernel; they are listed here for the manifest.
"""

from __future__ import annotations

_SPEC = {
    ("forward", True): "q:seq:x k:seq:x v:seq:x o:seq:o S:state:0 Z:state:0 M:m:+inf r:scalar:r",
    ("forward", False): "q:seq:x k:seq:x v:seq:x o:seq:o S:state:0 Z:state:0 M:m:+inf r:scalar:r",
    ("backward", True): "q:seq:x k:seq:x v:seq:x g:seq:x S:state:0 Z:state:0 M:m:+inf C:seq:o CO:seq:o "
                        "MM:seq:o U:state:0 W:state:0 MN:m:-inf dq:seq:o dk:seq:o dv:seq:o r:scalar:r",
    ("backward", False): "q:seq:x k:seq:x v:seq:x g:seq:x S:state:0 Z:state:0 M:m:+inf U:state:0 W:state:0 "
                         "dq:seq:o dk:seq:o dv:seq:o r:scalar:r",
    ("forward", True, "chunked"): "q:seq:x k:seq:x v:seq:x o:seq:o S:state:0 Z:state:0 M:m:+inf SC:chunks:o "
                                  "ZC:chunks:o MC:chunks:o r:scalar:r",
}
# Data and gradients come in the kernel's dtype; every other tensor is float32.
DATA = frozenset({"q", "k", "v", "g", "o", "dq", "dk", "dv"})


def _key(kernel: str, causal: bool, variant: str | None) -> tuple:
    if kernel == "step":  # the causal forward at T = 1
        kernel, causal = "forward", True
    return (kernel, causal, variant) if variant == "chunked" else (kernel, causal)


def table(kernel: str, causal: bool, variant: str | None = None) -> list[tuple[str, str, str]]:
    """``[(name, kind, role), ...]`` of one kernel, in call order."""
    try:
        spec = _SPEC[_key(kernel, causal, variant)]
    except KeyError:
        raise ValueError(f"no TVM kernel {kernel!r} (causal={causal}, variant={variant!r})") from None
    return [tuple(a.split(":")) for a in spec.split()]


def names(kernel: str, causal: bool, variant: str | None = None) -> list[str]:
    return [n for n, _, _ in table(kernel, causal, variant)]


def roles(kernel: str, causal: bool) -> list[str]:
    """The tuner's fill rule per tensor argument (tuning workloads take the scale as a constant)."""
    return [r for _, kind, r in table(kernel, causal) if kind != "scalar"]
