"""The study's files: ``study.json`` (everything), ``study.md`` (the tables), ``frontier.png`` and
``curves.png``; every file written atomically (``ea_ops.records.atomic_write_*``)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from ea_ops.records import atomic_write_bytes, atomic_write_text

from .frontier import smallest_order

STUDY_JSON, STUDY_MD, FRONTIER_PNG, CURVES_PNG = "study.json", "study.md", "frontier.png", "curves.png"
FILES = (STUDY_JSON, STUDY_MD, FRONTIER_PNG, CURVES_PNG)


def _pct(x: float) -> str:
    return f"{100 * x:.0f}"


def results_table(results: list[dict[str, Any]]) -> list[str]:
    """Markdown: one row per model, one column per setting, cells ``mean ± std (min-max)`` test accuracy in %."""
    settings = list(dict.fromkeys(r["setting"] for r in results))
    models = list(dict.fromkeys(r["model"] for r in results))
    idx = {(r["model"], r["setting"]): r for r in results}
    lines = ["| model | params | " + " | ".join(settings) + " |", "|---|---|" + "---|" * len(settings)]
    for m in models:
        cells = []
        for s in settings:
            r = idx.get((m, s))
            cells.append("-" if r is None else f"{_pct(r['accuracy'])} ± {_pct(r['accuracy_std'])} "
                                               f"({_pct(r['accuracy_min'])}-{_pct(r['accuracy_max'])}), "
                                               f"lr {r['lr']:g}")
        params = next(idx[(m, s)]["params"] for s in settings if (m, s) in idx)
        lines.append(f"| {m} | {params} | " + " | ".join(cells) + " |")
    return lines


def frontier_table(rows: list[dict[str, Any]]) -> list[str]:
    orders = list(rows[0]["errors"]) if rows else []
    lines = ["| scale s | exact peak (mean / p90) | exact entropy | linear entropy | "
             + " | ".join(f"EA-{t} max err" for t in orders) + " | smallest order <= 1e-2 |",
             "|---|---|---|---|" + "---|" * (len(orders) + 1)]
    for r in rows:
        best = smallest_order(r, 1e-2)
        lines.append(f"| {r['scale']:g} | {r['exact_peak_mean']:.3f} / {r['exact_peak_p90']:.3f} | "
                     f"{r['exact_entropy_mean']:.3f} | {r['linear_entropy_mean']:.3f} | "
                     + " | ".join(f"{r['errors'][t]['max']:.1e}" for t in orders)
                     + f" | {'none' if best is None else best} |")
    return lines


def cost_lines(cost: list[dict[str, Any]]) -> list[str]:
    if not cost:
        return []
    ctx = list(cost[0]["decode_tokens_per_s"])
    base = {c["model"]: c for c in cost}.get("softmax")
    lines = [f"| model | train step ms (B {cost[0]['batch']}, T {cost[0]['seq_len']}) | vs softmax | "
             + " | ".join(f"decode tok/s, context {c}" for c in ctx) + " |", "|---|---|---|" + "---|" * len(ctx)]
    for c in cost:
        ratio = f"{c['train_step_ms'] / base['train_step_ms']:.2f}x" if base else "-"
        lines.append(f"| {c['model']} | {c['train_step_ms']:.1f} | {ratio} | "
                     + " | ".join(f"{c['decode_tokens_per_s'][k]:.0f}" for k in ctx) + " |")
    return lines


def markdown(study: dict[str, Any]) -> str:
    cfg = study["config"]
    out = [f"# EA study ({study['preset']})", "",
           f"{study['date']}, {study['machine']}; wall time {study['wall_seconds']:.0f} s; backend "
           f"{study['ea_backend']}; seeds {cfg['seeds']}; LR grid {cfg['lrs']} (picked per model and setting on a "
           "validation split, first seed); accuracy = test accuracy at the picked LR, mean ± std (min-max) over "
           "the seeds, in %. Chance is 1/" f"{cfg['num_values']}.", "",
           "## 1. Spikiness against accuracy (q, k, v ~ N(0, 1), scaled by sqrt(s))", "",
           *frontier_table(study["frontier"]), "",
           "## 2. Recall and copying", "", *results_table(study["results"]), "",
           "## 3. Cost (measured one after the other in this run; only the ratios mean much)", "",
           *cost_lines(study["cost"]), ""]
    return "\n".join(out)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def frontier_png(rows: list[dict[str, Any]]) -> bytes:
    """Max EA-t error against exact EA's mean peak weight, one line per order (points: the scales)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    peaks = [r["exact_peak_mean"] for r in rows]
    for t in rows[0]["errors"]:
        ax.plot(peaks, [max(r["errors"][t]["max"], 1e-17) for r in rows], "o-", label=f"EA-{t}")
    for r in rows:
        ax.annotate(f"s={r['scale']:g}", (r["exact_peak_mean"], 1e-16), fontsize=7, rotation=90)
    ax.axhline(1e-2, color="grey", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("exact EA: mean peak weight (spikier ->)")
    ax.set_ylabel("EA-t max |error| / value spread")
    ax.set_title("The frontier: spikiness of exact EA against EA-t's error")
    ax.legend(fontsize=7)
    data = _png(fig)
    plt.close(fig)
    return data


def curves_png(results: list[dict[str, Any]]) -> bytes:
    """Validation accuracy against step at the picked LR, mean over seeds with a min-max band; one panel per
    setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(dict.fromkeys(r["setting"] for r in results))
    fig, axes = plt.subplots(1, len(settings), figsize=(4.2 * len(settings), 3.6), squeeze=False)
    for ax, s in zip(axes[0], settings):
        for r in results:
            if r["setting"] != s:
                continue
            line, = ax.plot(r["curve_steps"], r["curve_val_accuracy_mean"], label=r["model"])
            ax.fill_between(r["curve_steps"], r["curve_val_accuracy_min"], r["curve_val_accuracy_max"],
                            color=line.get_color(), alpha=0.15)
        ax.set_title(s, fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylim(0, 1.02)
    axes[0][0].set_ylabel("validation accuracy")
    axes[0][-1].legend(fontsize=7)
    data = _png(fig)
    plt.close(fig)
    return data


def write_all(out: Path, study: dict[str, Any], *, plots: bool = True) -> list[Path]:
    """Write the study's files into ``out`` (atomic each); returns their paths."""
    paths = [out / STUDY_JSON, out / STUDY_MD]
    atomic_write_text(paths[0], json.dumps(study, indent=1, sort_keys=True) + "\n")
    atomic_write_text(paths[1], markdown(study))
    if plots:
        atomic_write_bytes(out / FRONTIER_PNG, frontier_png(study["frontier"]))
        atomic_write_bytes(out / CURVES_PNG, curves_png(study["results"]))
        paths += [out / FRONTIER_PNG, out / CURVES_PNG]
    return paths
