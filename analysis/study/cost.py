"""Part 3: cost beside quality. Training step time and greedy decode tokens/s of each model, measured one after
the other in one process on the same shapes (only the ratios between them mean much: the machine is shared)."""

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


def _median_ms(fn: Callable[[], None], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return 1000 * statistics.median(ts)


def train_step_ms(cfg: StudyConfig, model: str, seq_len: int) -> float:
    """Median wall time (ms) of one Adam step at ``[cfg.batch, seq_len]``."""
    V = vocab_size(cfg.num_keys, cfg.num_values)
    torch.manual_seed(0)
    net = TinyLM(model, V, cfg.hidden, cfg.heads, cfg.layers, seq_len, backend=cfg.backend)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.randint(0, V, (cfg.batch, seq_len), generator=torch.Generator().manual_seed(0))

    def step() -> None:
        loss = F.cross_entropy(net(x).flatten(0, 1), x.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return _median_ms(step, cfg.cost_steps)


@torch.no_grad()
def decode_tokens_per_s(cfg: StudyConfig, model: str, context: int, max_len: int) -> float:
    """Greedy decoding, batch 1: tokens/s of ``cfg.cost_decode_tokens`` steps after ``context`` steps already in
    the cache (softmax and exact EA: a KV cache; linear attention and EA-t: a fixed-size state)."""
    V = vocab_size(cfg.num_keys, cfg.num_values)
    torch.manual_seed(0)
    net = TinyLM(model, V, cfg.hidden, cfg.heads, cfg.layers, max_len, backend=cfg.backend).eval()
    caches: list = [None] * cfg.layers
    tok, prev = torch.zeros(1, dtype=torch.int64), torch.full((1,), net.start)
    for pos in range(context):
        logits, caches = net.step(tok, prev, pos, caches)
        prev, tok = tok, logits.argmax(-1)
    t0 = time.perf_counter()
    for pos in range(context, context + cfg.cost_decode_tokens):
        logits, caches = net.step(tok, prev, pos, caches)
        prev, tok = tok, logits.argmax(-1)
    return cfg.cost_decode_tokens / (time.perf_counter() - t0)


def cost_table(cfg: StudyConfig, seq_len: int, max_len: int, tick: Callable[[], None] | None = None
               ) -> list[dict[str, Any]]:
    """One row per model: ``train_step_ms`` at ``seq_len`` and ``decode_tokens_per_s`` per context."""
    rows = []
    for m in cfg.models:
        row = {"model": m, "seq_len": seq_len, "batch": cfg.batch, "train_step_ms": train_step_ms(cfg, m, seq_len),
               "decode_tokens_per_s": {str(c): decode_tokens_per_s(cfg, m, c, max_len) for c in cfg.cost_contexts}}
        rows.append(row)
        if tick is not None:
            tick()
    return rows
