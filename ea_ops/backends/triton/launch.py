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
PREFIX_INIT = dict(LOAD_INIT=True, WRITE_PREFIX=True, STORE_FINAL=False)
PREFIX_INIT_FINAL = dict(LOAD_INIT=True, WRITE_PREFIX=True, STORE_FINAL=True)
# the total only: non-causal sums over the whole sequence, and a group's own total (two-level prefix)
PREFIX_TOTAL = dict(LOAD_INIT=False, WRITE_PREFIX=False, STORE_FINAL=True)
DX_OWN = dict(STORE_REV=False)  # whole sequences
DX_SUMS = dict(STORE_REV=True)  # chunks: also each chunk's own reverse sums
REV_OWN = dict(LOAD_STATE=False)  # whole sequences
REV_GRADS = dict(LOAD_STATE=True)  # chunks, from the suffix
SUFFIX_OWN = dict(LOAD_INIT=False, WRITE_SUFFIX=True, STORE_TOTAL=False)  # a sequence's chunks, or its groups
SUFFIX_TOTAL = dict(LOAD_INIT=False, WRITE_SUFFIX=False, STORE_TOTAL=True)  # a group's own total
SUFFIX_FROM = dict(LOAD_INIT=True, WRITE_SUFFIX=True, STORE_TOTAL=False)  # a group's chunks, from the suffix
LAUNCHES = (
    ("fwd_scan", SCAN_OUT), ("fwd_scan", SCAN_OUT_STATE), ("fwd_scan", SCAN_SUMS),
    ("chunk_prefix", PREFIX_INIT), ("chunk_prefix", PREFIX_INIT_FINAL), ("chunk_prefix", PREFIX_TOTAL),
    ("bwd_dx_scan", DX_OWN), ("bwd_dx_scan", DX_SUMS), ("bwd_rev_scan", REV_OWN), ("bwd_rev_scan", REV_GRADS),
    ("chunk_suffix", SUFFIX_OWN), ("chunk_suffix", SUFFIX_TOTAL), ("chunk_suffix", SUFFIX_FROM),
    ("nc_out", {}), ("nc_bwd_dx", {}), ("nc_bwd_dkdv", {}),
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


def _pass_meta(meta: dict) -> dict:
    """The constants of the chunk passes (no order, no rows)."""
    return dict(T1=meta["T1"], T1P=meta["T1P"], BLOCK_C=meta["BLOCK_C"], num_warps=meta["num_warps"])


def _chunk_prefix(st: tuple[Tensor, Tensor, Tensor], plan: Plan, HD: int, D: int, meta: dict, config: dict,
                  init: tuple[Tensor, Tensor, Tensor] | None, final: tuple[Tensor, Tensor, Tensor] | None) -> None:
    """Each sequence's chunk states ``st`` (own sums on entry) become the states entering the chunks, in place,
    from ``init`` (causal) or, with ``init`` None, only the totals go to ``final`` (non-causal). Sequences of many
    chunks take it in two levels (``plan``'s groups)."""
    pm = _pass_meta(meta)
    flags = PREFIX_TOTAL if init is None else PREFIX_INIT if final is None else PREFIX_INIT_FINAL
    if not plan.n_groups:
        K.ea_chunk_prefix[_grid(plan.n_seqs, HD, config)](
            plan.seq_chunks, *(init or st), *st, *(final or st), HD, D, **flags, **pm)
        return
    grp = _state_bufs(plan.n_groups, HD // D, meta["T1"], D, st[0].device)
    # each group's own total, then the prefix over the totals of each sequence, then inside each group
    K.ea_chunk_prefix[_grid(plan.n_groups, HD, config)](
        plan.group_chunks, *st, *st, *grp, HD, D, **PREFIX_TOTAL, **pm)
    K.ea_chunk_prefix[_grid(plan.n_seqs, HD, config)](
        plan.seq_groups, *(init or grp), *grp, *(final or grp), HD, D, **flags, **pm)
    if init is not None:
        K.ea_chunk_prefix[_grid(plan.n_groups, HD, config)](
            plan.group_chunks, *grp, *st, *st, HD, D, **PREFIX_INIT, **pm)


def _chunk_suffix(agg: tuple[Tensor, Tensor, Tensor], plan: Plan, HD: int, D: int, meta: dict,
                  config: dict) -> None:
    """Each sequence's chunk reverse sums ``agg`` (own sums on entry) become the sums of the rows after each
    chunk, in place; in two levels for sequences of many chunks."""
    pm = _pass_meta(meta)
    if not plan.n_groups:
        K.ea_chunk_suffix[_grid(plan.n_seqs, HD, config)](
            plan.seq_chunks, *agg, *agg, *agg, HD, D, **SUFFIX_OWN, **pm)
        return
    grp = _state_bufs(plan.n_groups, HD // D, meta["T1"], D, agg[0].device)
    K.ea_chunk_suffix[_grid(plan.n_groups, HD, config)](
        plan.group_chunks, *agg, *agg, *grp, HD, D, **SUFFIX_TOTAL, **pm)
    K.ea_chunk_suffix[_grid(plan.n_seqs, HD, config)](
        plan.seq_groups, *grp, *grp, *grp, HD, D, **SUFFIX_OWN, **pm)
    K.ea_chunk_suffix[_grid(plan.n_groups, HD, config)](
        plan.group_chunks, *agg, *grp, *grp, HD, D, **SUFFIX_FROM, **pm)


def _chunk_states(k: Tensor, v: Tensor, plan: Plan, HD: int, D: int, r: float, meta: dict, config: dict,
                  init: tuple[Tensor, Tensor, Tensor] | None, final: tuple[Tensor, Tensor, Tensor] | None):
    """States entering each chunk ``[items, H, t+1, D]`` (pass 1: chunk sums; pass 2: prefix per sequence)."""
    H = HD // D
    st = _state_bufs(plan.n_items, H, meta["T1"], D, k.device)
    if plan.n_items:
        K.ea_fwd_scan[_grid(plan.n_items, HD, config)](
            k, k, v, k, plan.bounds, *st, *st, r, HD, D, **SCAN_SUMS, **meta)
    _chunk_prefix(st, plan, HD, D, meta, config, init, final)
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
        K.ea_bwd_dx_scan[grid](q, k, v, g, dq, plan.bounds, *state, cbuf, cobuf, mbuf, *state, r, HD, D,
                               **DX_OWN, **meta)
        K.ea_bwd_rev_scan[grid](q, k, v, dk, dv, plan.bounds, cbuf, cobuf, mbuf, *state, r, HD, D, **REV_OWN,
                                **meta)
        return dq, dk, dv
    st = _chunk_states(k, v, plan, HD, D, r, meta, config, state, None)
    agg = _state_bufs(plan.n_items, H, t1, D, dev)  # reverse sums of each chunk, then suffixes, in place
    K.ea_bwd_dx_scan[grid](q, k, v, g, dq, plan.bounds, *st, cbuf, cobuf, mbuf, *agg, r, HD, D, **DX_SUMS,
                           **meta)
    _chunk_suffix(agg, plan, HD, D, meta, config)
    K.ea_bwd_rev_scan[grid](q, k, v, dk, dv, plan.bounds, cbuf, cobuf, mbuf, *agg, r, HD, D, **REV_GRADS,
                            **meta)
    return dq, dk, dv
