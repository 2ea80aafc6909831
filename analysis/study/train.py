"""Training one model on one setting at one learning rate and seed; choosing the learning rate on a held-out
validation split; the seeds at the chosen rate."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from .models import TinyLM, count_params, max_len_for
from .presets import Setting, StudyConfig
from .tasks import IGNORE, make_batch, vocab_size

# Data streams: train batches, the validation split (picks the LR), the test split (reported) come from
# generators seeded apart, so the split a number comes from never depends on how many steps ran.
TRAIN_STREAM, VAL_STREAM, TEST_STREAM = 0, 1, 2


def _gen(seed: int, stream: int, setting: Setting) -> torch.Generator:
    g = torch.Generator()
    key = f"{seed}/{stream}/{setting.name()}"
    g.manual_seed(sum((i + 1) * ord(c) for i, c in enumerate(key)) * 1_000_003 + seed)  # str hash is salted
    return g


def split(cfg: StudyConfig, setting: Setting, seed: int, stream: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    return make_batch(setting.task, size, setting.seq_len, setting.pairs, cfg.num_keys, cfg.num_values,
                      _gen(seed, stream, setting))


def build(cfg: StudyConfig, model: str, setting: Setting, seed: int) -> TinyLM:
    torch.manual_seed(seed)
    return TinyLM(model, vocab_size(cfg.num_keys, cfg.num_values), cfg.hidden, cfg.heads, cfg.layers,
                  max_len_for(setting.seq_len), backend=cfg.backend)


@torch.no_grad()
def accuracy(model: TinyLM, inputs: torch.Tensor, targets: torch.Tensor, chunk: int = 128) -> float:
    """Fraction of scored positions (``targets != IGNORE``) whose argmax is the target."""
    was = model.training
    model.eval()
    hit = n = 0
    for s in range(0, inputs.shape[0], chunk):
        logits = model(inputs[s:s + chunk])
        t = targets[s:s + chunk]
        keep = t != IGNORE
        hit += int((logits.argmax(-1)[keep] == t[keep]).sum())
        n += int(keep.sum())
    model.train(was)
    return hit / max(1, n)


def lr_at(step: int, steps: int, lr: float) -> float:
    """Linear warm-up over the first 10% of steps, then cosine down to 10% of ``lr``."""
    warm = max(1, steps // 10)
    if step < warm:
        return lr * (step + 1) / warm
    p = (step - warm) / max(1, steps - warm)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


def train_run(cfg: StudyConfig, model: str, setting: Setting, lr: float, seed: int,
              tick: Callable[[], None] | None = None) -> dict[str, Any]:
    """Train from seed ``seed`` for ``cfg.steps`` Adam steps; returns the learning curve (validation accuracy
    every ``eval_every`` steps), the final validation and test accuracy, the loss and the step time (ms)."""
    net = build(cfg, model, setting, seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    gen = _gen(seed, TRAIN_STREAM, setting)
    val = split(cfg, setting, seed, VAL_STREAM, cfg.val_size)
    curve_steps, curve_acc, losses = [], [], []
    t0 = time.perf_counter()
    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg.steps, lr)
        x, y = make_batch(setting.task, cfg.batch, setting.seq_len, setting.pairs, cfg.num_keys, cfg.num_values,
                          gen)
        logits = net(x)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            curve_steps.append(step + 1)
            curve_acc.append(accuracy(net, *val))
        if tick is not None:
            tick()
    train_s = time.perf_counter() - t0
    loss_ok = all(math.isfinite(v) for v in losses)
    test = split(cfg, setting, seed, TEST_STREAM, cfg.test_size)
    return {"model": model, "task": setting.task, "seq_len": setting.seq_len, "pairs": setting.pairs, "lr": lr,
            "seed": seed, "params": count_params(net), "curve_steps": curve_steps, "curve_val_accuracy": curve_acc,
            "val_accuracy": curve_acc[-1], "test_accuracy": accuracy(net, *test),
            "final_loss": statistics.fmean(losses[-10:]), "finite_loss": loss_ok,
            "train_seconds": train_s}


def study_cell(cfg: StudyConfig, model: str, setting: Setting, tick: Callable[[], None] | None = None
               ) -> dict[str, Any]:
    """One JSON entry: every LR of the grid on the first seed, the one with the best validation accuracy
    (ties: the smaller LR) rerun on the other seeds; accuracy = mean test accuracy over the seeds."""
    first, rest = cfg.seeds[0], cfg.seeds[1:]
    grid = [train_run(cfg, model, setting, lr, first, tick) for lr in cfg.lrs]
    best = max(grid, key=lambda r: (r["val_accuracy"], -r["lr"]))
    runs = [best] + [train_run(cfg, model, setting, best["lr"], s, tick) for s in rest]
    accs = [r["test_accuracy"] for r in runs]
    curves = [r["curve_val_accuracy"] for r in runs]
    return {
        "model": model, "task": setting.task, "setting": setting.name(), "seq_len": setting.seq_len,
        "pairs": setting.pairs, "params": best["params"], "lr": best["lr"],
        "lr_grid": {f"{r['lr']:g}": r["val_accuracy"] for r in grid},
        "seeds": list(cfg.seeds), "per_seed_accuracy": accs,
        "accuracy": statistics.fmean(accs), "accuracy_std": statistics.pstdev(accs),
        "accuracy_min": min(accs), "accuracy_max": max(accs),
        "curve_steps": runs[0]["curve_steps"],
        "curve_val_accuracy_mean": [statistics.fmean(c) for c in zip(*curves)],
        "curve_val_accuracy_min": [min(c) for c in zip(*curves)],
        "curve_val_accuracy_max": [max(c) for c in zip(*curves)],
        "final_loss_mean": statistics.fmean(r["final_loss"] for r in runs),
        "finite_loss": all(r["finite_loss"] for r in runs + grid),
        "train_seconds": sum(r["train_seconds"] for r in grid + runs[1:]),
    }


def runs_per_cell(cfg: StudyConfig) -> int:
    return len(cfg.lrs) + len(cfg.seeds) - 1
