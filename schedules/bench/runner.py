"""Run workloads: gate the kernel against the reference, then time it and its peers in this process."""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from ea_ops.errors import BackendUnavailableError
from ea_ops.progress import progress

from . import gate, peers, timing
from .workloads import Workload

SOFTMAX = frozenset({"sdpa", "flash_attn"})  # exact softmax attention: other math, other bytes (KV cache)


@dataclass
class Options:
    backend: str
    peers: tuple[str, ...] = ("kernel", *peers.STANDARD)
    threads: int = 2
    budget_s: float = 10.0
    max_call_s: float = 60.0
    settle_s: float = timing.SETTLE_S
    seed: int = 0
    show_progress: bool = True


@dataclass
class PeerResult:
    peer: str
    label: str
    status: str  # ok | same (as the kernel's row) | skipped | failed | wrong | unavailable
    median_s: float | None = None
    samples: int = 0
    bytes: int = 0
    note: str = ""

    @property
    def gbps(self) -> float | None:
        return None if self.median_s is None else self.bytes / self.median_s / 1e9

    def to_json(self) -> dict:
        return {"peer": self.peer, "label": self.label, "status": self.status, "median_s": self.median_s,
                "samples": self.samples, "bytes": self.bytes, "gbps": self.gbps, "note": self.note}


@dataclass
class WorkloadResult:
    workload: Workload
    gate: gate.GateResult
    results: list[PeerResult] = field(default_factory=list)

    def get(self, peer: str) -> PeerResult | None:
        return next((r for r in self.results if r.peer == peer), None)

    def ratios(self) -> dict[str, dict]:
        """Per peer: ``speedup`` = peer median / kernel median (> 1: the kernel is faster),
        ``roofline`` = the peer's GB/s over the GB/s of the copy of the same number of bytes, and
        ``x_kernel_only`` = peer median / the ``kernel_only`` row's (None without that row)."""
        k, alone = self.get("kernel"), self.get("kernel_only")
        copies = {r.bytes: r for r in self.results if r.peer.startswith("copy") and r.gbps is not None}
        out = {}
        for r in self.results:
            out[r.peer] = {"speedup": _over(r, k), "roofline": None, "x_kernel_only": _over(r, alone)}
            c = copies.get(r.bytes)
            if r.gbps is not None and c is not None:
                out[r.peer]["roofline"] = r.gbps / c.gbps
        return out

    def to_json(self) -> dict:
        ratios = self.ratios()
        return {"workload": self.workload.to_json(), "label": self.workload.label, "gate": self.gate.to_json(),
                "results": [{**r.to_json(), **ratios[r.peer]} for r in self.results]}


def _over(r: PeerResult, base: PeerResult | None) -> float | None:
    if r.median_s is None or base is None or base.median_s is None:
        return None
    return r.median_s / base.median_s


def _exponent(peer: str, mode: str) -> int:
    """How a peer's time grows with T: EA and the copies linearly (EA not at all per step, the KV-cache
    copy linearly), softmax attention quadratically (linearly per step, over a growing cache)."""
    if peer in SOFTMAX or peer == "copy_kv":
        return 1 if mode == "step" else 2
    return 0 if mode == "step" else 1


def _first_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text.splitlines()[0][:200]


@dataclass
class _Pending:
    """A peer ready to be timed: its result row (filled in by the timer) and its callable."""

    result: PeerResult
    fn: Callable[[], object]


class Runner:
    """Runs workloads in order, remembering per series (everything but T) the last time of each peer, so a
    call predicted to take longer than ``max_call_s`` is skipped rather than run."""

    def __init__(self, opts: Options, log: Callable[[str], None]):
        self.opts = opts
        self.log = log
        self.last: dict[tuple, tuple[int, float]] = {}
        self.failed: dict[tuple, str] = {}  # per series, the failure of a peer that would fail again

    def _series(self, w: Workload, peer: str) -> tuple:
        return (replace(w, T=0), peer)

    def _too_slow(self, w: Workload, peer: str, label: str, nbytes: int) -> PeerResult | None:
        prev = self.last.get(self._series(w, peer))
        if prev is None:
            return None
        pred = prev[1] * (w.T / prev[0]) ** _exponent(peer, w.mode)
        if pred <= self.opts.max_call_s:
            return None
        return PeerResult(peer, label, "skipped", bytes=nbytes,
                          note=f"about {pred:.3g} s per call predicted from smaller T (> --max-call-s)")

    def _pending(self, w: Workload, peer: str, label: str, make: Callable[[], Callable], nbytes: int):
        skip = self._too_slow(w, peer, label, nbytes)
        return skip if skip is not None else _Pending(PeerResult(peer, label, "ok", bytes=nbytes), make())

    def run(self, workloads: list[Workload], peer_lists: list[tuple[str, ...]] | None = None,
            on_result: Callable[[list[WorkloadResult]], None] | None = None) -> list[WorkloadResult]:
        """Gate, prepare and time each workload with its peers (``peer_lists[i]``, "kernel" first; default
        ``opts.peers``); ``on_result`` gets the results so far after each workload."""
        peer_lists = peer_lists or [self.opts.peers] * len(workloads)
        steps = [(w, ps, s) for w, ps in zip(workloads, peer_lists, strict=True) for s in ("gate", *ps, "time")]
        results: list[WorkloadResult] = []
        st: dict = {}
        for w, ps, step in progress(steps, total=len(steps), desc="ea-ops bench",
                                    disable=not self.opts.show_progress):
            if step == "gate":
                st = self._gate(w, ps)
                st["rows"], st["peers"] = [], ps
                results.append(st["result"])
            elif step == "time" or not st["result"].gate.ok:
                if step == "time":
                    if st["result"].gate.ok:
                        st["result"].results = self._measure(w, st["rows"])
                    st.clear()
                    gc.collect()
                    if w.device.startswith("cuda"):
                        torch.cuda.empty_cache()  # the next, larger workload gets the memory back
                    if on_result is not None:
                        on_result(results)
            else:
                st["rows"] += self._prepare(w, step, st)
        return results

    # ------------------------------------------------------------------------------------------- steps
    def _gate(self, w: Workload, peer_names: tuple[str, ...]) -> dict:
        x = peers.make_inputs(w, self.opts.seed, with_sdpa=not SOFTMAX.isdisjoint(peer_names))
        ref_dt = gate.reference_dtype(w.B * w.T * w.H * w.D if w.mode != "step" else w.B * w.H * w.D)
        if w.torch_dtype == torch.float64:
            ref_dt = torch.float64
        what = f"{self.opts.backend} backend, {w.label} {w.dtype} {w.mode}"
        try:
            got = peers.ea_call(w, x, self.opts.backend)()
        except BackendUnavailableError as exc:
            g = gate.GateResult(False, message=f"{what}: cannot run: {exc}")
            self.log(g.message)
            return {"result": WorkloadResult(w, g)}
        except Exception as exc:
            g = gate.GateResult(False, message=f"{what}: raised {_first_line(exc)}")
            self.log(g.message)
            return {"result": WorkloadResult(w, g)}
        ref = peers.reference_call(w, x, ref_dt)()
        g = gate.compare(w.mode, w.dtype, got, ref, ref_dt, what)
        if not g.ok:
            self.log(g.message + "; no speed is reported for it")
        return {"result": WorkloadResult(w, g), "inputs": x, "ref": ref, "ref_dtype": ref_dt}

    def _prepare(self, w: Workload, peer: str, st: dict) -> list:
        """Rows for ``peer``: ``_Pending`` to be timed, or finished ``PeerResult`` (same, skipped, failed,
        wrong, unavailable)."""
        x: peers.Inputs = st["inputs"]
        ea_bytes = w.ea_bytes()
        label = peers.LABELS.get(peer, "")
        try:
            if peer == "kernel":
                return [self._pending(w, peer, f"{self.opts.backend} backend",
                                      lambda: peers.ea_call(w, x, self.opts.backend), ea_bytes)]
            if peer == "eager":
                if self.opts.backend == "torch":  # the kernel is eager PyTorch: filled in from its row
                    return [PeerResult("eager", label, "same", bytes=ea_bytes)]
                return [self._pending(w, peer, label, lambda: peers.ea_call(w, x, "torch"), ea_bytes)]
            if peer == "default":
                if self.opts.backend == "torch":
                    return [PeerResult(peer, label, "same", bytes=ea_bytes,
                                       note="the torch backend has no tuned configuration")]
                return [self._checked(w, peer, label, lambda: peers.default_call(w, x, self.opts.backend), st)]
            if peer in ("inplace", "kernel_only", "out"):
                make = {"inplace": peers.inplace_call, "kernel_only": peers.kernel_only_call,
                        "out": peers.out_call}[peer]
                return [self._checked(w, peer, label, lambda: (make(w, x, self.opts.backend), ""), st)]
            if peer == "compiled":
                if w.mode == "step":
                    label = "torch.compile (torch backend step)"
                return [self._checked(w, peer, label, lambda: (peers.compiled_call(w, x), ""), st,
                                      fail="torch.compile failed: ")]
            if peer == "cumsum":
                return [self._checked(w, peer, label, lambda: (peers.cumsum_call(w, x), ""), st)]
            if peer in SOFTMAX:
                label += " (1 query, KV cache)" if w.mode == "step" else " (causal)"
                make = peers.sdpa_call if peer == "sdpa" else peers.flash_attn_call
                return [self._pending(w, peer, label, lambda: make(w, x), w.sdpa_bytes())]
            if peer == "copy":
                rows = [self._pending(w, peer, label, lambda: peers.copy_call(ea_bytes, w.device), ea_bytes)]
                if w.sdpa_bytes() != ea_bytes and not SOFTMAX.isdisjoint(st["peers"]):
                    # softmax attention moves other bytes (the KV cache): its roofline is a copy of those.
                    rows.append(self._pending(w, "copy_kv", "copy of SDPA's bytes (KV cache)",
                                              lambda: peers.copy_call(w.sdpa_bytes(), w.device), w.sdpa_bytes()))
                return rows
        except peers.Unavailable as exc:
            nbytes = w.sdpa_bytes() if peer in SOFTMAX else ea_bytes
            return [PeerResult(peer, label, "unavailable", bytes=nbytes, note=str(exc))]
        raise ValueError(f"unknown peer {peer!r}")

    def _checked(self, w: Workload, peer: str, label: str, make: Callable[[], tuple[Callable, str]], st: dict,
                 fail: str = ""):
        """A peer computing EA itself: made (``make() -> (fn, note)``, may raise ``Unavailable``), run once and
        held to the kernel's gate; a failure to make it is remembered per series (everything but T)."""
        nbytes = w.ea_bytes()
        series = self._series(w, peer)
        if series in self.failed:
            return PeerResult(peer, label, "failed", bytes=nbytes, note=self.failed[series])
        skip = self._too_slow(w, peer, label, nbytes)
        if skip is not None:
            return skip
        try:
            fn, note = make()
            got = fn()  # compiles, builds or JIT-compiles what it needs
        except peers.Unavailable:
            raise
        except Exception as exc:
            note = fail + _first_line(exc)
            self.failed[series] = note
            self.log(f"{label}: {note}")
            return PeerResult(peer, label, "failed", bytes=nbytes, note=note)
        g = gate.compare(w.mode, w.dtype, got, st["ref"], st["ref_dtype"], label)
        if not g.ok:
            self.log(g.message + "; not timed")
            return PeerResult(peer, label, "wrong", bytes=nbytes, note=g.message)
        return _Pending(PeerResult(peer, label, "ok", bytes=nbytes, note=note), fn)

    def _measure(self, w: Workload, rows: list) -> list[PeerResult]:
        pending = [r for r in rows if isinstance(r, _Pending)]
        timings = timing.measure([p.fn for p in pending], device=w.device, threads=self.opts.threads,
                                 budget_s=self.opts.budget_s, settle_s=self.opts.settle_s)
        for p, t in zip(pending, timings, strict=True):
            if isinstance(t, Exception):
                p.result.status, p.result.note = "failed", _first_line(t)
            else:
                p.result.median_s, p.result.samples = t.median_s, t.samples
                self.last[self._series(w, p.result.peer)] = (w.T, t.median_s)
        out = [r.result if isinstance(r, _Pending) else r for r in rows]
        kernel = next(r for r in out if r.peer == "kernel")
        for i, r in enumerate(out):
            if r.status == "same":
                note = "; ".join(n for n in ("the kernel itself", r.note, kernel.note) if n)
                out[i] = replace(kernel, peer=r.peer, label=r.label, note=note)
        return out
