"""PNG plots of the report (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


VMIN, VMAX = -8.0, 0.5  # log10 colour range of errors (relative to the spread of v)


def _matrix(cells: list[dict[str, Any]], orders: list[int], scales: list[float], field: str):
    """``[orders x scales]`` of log10(max error) and a mask of cells whose kernel output had NaN/Inf."""
    import numpy as np

    val = np.full((len(orders), len(scales)), np.nan)
    bad = np.zeros_like(val, dtype=bool)
    missing = np.zeros_like(val, dtype=bool)
    for c in cells:
        i, j = orders.index(c["order"]), scales.index(c["scale"])
        st = c.get(field)
        if st is None:
            missing[i, j] = True
            continue
        out = c.get("output", {})
        bad[i, j] = out.get("nan", 0) + out.get("inf", 0) > 0
        m = st["max"]
        val[i, j] = math.log10(max(m, 1e-16)) if m == m else np.nan
    return val, bad, missing


def heatmap(path: Path, dtype: str, panels: list[tuple[str, list[dict[str, Any]], str]], orders: list[int],
            scales: list[float]) -> None:
    """One figure per dtype: a heatmap of log10(max error) over order x scale for every panel
    ``(title, cells, field)``; cells whose kernel gave NaN/Inf are black and marked."""
    plt = _plt()
    import numpy as np

    n = len(panels)
    ncols = 2 if n > 1 else 1
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.4 * ncols, 0.42 * len(orders) * nrows + 1.6 * nrows),
                             squeeze=False, constrained_layout=True)
    cmap = plt.get_cmap("viridis").with_extremes(bad="#bbbbbb")
    im = None
    for ax, (title, cells, field) in zip(axes.flat, panels, strict=False):
        val, bad, missing = _matrix(cells, orders, scales, field)
        im = ax.imshow(np.ma.masked_invalid(val), cmap=cmap, vmin=VMIN, vmax=VMAX, aspect="auto", origin="lower")
        for i in range(len(orders)):
            for j in range(len(scales)):
                if missing[i, j]:
                    txt, color = "n/a", "black"
                elif bad[i, j]:
                    ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, color="black"))
                    txt, color = "NaN", "white"
                elif np.isnan(val[i, j]):
                    txt, color = "-", "black"
                else:
                    txt = f"{val[i, j]:.1f}"
                    color = "black" if val[i, j] > (VMIN + VMAX) / 2 else "white"
                ax.text(j, i, txt, ha="center", va="center", fontsize=7, color=color)
        ax.set_xticks(range(len(scales)), [f"{s:g}" for s in scales], fontsize=8)
        ax.set_yticks(range(len(orders)), [str(t) for t in orders], fontsize=8)
        ax.set_xlabel("channel scale s (x = sqrt(s) q, q ~ N(0, 1))", fontsize=8)
        ax.set_ylabel("Taylor order t", fontsize=8)
        ax.set_title(title, fontsize=9)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if im is not None:
        cb = fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.85)
        cb.set_label("log10 max |error| / spread(v)   (black: NaN/Inf in the output)", fontsize=8)
    fig.suptitle(f"{dtype}: error over order x channel scale", fontsize=11)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def spikiness_plots(path: Path, path_scales: Path, spk: dict[str, Any]) -> None:
    """Peak weight and normalised entropy histograms at the middle scale, one example query, and the
    means against the channel scale."""
    plt = _plt()
    import numpy as np

    methods = [m for m in spk["methods"] if m != "exact"] + ["exact"]  # exact drawn last, on top
    style = {"exact": {"color": "black", "linestyle": "--"}}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), constrained_layout=True)
    for m in methods:
        sm = spk["samples"][m]
        axes[0].hist(sm["peak"], bins=np.logspace(-3, 0, 50), histtype="step", label=m, linewidth=1.3,
                     **style.get(m, {}))
        axes[1].hist(sm["entropy"], bins=np.linspace(0, 1, 50), histtype="step", label=m, linewidth=1.3,
                     **style.get(m, {}))
        keys = np.asarray(spk["example_keys"])
        order = np.argsort(keys)
        axes[2].plot(keys[order], np.asarray(spk["example"][m])[order], label=m, linewidth=1.2, marker=".",
                     markersize=3, **style.get(m, {}))
    axes[0].set_xscale("log")
    axes[0].set_xlabel("peak weight max_j p_ij")
    axes[1].set_xlabel("normalised entropy H(p_i) / ln(i+1)")
    for ax in axes[:2]:
        ax.set_ylabel("queries (all channels)")
    axes[2].axvline(spk["example_query"], color="gray", linestyle=":", label="query x")
    axes[2].set_xlabel("key value y_j (keys sorted)")
    axes[2].set_ylabel("p_ij")
    axes[2].set_title(f"one channel, last query (x = {spk['example_query']:.2f}): weight of each key", fontsize=9)
    axes[0].set_title(f"peak weight, scale s = {spk['example_scale']:g}", fontsize=9)
    axes[1].set_title(f"entropy, scale s = {spk['example_scale']:g}", fontsize=9)
    axes[0].legend(fontsize=8)
    fig.suptitle("per-channel attention distributions: exact EA vs EA-t vs linear (elu+1)", fontsize=11)
    fig.savefig(path, dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    style = {"exact": {"color": "black", "linestyle": "--"}}
    for m in methods:
        rows = [r for r in spk["summary"] if r["method"] == m]
        s = [r["scale"] for r in rows]
        axes[0].plot(s, [r["entropy_mean"] for r in rows], marker="o", label=m, **style.get(m, {}))
        axes[1].plot(s, [r["peak_mean"] for r in rows], marker="o", label=m, **style.get(m, {}))
    from matplotlib.ticker import NullFormatter

    for ax, lab in zip(axes, ("mean normalised entropy", "mean peak weight"), strict=True):
        ax.set_xscale("log")
        ax.set_xticks(spk["scales"], [f"{x:g}" for x in spk["scales"]])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("channel scale s")
        ax.set_ylabel(lab)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("spikiness against the channel scale", fontsize=11)
    fig.savefig(path_scales, dpi=110)
    plt.close(fig)


def worst_case_plot(path: Path, orders: list[int]) -> None:
    """The proven worst-case bound against the channel bound ``a`` (``|x|, |y| <= a``) per order, with the
    float32 rounding estimate."""
    plt = _plt()
    import numpy as np
    import torch

    from .bounds import worst_case_error
    from .rounding import rounding_estimate

    a = np.linspace(0.05, 3.0, 120)
    fig, ax = plt.subplots(figsize=(8, 5), constrained_layout=True)
    for t in orders:
        ax.plot(a, [max(worst_case_error(t, x, x), 1e-18) for x in a], label=f"t={t}")
    for t in (16, 32):
        ax.plot(a, [rounding_estimate(torch.float32, t, 2 * x * x)["total"] for x in a], linestyle="--",
                color="gray" if t == 16 else "black", label=f"float32 rounding est., t={t}")
    ax.set_yscale("log")
    ax.set_ylim(1e-12, 2)
    ax.set_xlabel("channel bound a  (|x|, |y| <= a)")
    ax.set_ylabel("worst-case |EA-t - EA| / spread(v)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("proven worst-case bound per order (solid) and float32 rounding estimate (dashed)", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
