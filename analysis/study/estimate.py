"""How long a preset would take, from the per-step training times a finished study measured (an estimate, not
a measurement: it scales each model's measured seconds per step with the sequence length, linearly for the
O(T) mixers and quadratically for softmax and exact EA, which is pessimistic at these short lengths)."""

from __future__ import annotations

from typing import Any

from .models import model_spec
from .presets import StudyConfig, cells
from .train import runs_per_cell


def seconds_per_step(study: dict[str, Any]) -> dict[tuple[str, int], float]:
    """``(model, seq_len) -> seconds per training step`` (evaluation included) from a study's results."""
    cfg = study["config"]
    runs = len(cfg["lrs"]) + len(cfg["seeds"]) - 1
    out: dict[tuple[str, int], list[float]] = {}
    for r in study["results"]:
        out.setdefault((r["model"], r["seq_len"]), []).append(r["train_seconds"] / (runs * cfg["steps"]))
    return {k: sum(v) / len(v) for k, v in out.items()}


def estimate_seconds(cfg: StudyConfig, study: dict[str, Any]) -> float:
    """Estimated training seconds of ``cfg`` on the machine and load ``study`` ran on (frontier and cost
    excluded: seconds). A model the study did not run takes the slowest measured EA-t model's time."""
    per = seconds_per_step(study)
    batch_ratio = cfg.batch / study["config"]["batch"]
    width_ratio = (cfg.hidden / study["config"]["hidden"]) ** 2
    total = 0.0
    for m, s in cells(cfg):
        known = [(T, v) for (mm, T), v in per.items() if mm == m]
        if not known:
            known = [max(((T, v) for (mm, T), v in per.items() if model_spec(mm).kind == "taylor"),
                         key=lambda tv: tv[1])]
        T0, v = max(known)
        power = 2 if model_spec(m).kind in ("softmax", "exact") else 1
        total += runs_per_cell(cfg) * cfg.steps * v * (s.seq_len / T0) ** power * batch_ratio \
            * max(1.0, width_ratio)
    return total
