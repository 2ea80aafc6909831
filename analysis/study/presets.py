"""The study's presets: which models, tasks and settings run, for how long (``smoke`` for tests, ``quick``
about 10 minutes on 2 cores, ``full`` about an hour)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .models import MODELS, model_spec
from .tasks import TASKS


@dataclass(frozen=True)
class Setting:
    """One task instance: ``task`` ("mqar" or "copy"), sequence length, number of key-value pairs (mqar) or of
    tokens to copy (copy)."""

    task: str
    seq_len: int
    pairs: int

    def name(self) -> str:
        return f"{self.task}/T{self.seq_len}/n{self.pairs}"


@dataclass(frozen=True)
class StudyConfig:
    """Everything a study run depends on (the JSON records it)."""

    models: tuple[str, ...]
    settings: tuple[Setting, ...]
    lrs: tuple[float, ...] = (1e-3, 3e-3, 1e-2)
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 300
    batch: int = 32
    eval_every: int = 50
    val_size: int = 256
    test_size: int = 512
    hidden: int = 64
    heads: int = 4
    layers: int = 2
    num_keys: int = 16
    num_values: int = 16
    backend: str = "auto"
    frontier_scales: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0)
    frontier_orders: tuple[int, ...] = (2, 4, 6, 8, 12, 16)
    frontier_len: int = 128
    frontier_channels: int = 64
    cost_steps: int = 10
    cost_decode_tokens: int = 128
    cost_contexts: tuple[int, ...] = (64, 512)
    # exact EA (O(T^2) to train; 163 ms a step at T 64 against 28 ms at T 32) runs only on settings up to this
    # length; None: on every setting
    exact_max_len: int | None = None

    def __post_init__(self) -> None:
        validate(self)

    def replace(self, **kw) -> StudyConfig:
        return dataclasses.replace(self, **kw)


def _pos_int(name: str, v: object) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")


def validate(cfg: StudyConfig) -> None:
    """ValueError naming the field for anything the study cannot run."""
    if not cfg.models:
        raise ValueError("models must name at least one model")
    for m in cfg.models:
        if m not in MODELS:
            raise ValueError(f"models: unknown model {m!r}; known: {sorted(MODELS)}")
    if not cfg.settings:
        raise ValueError("settings must hold at least one Setting")
    for s in cfg.settings:
        if not isinstance(s, Setting):
            raise TypeError(f"settings must hold Setting objects, got {type(s).__name__}")
        if s.task not in TASKS:
            raise ValueError(f"settings: unknown task {s.task!r}; known: {sorted(TASKS)}")
        _pos_int("seq_len", s.seq_len)
        _pos_int("pairs", s.pairs)
        TASKS[s.task].check(s.seq_len, s.pairs, cfg.num_keys, cfg.num_values)
    if not cfg.lrs or any(not isinstance(lr, float) or not lr > 0 for lr in cfg.lrs):
        raise ValueError(f"lrs must be positive floats, got {cfg.lrs!r}")
    if not cfg.seeds or len(set(cfg.seeds)) != len(cfg.seeds):
        raise ValueError(f"seeds must be distinct ints, got {cfg.seeds!r}")
    for name in ("steps", "batch", "eval_every", "val_size", "test_size", "hidden", "heads", "layers",
                 "num_keys", "num_values", "frontier_len", "frontier_channels", "cost_steps", "cost_decode_tokens"):
        _pos_int(name, getattr(cfg, name))
    if cfg.exact_max_len is not None:
        _pos_int("exact_max_len", cfg.exact_max_len)
    if cfg.hidden % cfg.heads:
        raise ValueError(f"hidden = {cfg.hidden} must be divisible by heads = {cfg.heads}")
    if any(t % 2 or t < 0 for t in cfg.frontier_orders):
        raise ValueError(f"frontier_orders must be even and >= 0, got {cfg.frontier_orders!r}")
    if any(not s > 0 for s in cfg.frontier_scales):
        raise ValueError(f"frontier_scales must be > 0, got {cfg.frontier_scales!r}")


def cells(cfg: StudyConfig) -> list[tuple[str, Setting]]:
    """The ``(model, setting)`` pairs a study trains: every model on every setting, except exact EA on settings
    longer than ``exact_max_len``."""
    return [(m, s) for s in cfg.settings for m in cfg.models
            if cfg.exact_max_len is None or s.seq_len <= cfg.exact_max_len or model_spec(m).kind != "exact"]


QUICK_MODELS = ("softmax", "linear", "ea-exact", "ea-exact-rms", "ea-2-rms", "ea-6-rms", "ea-6")
FULL_MODELS = ("softmax", "linear", "ea-exact", "ea-exact-rms", "ea-2-rms", "ea-6-rms", "ea-6", "ea-16")

PRESETS: dict[str, StudyConfig] = {
    # for tests: seconds, two models, one tiny setting of each task
    "smoke": StudyConfig(models=("softmax", "ea-2-rms"), settings=(Setting("mqar", 16, 2), Setting("copy", 16, 3)),
                         lrs=(3e-3,), seeds=(0,), steps=30, batch=16, eval_every=15, val_size=32, test_size=32,
                         hidden=16, heads=2, layers=1, num_keys=8, num_values=8, backend="torch",
                         frontier_scales=(0.25, 1.0), frontier_orders=(2, 6), frontier_len=24,
                         frontier_channels=4, cost_steps=2, cost_decode_tokens=4, cost_contexts=(4,)),
    # the LR grid brackets every model's best: a first run on {1e-3, 3e-3, 1e-2} had 19 of 21 cells at its top
    "quick": StudyConfig(models=QUICK_MODELS, seeds=(0, 1), lrs=(3e-3, 1e-2, 3e-2, 1e-1),
                         settings=(Setting("mqar", 32, 4), Setting("mqar", 32, 8), Setting("copy", 32, 8))),
    # about an hour (estimate_seconds(PRESETS["full"], quick study): 63 minutes); twice the steps (quick curves
    # still rise at 300); the three LRs that won a quick cell
    "full": StudyConfig(models=FULL_MODELS, lrs=(3e-3, 1e-2, 3e-2), seeds=(0, 1, 2), steps=600, eval_every=100,
                        exact_max_len=32,
                        settings=(Setting("mqar", 32, 8), Setting("mqar", 64, 16), Setting("copy", 32, 8),
                                  Setting("copy", 64, 16))),
}
