"""Curated Triton configurations the tuner measures (not a Cartesian grid).

Why these: a program takes ``32 * num_warps`` channels, one per thread (larger blocks put a shared-memory
layout conversion in every row, ``ea_ops.backends.triton.cuda_kernels``), so ``num_warps`` is the block size; 1-4 warps
cover ``H*D`` from 32 up. Chunk lengths trade parallelism (more chunks: more (channel, chunk) scans in
flight) against the extra traffic of the chunked passes (the chunk sums pass re-reads k and v, and every
chunk writes and reads ``2(t+1)+1`` state floats per channel): short chunks only with few warps (small
``H*D``, where lanes are scarce), long chunks with many warps. The runtime default (``ea_ops.backends.triton.configs.
default``) always picks from these lists.
"""

from __future__ import annotations

from ea_ops.backends.triton import configs as runtime

WARPS = (1, 2, 4)

_SCAN = [{"variant": "scan", "num_warps": w} for w in WARPS]
# every chunk up to the block size's longest (ea_ops.backends.triton.configs.MAX_CHUNK): the pairs the default uses
_CHUNKED = [
    {"variant": "chunked", "num_warps": w, "chunk": c}
    for w, c in ((1, 32), (1, 64), (2, 32), (2, 64), (2, 128), (4, 32), (4, 64), (4, 128), (4, 256))
]
FORWARD = _SCAN + _CHUNKED  # causal; the non-causal kernels take the chunked entries only
BACKWARD = _SCAN + _CHUNKED
STEP = [{"num_warps": w} for w in WARPS]

CURATED = {"forward": FORWARD, "backward": BACKWARD, "step": STEP}


def candidates(kernel: str, *, causal: bool, HD: int, n_seqs: int, rows: int) -> list[dict]:
    """The curated configurations that make sense for this call, the default first (no duplicates).

    Dropped: blocks more than twice ``H*D`` wide (idle threads), chunks not shorter than the mean
    sequence (one chunk per sequence is the scan plus two passes), scans for non-causal calls.
    """
    default = runtime.default(kernel, causal=causal, HD=HD, n_seqs=n_seqs, rows=rows)
    mean = rows / max(1, n_seqs)
    out = [default]
    for cfg in CURATED[kernel]:
        if cfg in out:
            continue
        if 32 * cfg["num_warps"] > 2 * max(HD, 32):
            continue
        if cfg.get("variant") == "scan" and not causal:
            continue
        if cfg.get("variant") == "chunked" and cfg["chunk"] >= mean:
            continue
        out.append(cfg)
    return out


def all_warps() -> tuple[int, ...]:
    """Every ``num_warps`` a shipped configuration (curated or default) can use."""
    defaults = {runtime.default_warps(hd) for hd in (1, 64, 128)}
    return tuple(sorted(set(WARPS) | defaults))
