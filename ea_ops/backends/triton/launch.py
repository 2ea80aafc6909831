"""Host side of the Triton kernels: buffers, work tables and launches for one configuration.

Inputs arrive contiguous ``[B, T, H, D]`` (rows ``[B*T, H*D]``) with the state ``S, Z [seqs, H, t+1, D]``,
``m [seqs, H, D]`` float32. A configuration is a dict (``ea_ops.backends.triton.configs``):
``{"variant": "scan" | "chunked", "num_warps": w, "chunk": L}``; programs take ``BLOCK_C = 32 * w``
channels (one per thread, see ``kernels``). ``common.poison_outputs()`` makes every buffer start as NaN, so a
test sees any element a kernel forgot to write.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..common import CHUNKED, new_buffer
from . import cuda_kernels as K
from .plan import Plan, make_plan, sequences

# The constexpr flags each launch uses (the ahead-of-time build compiles exactly these; keep in sync).
SCAN_OUT = dict(LOAD_STATE=True, WRITE_O=True, STORE_STATE=False)  # outputs only (chunks, or no final state)
SCAN_OUT_STATE = dict(LOAD_STATE=True, WRITE_O=True, STORE_STATE=True)  # outputs and final state; the step
SCAN_SUMS = dict(LOAD_STATE=False, WRITE_O=False, STORE_STATE=True)  # a chunk's own sums
PREFIX_INIT = dict(LOAD_INIT=True, STORE_FINAL=False)
PREFIX_INIT_FINAL = dict(LOAD_INIT=True, STORE_FINAL=True)
PREFIX_GLOBAL = dict(LOAD_INIT=False, STORE_FINAL=True)  # non-causal: sums over the whole sequence
REV_OWN = dict(LOAD_STATE=False, WRITE_GRADS=True, STORE_STATE=False)  # whole sequences
REV_SUMS = dict(LOAD_STATE=False, WRITE_GRADS=False, STORE_STATE=True)  # a chunk's own reverse sums
REV_GRADS = dict(LOAD_STATE=True, WRITE_GRADS=True, STORE_STATE=False)  # chunks, from the suffix
LAUNCHES = (
    ("fwd_scan", SCAN_OUT), ("fwd_scan", SCAN_OUT_STATE), ("fwd_scan", SCAN_SUMS),
    ("chunk_prefix", PREFIX_INIT), ("chunk_prefix", PREFIX_INIT_FINAL), ("chunk_prefix", PREFIX_GLOBAL),
    ("bwd_dx_scan", {}), ("bwd_rev_scan", REV_OWN), ("bwd_rev_scan", REV_SUMS), ("bwd_rev_scan", REV_GRADS),
    ("chunk_suffix", {}), ("nc_out", {}), ("nc_bwd_dx", {}), ("nc_bwd_dkdv", {}),
)


def padded_terms(order: int) -> int:
    """``T1P``: ``order + 1`` rounded up to a power of two (at least 2)."""
    return max(2, 1 << (order).bit_length())


def block_c(config: dict) -> int:
    return 32 * int(config["num_warps"])


# Rows whose loads a program issues at once (then scans them from registers): more bytes in flight per
# thread. 8 made ptxas (CUDA 13.4, Triton 3.9) spill a few bytes in 6 of the shipped builds; 4 spills in none
# (the AOT test checks every shipped build).
ROWS = 4


def _meta(order: int, config: dict) -> dict:
    return dict(ORDER=order, T1=order + 1, T1P=padded_terms(order), BLOCK_C=block_c(config), ROWS=ROWS,
                num_warps=int(config["num_warps"]))


def _grid(n: int, HD: int, config: dict) -> tuple[int, int]:
    return (n, triton_cdiv(HD, block_c(config)))


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _state_bufs(n: int, H: int, t1: int, D: int, device) -> tuple[Tensor, Tensor, Tensor]:
    f32 = torch.float32
    return tuple(new_buffer(shape, f32, device) for shape in ((n, H, t1, D), (n, H, t1, D), (n, H, D)))


def _plan(B: int, T: int, segments, config: dict, device, *, force_chunk: bool = False) -> Plan:
    chunked = force_chunk or config.get("variant") == CHUNKED
    # a "scan" configuration given to the (always chunked) non-causal kernels: the longest curated chunk
    return make_plan(sequences(B, T, segments), int(config.get("chunk", 256)) if chunked else None, device)


def _chunk_states(k: Tensor, v: Tensor, plan: Plan, HD: int, D: int, r: float, meta: dict, config: dict,
                  init: tuple[Tensor, Tensor, Tensor] | None, final: tuple[Tensor, Tensor, Tensor] | None):
    """States entering each chunk ``[items, H, t+1, D]`` (pass 1: chunk sums; pass 2: prefix per sequence)."""
    H = HD // D
    st = _state_bufs(plan.n_items, H, meta["T1"], D, k.device)
    if plan.n_items:
        K.ea_fwd_scan[_grid(plan.n_items, HD, config)](
            k, k, v, k, plan.bounds, *st, *st, r, HD, D, **SCAN_SUMS, **meta)
    if init is None:
        flags = PREFIX_GLOBAL
    else:
        flags = PREFIX_INIT if final is None else PREFIX_INIT_FINAL
    K.ea_chunk_prefix[_grid(plan.n_seqs, HD, config)](
        plan.bounds, plan.seq_chunks, *(init or st), *st, *(final or st), HD, D,
        T1=meta["T1"], T1P=meta["T1P"], BLOCK_C=meta["BLOCK_C"], num_warps=meta["num_warps"], **flags)
    return st


# --------------------------------------------------------------------------------------------- forward
def forward(q: Tensor, k: Tensor, v: Tensor, state: tuple[Tensor, Tensor, Tensor] | None, *, order: int,
            causal: bool, scale: float, segments: list[tuple[int, int]] | None, want_state: bool,
            config: dict) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor] | None]:
    """``o`` and (causal, ``want_state``) the final state. ``state``: the initial state (causal only)."""
    B, T, H, D = q.shape
    HD, r, dev = H * D, math.sqrt(scale), q.device
    meta = _meta(order, config)
    o = new_buffer(q.shape, q.dtype, dev)
    n_seqs = B if segments is None else len(segments)
    if not causal:
        plan = _plan(B, T, segments, config, dev, force_chunk=True)
        g = _state_bufs(n_seqs, H, order + 1, D, dev)
        _chunk_states(k, v, plan, HD, D, r, meta, config, None, g)
        if plan.n_items:
            K.ea_nc_out[_grid(plan.n_items, HD, config)](q, o, plan.bounds, plan.item_seq, g[0], g[1], r, HD, D,
                                                        **meta)
        return o, None
    final = _state_bufs(n_seqs, H, order + 1, D, dev) if want_state else None
    plan = _plan(B, T, segments, config, dev)
    if plan.chunk is None:
        out = final or state
        K.ea_fwd_scan[_grid(plan.n_items, HD, config)](
            q, k, v, o, plan.bounds, *state, *out, r, HD, D, **(SCAN_OUT_STATE if want_state else SCAN_OUT),
            **meta)
        return o, final
    st = _chunk_states(k, v, plan, HD, D, r, meta, config, state, final)
    if plan.n_items:
        K.ea_fwd_scan[_grid(plan.n_items, HD, config)](
            q, k, v, o, plan.bounds, *st, *st, r, HD, D, **SCAN_OUT, **meta)
    return o, final


def step(q: Tensor, k: Tensor, v: Tensor, state: tuple[Tensor, Tensor, Tensor], *, order: int, scale: float,
         config: dict) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """One token ``q, k, v [B, H, D]``: the forward scan over one row per batch entry."""
    B, H, D = q.shape
    meta = _meta(order, config)
    o = new_buffer(q.shape, q.dtype, q.device)
    new = _state_bufs(B, H, order + 1, D, q.device)
    plan = make_plan(sequences(B, 1, None), None, q.device)
    K.ea_fwd_scan[_grid(B, H * D, config)](
        q, k, v, o, plan.bounds, *state, *new, math.sqrt(scale), H * D, D, **SCAN_OUT_STATE, **meta)
    return o, new


# -------------------------------------------------------------------------------------------- backward
def backward(q: Tensor, k: Tensor, v: Tensor, g: Tensor, state: tuple[Tensor, Tensor, Tensor] | None, *,
             order: int, causal: bool, scale: float, segments: list[tuple[int, int]] | None,
             config: dict) -> tuple[Tensor, Tensor, Tensor]:
    """``dq, dk, dv`` of ``sum(g * o)`` in the input dtype (the state gets no gradient)."""
    B, T, H, D = q.shape
    HD, r, dev = H * D, math.sqrt(scale), q.device
    meta = _meta(order, config)
    t1 = order + 1
    dq, dk, dv = (new_buffer(q.shape, q.dtype, dev) for _ in range(3))
    n_seqs = B if segments is None else len(segments)
    if not causal:
        plan = _plan(B, T, segments, config, dev, force_chunk=True)
        gs = _state_bufs(n_seqs, H, t1, D, dev)
        _chunk_states(k, v, plan, HD, D, r, meta, config, None, gs)
        if plan.n_items == 0:
            return dq, dk, dv
        # per-item partial sums, and a zero row (index n_items) that pads plan.seq_items
        up = new_buffer((plan.n_items + 1, H, t1, D), torch.float32, dev)
        wp = new_buffer((plan.n_items + 1, H, t1, D), torch.float32, dev)
        up[plan.n_items:].zero_()
        wp[plan.n_items:].zero_()
        grid = _grid(plan.n_items, HD, config)
        K.ea_nc_bwd_dx[grid](q, g, dq, plan.bounds, plan.item_seq, gs[0], gs[1], up, wp, r, HD, D, **meta)
        # each sequence's sum over its items by a gather and a reduction, not index_add_ (atomic on CUDA:
        # the order of the float additions, and so the gradients' last bits, would change from run to run)
        U, W = up[plan.seq_items].sum(1), wp[plan.seq_items].sum(1)
        K.ea_nc_bwd_dkdv[grid](k, v, dk, dv, plan.bounds, plan.item_seq, U, W, gs[2], r, HD, D, **meta)
        return dq, dk, dv
    f32 = torch.float32
    cbuf, cobuf, mbuf = (new_buffer((B * T, HD), f32, dev) for _ in range(3))
    plan = _plan(B, T, segments, config, dev)
    if plan.n_items == 0:
        return dq, dk, dv
    grid = _grid(plan.n_items, HD, config)
    if plan.chunk is None:
        K.ea_bwd_dx_scan[grid](q, k, v, g, dq, plan.bounds, *state, cbuf, cobuf, mbuf, r, HD, D, **meta)
        K.ea_bwd_rev_scan[grid](q, k, v, dk, dv, plan.bounds, cbuf, cobuf, mbuf, *state, *state, r, HD, D,
                                **REV_OWN, **meta)
        return dq, dk, dv
    st = _chunk_states(k, v, plan, HD, D, r, meta, config, state, None)
    K.ea_bwd_dx_scan[grid](q, k, v, g, dq, plan.bounds, *st, cbuf, cobuf, mbuf, r, HD, D, **meta)
    agg = _state_bufs(plan.n_items, H, t1, D, dev)  # reverse sums of each chunk, then suffixes, in place
    K.ea_bwd_rev_scan[grid](q, k, v, dk, dv, plan.bounds, cbuf, cobuf, mbuf, *agg, *agg, r, HD, D,
                            **REV_SUMS, **meta)
    K.ea_chunk_suffix[_grid(plan.n_seqs, HD, config)](
        plan.seq_chunks, *agg, HD, D, T1=meta["T1"], T1P=meta["T1P"], BLOCK_C=meta["BLOCK_C"],
        num_warps=meta["num_warps"])
    K.ea_bwd_rev_scan[grid](q, k, v, dk, dv, plan.bounds, cbuf, cobuf, mbuf, *agg, *agg, r, HD, D,
                            **REV_GRADS, **meta)
    return dq, dk, dv
