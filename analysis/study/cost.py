"""Part 3: cost beside quality. Training step time and greedy decode tokens/s of each model, measured one after
the other in one process on the same shapes, taking turns (only the ratios between them mean much: the machine is
shared)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from .models import TinyLM
from .presets import StudyConfig
from .tasks import vocab_size


def _nets(cfg: StudyConfig, max_len: int) -> dict[str, TinyLM]:
    V = vocab_size(cfg.num_keys, cfg.num_values)
    out = {}
    for m in cfg.models:
        torch.manual_seed(0)
        out[m] = TinyLM(m, V, cfg.hidden, cfg.heads, cfg.layers, max_len, backend=cfg.backend)
    return out


def train_step_ms(cfg: StudyConfig, seq_len: int, warmup: int = 2) -> dict[str, float]:
    """Median wall time (ms) of one Adam step at ``[cfg.batch, seq_len]`` per model. The models take turns, one
    step each per round for ``cfg.cost_steps`` rounds, so that a change of the machine's load touches them all."""
    nets = _nets(cfg, seq_len)
    opts = {m: torch.optim.Adam(n.parameters(), lr=1e-3) for m, n in nets.items()}
    x = torch.randint(0, nets[cfg.models[0]].start, (cfg.batch, seq_len), generator=torch.Generator().manual_seed(0))

    def step(m: str) -> None:
        loss = F.cross_entropy(nets[m](x).flatten(0, 1), x.flatten())
        opts[m].zero_grad(set_to_none=True)
        loss.backward()
        opts[m].step()

    times: dict[str, list[float]] = {m: [] for m in nets}
    for r in range(warmup + cfg.cost_steps):
        for m in nets:
            t0 = time.perf_counter()
            step(m)
            if r >= warmup:
                times[m].append(time.perf_counter() - t0)
    return {m: 1000 * statistics.median(t) for m, t in times.items()}


@torch.no_grad()
def decode_tokens_per_s(cfg: StudyConfig, context: int, max_len: int, rounds: int = 4) -> dict[str, float]:
    """Greedy decoding, batch 1, per model: tokens/s of ``cfg.cost_decode_tokens`` steps after ``context`` steps
    already in the cache (softmax and exact EA: a KV cache; linear attention and EA-t: a fixed-size state). The
    models take turns in ``rounds`` slices of the timed tokens; the median slice rate counts."""
    nets = {m: n.eval() for m, n in _nets(cfg, max_len).items()}
    run = {}
    for m, net in nets.items():
        caches: list = [None] * cfg.layers
        tok, prev = torch.zeros(1, dtype=torch.int64), torch.full((1,), net.start)
        for pos in range(context):
            logits, caches = net.step(tok, prev, pos, caches)
            prev, tok = tok, logits.argmax(-1)
        run[m] = [tok, prev, context, caches]
    per = max(1, cfg.cost_decode_tokens // rounds)
    rates: dict[str, list[float]] = {m: [] for m in nets}
    for _ in range(rounds):
        for m, net in nets.items():
            tok, prev, pos, caches = run[m]
            t0 = time.perf_counter()
            for _ in range(per):
                logits, caches = net.step(tok, prev, pos, caches)
                prev, tok, pos = tok, logits.argmax(-1), pos + 1
            rates[m].append(per / (time.perf_counter() - t0))
            run[m] = [tok, prev, pos, caches]
    return {m: statistics.median(r) for m, r in rates.items()}


def cost_table(cfg: StudyConfig, seq_len: int, max_len: int, tick: Callable[[], None] | None = None
               ) -> list[dict[str, Any]]:
    """One row per model: ``train_step_ms`` at ``seq_len`` and ``decode_tokens_per_s`` per context."""
    step = train_step_ms(cfg, seq_len)
    decode = {str(c): decode_tokens_per_s(cfg, c, max_len) for c in cfg.cost_contexts}
    rows = [{"model": m, "seq_len": seq_len, "batch": cfg.batch, "train_step_ms": step[m],
             "decode_tokens_per_s": {c: decode[c][m] for c in decode}} for m in cfg.models]
    if tick is not None:
        tick(len(rows))
    return rows
