"""Work tables of the Triton kernels: which rows each program scans (no Triton import here).

A *sequence* is a row range ``[begin, end)`` of the flattened ``[B*T, H*D]`` inputs with its own state:
batch ``b`` is ``[b*T, (b+1)*T)``; with ``cu_seqlens`` (batch 1) sequence ``i`` is its ``(begin, end)``.
A *work item* is a whole sequence (``chunk=None``, the plain scan) or a chunk of at most ``chunk`` rows
of one (the split-T variant; empty sequences have no chunks).

A sequence of many chunks has its chunk prefix (forward) and suffix (backward) taken in two levels: its chunks
are cut into *groups* of about ``sqrt(chunks)`` consecutive chunks (a group never spans two sequences), each
group's total is taken in parallel, then the prefix over the group totals per sequence, then the prefix inside
each group in parallel. One program walking 8192 chunks (T = 1M, chunk 128) becomes three passes of at most
91 steps each (issue 14 item 4). The combine (rebase to the smaller minimum, add) is associative, so the result
is the same up to the order of float additions.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Plan:
    """``bounds [2*items]`` int32 (begin, end per item), ``item_seq [items]`` the sequence of each item,
    ``seq_chunks [seqs+1]`` the first item of each sequence (chunked plans), ``seq_items`` each sequence's
    items (for deterministic per-sequence sums), all on the inputs' device."""

    n_seqs: int
    n_items: int
    chunk: int | None
    bounds: torch.Tensor
    item_seq: torch.Tensor
    seq_chunks: torch.Tensor
    max_rows: int
    seq_items: torch.Tensor  # [seqs, most items of a sequence] int64: its items, padded with n_items
    # Two-level chunk prefix (``group`` chunks per group; 0 and unused tables when one level serves):
    # ``group_chunks [groups+1]`` the first item of each group, ``seq_groups [seqs+1]`` each sequence's first group.
    group: int
    n_groups: int
    group_chunks: torch.Tensor
    seq_groups: torch.Tensor


# A sequence of more chunks than this has its chunk prefix and suffix taken in two levels. Below it one program's
# walk is short, and the two extra launches would cost more than they save.
GROUPS_FROM = 16


def group_size(most_chunks: int) -> int:
    """Chunks per group for sequences of at most ``most_chunks`` chunks: ``ceil(sqrt)`` (both levels' walks
    about equal), or 0 for one level."""
    return 0 if most_chunks <= GROUPS_FROM else math.isqrt(most_chunks - 1) + 1


def groups_of(seq_chunks: list[int], group: int) -> tuple[list[int], list[int]]:
    """``(group_chunks, seq_groups)``: consecutive chunks of each sequence in groups of ``group`` (the last
    group of a sequence may be shorter; an empty sequence has none)."""
    group_chunks: list[int] = []
    seq_groups = [0]
    for first, last in zip(seq_chunks, seq_chunks[1:]):
        group_chunks.extend(range(first, last, group))
        seq_groups.append(len(group_chunks))
    group_chunks.append(seq_chunks[-1])
    return group_chunks, seq_groups


def sequences(B: int, T: int, segments: list[tuple[int, int]] | None) -> tuple[tuple[int, int], ...]:
    """Row ranges of the sequences: one per batch entry, or the ``cu_seqlens`` segments (batch 1)."""
    if segments is None:
        return tuple((b * T, (b + 1) * T) for b in range(B))
    return tuple((int(s), int(e)) for s, e in segments)


def items_of(seqs: tuple[tuple[int, int], ...],
             chunk: int | None) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """``(items, item_seq, seq_chunks)`` as python lists."""
    if chunk is not None and chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    items: list[tuple[int, int]] = []
    item_seq: list[int] = []
    seq_chunks = [0]
    for i, (s, e) in enumerate(seqs):
        if chunk is None:
            items.append((s, e))
            item_seq.append(i)
        else:
            for b in range(s, e, chunk):
                items.append((b, min(b + chunk, e)))
                item_seq.append(i)
        seq_chunks.append(len(items))
    return items, item_seq, seq_chunks


def _capturing(device: torch.device) -> bool:
    """Whether the current CUDA stream of ``device`` is being captured into a CUDA graph."""
    return device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


_CACHE: collections.OrderedDict = collections.OrderedDict()
_CACHE_SIZE = 128


def make_plan(seqs: tuple[tuple[int, int], ...], chunk: int | None, device: torch.device) -> Plan:
    """The plan of ``seqs`` split into chunks of ``chunk`` rows (or not); cached per shape and device.

    A cache hit copies nothing. A miss builds the tables on the host and copies them, except while a CUDA graph
    is captured on ``device`` (a copy from pageable host memory is not allowed there): then the tables of
    equal-length sequences (a batch) are computed on the device by kernels the graph records, and are not
    cached (they live in the graph's memory pool); varlen tables cannot be, and raise (warm the call up once
    before capturing, so the plan is cached).
    """
    key = (seqs, chunk, torch.device(device))
    hit = _CACHE.get(key)
    if hit is not None:
        _CACHE.move_to_end(key)
        return hit
    if _capturing(key[2]):
        return _device_plan(seqs, chunk, key[2])
    plan = _host_plan(seqs, chunk, key[2])
    _CACHE[key] = plan
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return plan


def _host_plan(seqs: tuple[tuple[int, int], ...], chunk: int | None, device: torch.device) -> Plan:
    items, item_seq, seq_chunks = items_of(seqs, chunk)
    flat = [x for it in items for x in it]
    width = max((b - a for a, b in zip(seq_chunks, seq_chunks[1:])), default=0)
    n = len(items)  # the padding index: a zero row appended to the per-item sums
    group = group_size(width) if chunk is not None else 0
    group_chunks, seq_groups = groups_of(seq_chunks, group) if group else ([0], [0])
    table = [[first + j if first + j < last else n for j in range(width)]
             for first, last in zip(seq_chunks, seq_chunks[1:])]

    def i32(xs: list[int]) -> torch.Tensor:
        return torch.tensor(xs if xs else [0], dtype=torch.int32, device=device)

    return Plan(
        n_seqs=len(seqs), n_items=n, chunk=chunk, bounds=i32(flat), item_seq=i32(item_seq),
        seq_chunks=i32(seq_chunks), max_rows=max((e - s for s, e in items), default=0),
        seq_items=torch.tensor(table, dtype=torch.int64, device=device).reshape(len(seqs), width),
        group=group, n_groups=len(group_chunks) - 1 if group else 0, group_chunks=i32(group_chunks),
        seq_groups=i32(seq_groups),
    )


def _device_plan(seqs: tuple[tuple[int, int], ...], chunk: int | None, device: torch.device) -> Plan:
    """``_host_plan`` of a batch (sequence ``b`` is rows ``[b*T, (b+1)*T)``) computed on ``device`` from its
    sizes alone, without a copy from the host."""
    B = len(seqs)
    T = seqs[0][1] - seqs[0][0] if B else 0
    if any(seqs[b] != (b * T, (b + 1) * T) for b in range(B)):
        raise RuntimeError("ea_ops triton: a varlen (cu_seqlens) work table cannot be built while a CUDA graph is "
                           "captured; run the same call once before capturing, so its table is cached")
    if chunk is not None and chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    L = T if chunk is None else chunk
    per = 1 if chunk is None else -(-T // chunk)
    n = B * per
    i64 = dict(dtype=torch.int64, device=device)
    idx = torch.arange(n, **i64)
    seq = idx // max(per, 1)
    begin = seq * T + (idx - seq * per) * L
    end = torch.minimum(begin + L, (seq + 1) * T)
    if n:
        bounds = torch.stack((begin, end), 1).reshape(-1).to(torch.int32)
        item_seq = seq.to(torch.int32)
    else:
        bounds = item_seq = torch.zeros(1, dtype=torch.int32, device=device)
    group = group_size(per) if chunk is not None and n else 0
    if group:
        gp = -(-per // group)  # groups per sequence
        gidx = torch.arange(B * gp, **i64)
        group_chunks = torch.cat(((gidx // gp) * per + (gidx % gp) * group, torch.full((1,), n, **i64)))
        group_chunks, seq_groups = group_chunks.to(torch.int32), (torch.arange(B + 1, **i64) * gp).to(torch.int32)
    else:
        group_chunks = seq_groups = torch.zeros(1, dtype=torch.int32, device=device)
    return Plan(
        n_seqs=B, n_items=n, chunk=chunk, bounds=bounds, item_seq=item_seq,
        seq_chunks=(torch.arange(B + 1, **i64) * per).to(torch.int32), max_rows=min(L, T) if n else 0,
        seq_items=idx.reshape(B, per), group=group, n_groups=B * gp if group else 0, group_chunks=group_chunks,
        seq_groups=seq_groups,
    )
