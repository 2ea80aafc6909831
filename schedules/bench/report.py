"""Output of ``ea-ops bench``: the ratio table, the JSON document and the log-log plot."""

from __future__ import annotations

import datetime as _dt
import io
import os
import platform
from pathlib import Path

import torch

from ea_ops.records import atomic_write_bytes

from .goals import Goal, judge
from .runner import WorkloadResult
from .workloads import Workload

SCHEMA = "ea-ops-bench/1"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str, threads: int) -> dict:
    """Machine class and versions for the record (no host names)."""
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(terse=True),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "device": device,
    }
    if device == "cpu":
        info["threads"] = threads
    elif torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def load_average() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def busy_warning(load_before: float | None, threads: int, cpus: int | None) -> str | None:
    """A warning when other processes already kept more CPUs busy than ``threads`` leaves free: a thread
    of a parallel op then waits for a descheduled sibling and small ops run 10-100x slower."""
    if load_before is None or not cpus or load_before + threads <= cpus + 0.5:
        return None
    return (f"load average {load_before:.1f} on {cpus} CPUs before the run, timing with {threads} threads: "
            "other processes compete for the CPUs and these timings (even the ratios) are unreliable")


def document(results: list[WorkloadResult], *, backend: str, device: str, threads: int, timer: str,
             argv: list[str], load_before: float | None = None, preset: str | None = None,
             goals: tuple[Goal, ...] = (), complete: bool = True) -> dict:
    """The JSON document of a run (``complete`` False while it is still under way), ``goals`` judged on it."""
    m = machine(device, threads)
    m["load_average_before"], m["load_average_after"] = load_before, load_average()
    warning = busy_warning(load_before, threads, m["cpu_count"]) if device == "cpu" else None
    workloads = [r.to_json() for r in results]
    return {
        "schema": SCHEMA,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "ea-ops bench " + " ".join(argv),
        "preset": preset,
        "backend": backend,
        "timer": timer,
        "machine": m,
        "warnings": [warning] if warning else [],
        "complete": complete,
        "workloads": workloads,
        "goals": [judge(g, workloads) for g in goals],
    }


def plan_document(plan: list[tuple[Workload, tuple[str, ...]]], *, backend: str, unavailable: str | None,
                  device: str, timer: str, argv: list[str], preset: str | None,
                  goals: tuple[Goal, ...] = ()) -> dict:
    """What a run would do (``--dry-run``): workloads, peers, timer and goals, nothing measured."""
    workloads = [{"workload": w.to_json(), "label": w.label, "peers": list(ps), "bytes": w.ea_bytes(),
                  "gate": None, "results": []} for w, ps in plan]
    return {"schema": SCHEMA, "dry_run": True,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "command": "ea-ops bench " + " ".join(argv), "preset": preset, "backend": backend,
            "backend_unavailable": unavailable, "device": device, "timer": timer, "complete": False,
            "workloads": workloads, "goals": [judge(g, workloads) for g in goals]}


def _goal_lines(doc: dict) -> list[str]:
    if not doc.get("goals"):
        return []
    lines = ["", f"goals of preset {doc['preset']}:"]
    for g in doc["goals"]:
        verdict = {True: "met", False: "NOT MET", None: "not measured"}[g["met"]]
        got = "" if g["measured"] is None else f": {g['measured']:.3g}"
        over = "" if g.get("of", "kernel") == "kernel" else f" over {g['of']}"
        lines.append(f"  [{verdict}] {g['text']} ({g['metric']} of {g['peer']}{over} {g['op']} {g['bound']:g}){got}")
    return lines


def plan_table(doc: dict) -> str:
    """The plan of ``--dry-run`` as text."""
    why = f" (not available here: {doc['backend_unavailable']})" if doc["backend_unavailable"] else ""
    lines = [f"ea-ops bench --dry-run: {doc['preset'] or 'shape'}, backend={doc['backend']}{why}, "
             f"device {doc['device']}, timer: {doc['timer']}; nothing was run", "",
             f"{'workload':<24} {'mode':<7} {'dtype':<9} {'order':>5}  peers besides the kernel"]
    for wr in doc["workloads"]:
        w = wr["workload"]
        lines.append(f"{wr['label']:<24} {w['mode']:<7} {w['dtype']:<9} {w['order']:>5}  "
                     + ",".join(p for p in wr["peers"] if p != "kernel"))
    return "\n".join(lines + _goal_lines(doc))


def _fmt_time(s: float | None) -> str:
    if s is None:
        return "-"
    for unit, f in (("s", 1.0), ("ms", 1e3), ("us", 1e6)):
        if s * f >= 1.0 or unit == "us":
            return f"{s * f:.3g} {unit}"
    return f"{s:.3g} s"


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _per_token(wr: dict, r: dict) -> float | None:
    """Microseconds per token (median / (B T)) of a sequence row; None for a step or an untimed row."""
    w = wr["workload"]
    if w["mode"] == "step" or r.get("median_s") is None or r["peer"].startswith("copy"):
        return None
    return r["median_s"] / (w["B"] * w["T"]) * 1e6


def table(doc: dict) -> str:
    """Plain-text table: per workload and peer, median, kernel speedup, GB/s and roofline fraction."""
    m = doc["machine"]
    where = (f"{m['cpu']} ({m['cpu_count']} CPUs), {m['threads']} threads (torch.set_num_threads)"
             if m["device"] == "cpu"
             else f"{m.get('gpu', m['device'])}")
    # the step's time over its compiled kernel's alone, where that row was timed (the decode preset)
    alone = any(r.get("x_kernel_only") is not None for wr in doc["workloads"] for r in wr["results"])
    lines = [f"ea-ops bench: backend={doc['backend']}  device={where}  {doc['date']}",
             f"timer: {doc['timer']}; medians after warm-up",
             "speedup = peer median / kernel median (> 1: the kernel is faster); roofline = GB/s / copy GB/s"
             + ("; x kernel = median / the compiled kernel's alone" if alone else "")]
    if m["device"] == "cpu":
        lines.append("CPU times depend on load from other processes: compare the ratios, not the times.")
    lines += [f"WARNING: {w}" for w in doc.get("warnings", [])]
    common = {(w["workload"]["order"], w["workload"]["dtype"], w["workload"]["mode"]) for w in doc["workloads"]}
    if len(common) == 1:
        order, dtype, mode = common.pop()
        lines.append(f"order {order}, {dtype}, mode {mode}")
    names = [wr["label"] if not common else
             f"{wr['label']} t{wr['workload']['order']} {wr['workload']['dtype']} {wr['workload']['mode']}"
             for wr in doc["workloads"]]
    nw = max([30, *map(len, names)])
    head = (f"{'workload':<{nw}} {'peer':<40} {'median':>10} {'speedup':>8}" + (f" {'x kernel':>8}" if alone else "")
            + f" {'GB/s':>8} {'roofline':>8} {'us/token':>8}  note")
    lines += ["", head, "-" * len(head)]
    for name, wr in zip(names, doc["workloads"], strict=True):
        if not wr["gate"]["ok"]:
            lines.append(f"{name:<{nw}} {'NOT TIMED':<40} {wr['gate']['message']}")
            continue
        for i, r in enumerate(wr["results"]):
            status = "" if r["status"] == "ok" else f"[{r['status']}] "
            x_alone = f" {_fmt(r.get('x_kernel_only'), '.3g'):>8}" if alone else ""
            lines.append(f"{name if i == 0 else '':<{nw}} {r['label']:<40} {_fmt_time(r['median_s']):>10} "
                         f"{_fmt(r['speedup'], '.3g'):>8}{x_alone} {_fmt(r['gbps'], '.3g'):>8} "
                         f"{_fmt(r['roofline'], '.1%'):>8} {_fmt(_per_token(wr, r), '.3g'):>8}  "
                         f"{status}{r['note']}".rstrip())
    if not doc.get("complete", True):
        lines.append("(incomplete: the run is still under way or was cut short)")
    return "\n".join(lines + _goal_lines(doc))


def plot(doc: dict, path: Path) -> str | None:
    """Log-log time against T per peer, with T and T^2 guides (against B, with a B guide, when only B varies, as
    in the decode preset); returns why not, or None when written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'ea-ops[analysis]')"
    series: dict[str, list[tuple[int, float]]] = {}
    labels: dict[str, str] = {}
    modes = {wr["workload"]["mode"] for wr in doc["workloads"]}
    step = "step" in modes
    shapes = [wr["workload"] for wr in doc["workloads"]]
    x = "B" if len({w["T"] for w in shapes}) == 1 and len({w["B"] for w in shapes}) > 1 else "T"
    for wr in doc["workloads"]:
        mode = wr["workload"]["mode"]
        for r in wr["results"]:
            if r["median_s"] is not None and not r["note"].startswith("the kernel itself"):
                key = r["peer"] if len(modes) == 1 else f"{r['peer']} {mode}"  # one line per peer and mode
                series.setdefault(key, []).append((wr["workload"][x], r["median_s"]))
                labels[key] = r["label"] if len(modes) == 1 else f"{r['label']}, {mode}"
    if not series:
        return "no timings to plot"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for peer, pts in series.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=labels[peer])
    ts = sorted({p[0] for pts in series.values() for p in pts})
    if len(ts) > 1:
        # Guides start at the kernel's (T^1) and at SDPA's (T^2) first point, where present.
        firsts = {peer: pts[0] for peer, pts in series.items()}
        for power, style, peer in ((1, ":", "kernel"), (2, "--", "sdpa"))[:1 if x == "B" else 2]:
            t0, s0 = firsts.get(peer) or firsts.get("kernel") or next(iter(firsts.values()))
            ax.plot(ts, [s0 * (t / t0) ** power for t in ts], style, color="grey", linewidth=1,
                    label=f"grows as {x}^{power}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    if x == "B":
        ax.set_xlabel(f"batch size B ({'context' if step else 'T'} {shapes[0]['T']})")
    else:
        ax.set_xlabel(("context length (KV cache)" if len(modes) == 1 else "T (the step: context length)") if step
                      else "sequence length T")
    ax.set_ylabel("median time per call (s)")
    ax.set_title(f"ea-ops bench ({doc['backend']} backend, {doc['machine']['device']})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return None
