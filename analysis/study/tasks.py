"""Synthetic recall tasks, as token sequences ``inputs [B, T]`` (int64) with ``targets [B, T]`` (int64,
``IGNORE`` where nothing is scored).

Vocabulary: ``NOISE = 0``, ``SEP = 1``, keys ``2 .. 2+K-1``, values ``2+K .. 2+K+V-1`` (``vocab_size``).

- ``mqar`` (multi-query associative recall, in the style of the Zoology MQAR benchmark): ``n`` pairs
  ``k_1 v_1 ... k_n v_n`` (distinct keys, values drawn with replacement), noise up to ``T - n``, then the ``n``
  keys again in a random order; at each query position the target is that key's value.
- ``copy`` (selective copying, teacher-forced): ``n`` distinct value tokens at random positions among noise,
  then ``SEP``, then the same tokens in order as inputs; the target at ``SEP`` is the first token and at the
  ``j``-th copied token the ``(j+1)``-th (the last has none). The model must find a token in the noisy context
  and say which data token came next.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

NOISE, SEP, IGNORE = 0, 1, -100


def vocab_size(num_keys: int, num_values: int) -> int:
    return 2 + num_keys + num_values


def mqar(batch: int, seq_len: int, pairs: int, num_keys: int, num_values: int, gen: torch.Generator
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, targets)``, both ``[batch, seq_len]`` int64 (see the module docstring)."""
    check_mqar(seq_len, pairs, num_keys, num_values)
    B, T, n = batch, seq_len, pairs
    keys = torch.rand(B, num_keys, generator=gen).argsort(1)[:, :n] + 2  # distinct per row
    vals = torch.randint(0, num_values, (B, n), generator=gen) + 2 + num_keys
    inputs = torch.full((B, T), NOISE, dtype=torch.int64)
    targets = torch.full((B, T), IGNORE, dtype=torch.int64)
    inputs[:, 0:2 * n:2], inputs[:, 1:2 * n:2] = keys, vals
    perm = torch.rand(B, n, generator=gen).argsort(1)
    inputs[:, T - n:] = keys.gather(1, perm)
    targets[:, T - n:] = vals.gather(1, perm)
    return inputs, targets


def check_mqar(seq_len: int, pairs: int, num_keys: int, num_values: int) -> None:
    if pairs > num_keys:
        raise ValueError(f"pairs = {pairs} needs at least as many keys, got num_keys = {num_keys}")
    if seq_len < 3 * pairs:
        raise ValueError(f"seq_len = {seq_len} must be >= 3 * pairs = {3 * pairs} (pairs, then the queries)")


def selective_copy(batch: int, seq_len: int, pairs: int, num_keys: int, num_values: int, gen: torch.Generator
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, targets)``, both ``[batch, seq_len]`` int64; ``pairs`` = number of tokens to copy."""
    check_copy(seq_len, pairs, num_keys, num_values)
    B, T, n = batch, seq_len, pairs
    C = T - n  # the context, SEP at C - 1
    data = torch.rand(B, num_values, generator=gen).argsort(1)[:, :n] + 2 + num_keys
    pos = torch.rand(B, C - 1, generator=gen).argsort(1)[:, :n].sort(1).values
    inputs = torch.full((B, T), NOISE, dtype=torch.int64)
    targets = torch.full((B, T), IGNORE, dtype=torch.int64)
    inputs.scatter_(1, pos, data)
    inputs[:, C - 1] = SEP
    inputs[:, C:] = data
    targets[:, C - 1:T - 1] = data
    return inputs, targets


def check_copy(seq_len: int, pairs: int, num_keys: int, num_values: int) -> None:
    if pairs > num_values:
        raise ValueError(f"pairs = {pairs} (tokens to copy) needs num_values >= pairs, got {num_values}")
    if seq_len < 2 * pairs + 1:
        raise ValueError(f"seq_len = {seq_len} must be >= 2 * pairs + 1 = {2 * pairs + 1} for copy")


@dataclass(frozen=True)
class Task:
    make: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    check: Callable[[int, int, int, int], None]


TASKS: dict[str, Task] = {"mqar": Task(mqar, check_mqar), "copy": Task(selective_copy, check_copy)}


def make_batch(task: str, batch: int, seq_len: int, pairs: int, num_keys: int, num_values: int,
               gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of ``task`` (ValueError for an unknown task)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {task!r}")
    return TASKS[task].make(batch, seq_len, pairs, num_keys, num_values, gen)
