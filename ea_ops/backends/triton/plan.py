"""Work tables of the Triton kernels: which rows each program scans (no Triton import here).

A *sequence* is a row range ``[begin, end)`` of the flattened ``[B*T, H*D]`` inputs with its own state:
batch ``b`` is ``[b*T, (b+1)*T)``; with ``cu_seqlens`` (batch 1) sequence ``i`` is its ``(begin, end)``.
A *work item* is a whole sequence (``chunk=None``, the plain scan) or a chunk of at most ``chunk`` rows
of one (the split-T variant; empty sequences have no chunks).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Plan:
    """``bounds [2*items]`` int32 (begin, end per item), ``item_seq [items]`` the sequence of each item,
    ``seq_chunks [seqs+1]`` the first item of each sequence (chunked plans), all on the inputs' device."""

    n_seqs: int
    n_items: int
    chunk: int | None
    bounds: torch.Tensor
    item_seq: torch.Tensor
    seq_chunks: torch.Tensor
    max_rows: int


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


@functools.lru_cache(maxsize=128)
def make_plan(seqs: tuple[tuple[int, int], ...], chunk: int | None, device: torch.device) -> Plan:
    """The plan of ``seqs`` split into chunks of ``chunk`` rows (or not); cached per shape and device."""
    items, item_seq, seq_chunks = items_of(seqs, chunk)
    flat = [x for it in items for x in it]

    def i32(xs: list[int]) -> torch.Tensor:
        return torch.tensor(xs if xs else [0], dtype=torch.int32, device=device)

    return Plan(
        n_seqs=len(seqs), n_items=len(items), chunk=chunk, bounds=i32(flat), item_seq=i32(item_seq),
        seq_chunks=i32(seq_chunks), max_rows=max((e - s for s, e in items), default=0),
    )
