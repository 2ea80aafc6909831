"""Running the whole study: the frontier, every model x setting cell (LR grid + seeds), the cost table; then
the files (``output.write_all``)."""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

import ea_ops
from ea_ops.progress import Bar

from . import output
from .cost import cost_table
from .frontier import frontier
from .models import max_len_for
from .presets import PRESETS, StudyConfig, cells
from .train import runs_per_cell, study_cell


def machine() -> str:
    """CPU model and core count (the numbers are this machine's)."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def ea_backend(cfg: StudyConfig) -> str:
    """The backend the EA layers' training calls get (``backend="auto"`` resolved)."""
    q = torch.zeros(cfg.batch, 8, cfg.heads, cfg.hidden // cfg.heads)
    try:
        return ea_ops.explain_backend(q, order=6, needs_grad=True, backend=cfg.backend).backend
    except Exception as exc:  # the study still runs; say why the name is unknown
        return f"{cfg.backend} (explain_backend failed: {exc})"


def config_json(cfg: StudyConfig) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    d["settings"] = [dataclasses.asdict(s) for s in cfg.settings]
    return d


def run_study(cfg: StudyConfig | str, out: str | os.PathLike | None = None, *, progress: bool = True,
              plots: bool = True, label: str | None = None) -> dict[str, Any]:
    """Run the study of ``cfg`` (a StudyConfig or a preset name); write its files into ``out`` when given
    (the JSON also after every cell, so a killed run keeps what it finished); ``label`` names the preset in the
    files (default: the preset's name, or "custom"). Returns the study as a dict."""
    preset = label or "custom"
    if isinstance(cfg, str):
        if cfg not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {cfg!r}")
        preset, cfg = label or cfg, PRESETS[cfg]
    if not isinstance(cfg, StudyConfig):
        raise TypeError(f"cfg must be a StudyConfig or a preset name, got {type(cfg).__name__}")
    out_path = None if out is None else Path(out)
    t0 = time.perf_counter()
    study: dict[str, Any] = {"preset": preset, "date": datetime.date.today().isoformat(), "machine": machine(),
                             "ea_backend": ea_backend(cfg), "config": config_json(cfg), "frontier": [],
                             "results": [], "cost": [], "wall_seconds": 0.0, "timings": {}}
    todo = cells(cfg)
    total = len(todo) * runs_per_cell(cfg) * cfg.steps + len(cfg.models) + 1
    with Bar(total, "ea-ops study", disable=not progress, unit="step") as bar:
        bar.note("frontier")
        t = time.perf_counter()
        study["frontier"] = frontier(cfg.frontier_scales, cfg.frontier_orders, seq_len=cfg.frontier_len,
                                     channels=cfg.frontier_channels)
        study["timings"]["frontier_s"] = time.perf_counter() - t
        bar.update()
        t = time.perf_counter()
        for m, s in todo:
            bar.note(f"{m} on {s.name()}")
            study["results"].append(study_cell(cfg, m, s, tick=bar.update))
            if out_path is not None:
                study["wall_seconds"] = time.perf_counter() - t0
                output.write_all(out_path, study, plots=False)
        study["timings"]["train_s"] = time.perf_counter() - t
        bar.note("cost")
        t = time.perf_counter()
        T = max(s.seq_len for s in cfg.settings)
        study["cost"] = cost_table(cfg, T, max_len_for(T), tick=bar.update)
        study["timings"]["cost_s"] = time.perf_counter() - t
    study["wall_seconds"] = time.perf_counter() - t0
    if out_path is not None:
        output.write_all(out_path, study, plots=plots)
    return study
