#!/usr/bin/env python3
"""``summary.json`` of scripts/gpu_check.sh, rewritten after every step, and the script's exit status.

    python3 scripts/gpu_check_summary.py WORK OUT [--final]

Reads what the steps left in the scratch folder ``WORK`` (``steps.jsonl``, ``env.json``, ``pack/warm.json``,
``pack/timings.json``, ``pack/tune.json``, ``pack/tests.xml``, ``pack/tvm-tests.xml``) and the bench document in
``OUT``; writes ``OUT/summary.json``. With ``--final`` it exits with the script's status (``exit_status``).
Standard library only: it runs even where torch does not import.
"""

from __future__ import annotations

import json
import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

BENCH_JSON = "bench-gpu-goal.json"
PYTEST_FAILED = 1  # pytest's exit status when tests ran and some failed
GATE_FAILED = 1  # ea-ops bench's exit status when a kernel failed the correctness gate
TIMED_OUT = (124, 137)  # timeout(1): the limit passed; the kill after the grace period


def _load(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _steps(work: Path) -> list[dict]:
    try:
        lines = (work / "steps.jsonl").read_text().splitlines()
    except OSError:
        return []
    return [json.loads(line) for line in lines if line.strip()]


def _tests(work: Path, name: str = "tests.xml") -> dict | None:
    """Counts from pytest's junit XML ``pack/<name>`` (tests, failures, errors, skipped), or None without one."""
    try:
        root = ET.parse(work / "pack" / name).getroot()
    except (OSError, ET.ParseError):
        return None
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        return None
    return {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}


def _bench(out: Path) -> dict | None:
    """The gate and goals of the bench document (a plan in a dry run; partial if the run was cut short)."""
    doc = _load(out / BENCH_JSON)
    if not isinstance(doc, dict):
        return None
    wls = doc.get("workloads", [])
    return {
        "dry_run": bool(doc.get("dry_run")),
        "complete": doc.get("complete"),
        "backend": doc.get("backend"),
        "timer": doc.get("timer"),
        "workloads": [{"label": w["label"], "mode": w["workload"]["mode"],
                       "gate_ok": None if w.get("gate") is None else w["gate"]["ok"],
                       "gate": None if w.get("gate") is None else w["gate"]["message"],
                       "peers": w.get("peers") or [r["peer"] for r in w.get("results", [])]} for w in wls],
        "goals": [{"text": g["text"], "met": g["met"], "measured": g["measured"]} for g in doc.get("goals", [])],
    }


def correctness_failed(summary: dict) -> bool:
    """A kernel failed the bench's gate, or a GPU test failed (the tests step's or the tvm step's)."""
    steps = {s["step"]: s for s in summary["steps"]}
    bench = summary.get("bench") or {}
    if any(w["gate_ok"] is False for w in bench.get("workloads", [])):
        return True
    if steps.get("bench", {}).get("rc") == GATE_FAILED:
        return True
    for step, counts in (("tests", summary.get("tests")), ("tvm", summary.get("tvm_tests"))):
        if steps.get(step, {}).get("rc") == PYTEST_FAILED or (counts or {}).get("failures", 0) > 0:
            return True
    return False


def exit_status(summary: dict) -> int:
    """0 every step passed; 1 a correctness failure; 2 no usable environment; 3 a step timed out or failed."""
    if correctness_failed(summary):
        return 1
    steps = summary["steps"]
    env = next((s for s in steps if s["step"] == "env"), None)
    if env is None or env["rc"] not in (0, None):
        return 2
    if any(s["rc"] not in (0, None) for s in steps):
        return 3
    return 0


def _warm(work: Path) -> dict | None:
    """The warm step's totals (``pack/warm.json``; its entries stay in the tarball), or None without one."""
    doc = _load(work / "pack" / "warm.json")
    if not isinstance(doc, dict):
        return None
    return {k: doc.get(k) for k in ("preset", "arch", "jobs", "dry_run", "builds", "failed", "seconds")}


def summarize(work: Path, out: Path, *, final: bool) -> dict:
    summary = {
        "complete": final,
        "dry_run": os.environ.get("DRY_RUN") == "1",
        "env": _load(work / "env.json"),
        "limits_s": _load(work / "limits.json"),
        "steps": _steps(work),
        "tests": _tests(work),
        "tvm_tests": _tests(work, "tvm-tests.xml"),
        "warm": _warm(work),
        "timings": _load(work / "pack" / "timings.json"),
        "tune": _load(work / "pack" / "tune.json"),
        "bench": _bench(out),
    }
    summary["exit_status"] = exit_status(summary) if final else None
    tmp = out / ".summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1) + "\n")
    tmp.replace(out / "summary.json")  # a reader sees the old summary or the new one, never half of one
    return summary


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3) or (len(argv) == 3 and argv[2] != "--final"):
        print("usage: gpu_check_summary.py WORK OUT [--final]", file=sys.stderr)
        return 2
    summary = summarize(Path(argv[0]), Path(argv[1]), final=len(argv) == 3)
    return summary["exit_status"] if summary["complete"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
