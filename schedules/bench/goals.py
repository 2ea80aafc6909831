"""Goals a preset states (the issues' targets), judged from the ratios of a bench document.

A goal reads one row (``peer``) of every timed workload of one mode from ``T_from`` on (to ``T_to``), so it can be
judged on a partial document (a run cut short) or on a plan (nothing timed: not judged).
"""

from __future__ import annotations

import operator
from dataclasses import asdict, dataclass

METRICS = ("roofline", "speedup", "spread", "token_ratio")
_OPS = {">=": operator.ge, ">": operator.gt, "<": operator.lt, "<=": operator.le}


@dataclass(frozen=True)
class Goal:
    """``metric`` of row ``peer`` must be ``op bound``: per workload for ``roofline`` (the row's GB/s over the
    copy's) and ``speedup`` (the row's median over the median of row ``of``, the kernel's by default), across
    the workloads for ``spread`` (the row's largest median over its smallest) and ``token_ratio`` (the time per
    token, median / T, at ``T_to`` over that at ``T_from``)."""

    text: str
    mode: str
    peer: str
    metric: str
    op: str
    bound: float
    T_from: int = 0
    of: str = "kernel"
    T_to: int | None = None

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {self.metric!r}")
        if self.metric == "token_ratio" and (self.T_to is None or self.T_to <= self.T_from):
            raise ValueError("a token_ratio goal needs T_to > T_from")
        if self.op not in _OPS:
            raise ValueError(f"op must be one of {tuple(_OPS)}, got {self.op!r}")


def judge(goal: Goal, workloads: list[dict]) -> dict:
    """``goal`` against the ``workloads`` of a bench document: the values read and ``met`` (None: not measured)."""
    values: list[dict] = []
    for wr in workloads:
        w = wr["workload"]
        if w["mode"] != goal.mode or w["T"] < goal.T_from or (goal.T_to is not None and w["T"] > goal.T_to):
            continue
        if goal.metric == "token_ratio" and w["T"] not in (goal.T_from, goal.T_to):
            continue
        rows = {r["peer"]: r for r in wr.get("results", [])}
        row = rows.get(goal.peer)
        key = "median_s" if goal.metric in ("spread", "token_ratio") else goal.metric
        value = None if row is None else row.get(key)
        if goal.metric == "token_ratio" and value is not None:
            value = value / w["T"]
        if goal.metric == "speedup" and goal.of != "kernel":
            num, den = (None if r is None else r.get("median_s") for r in (row, rows.get(goal.of)))
            value = None if num is None or den is None else num / den
        values.append({"label": wr["label"], "value": value, "T": w["T"]})
    measured = [v["value"] for v in values]
    out = {**asdict(goal), "values": values, "measured": None, "met": None}
    if not measured or any(v is None for v in measured):
        out["note"] = "not measured" + ("" if measured else ": no workload of this mode and T")
        return out
    if goal.metric == "spread":
        measured = [max(measured) / min(measured)]
    elif goal.metric == "token_ratio":
        by_t = {v["T"]: v["value"] for v in values}
        if set(by_t) != {goal.T_from, goal.T_to}:
            out["note"] = f"not measured: needs T={goal.T_from} and T={goal.T_to}"
            return out
        measured = [by_t[goal.T_to] / by_t[goal.T_from]]
    out["measured"] = (max if goal.op in ("<", "<=") else min)(measured)  # the worst value decides
    out["met"] = _OPS[goal.op](out["measured"], goal.bound)
    return out
