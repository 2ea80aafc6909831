"""What ``ea-ops tune --backend tvm`` tunes: a preset (``--workloads NAME``), the shapes a user names
(``--shape``) or the calls a program logged (``--from-log``, ``ea_ops.call_log``).

A workload is one kernel at one static shape ``[B, T, H, D]``; the record it produces applies at run time
to calls with the same kernel, order, dtype, ``H`` and ``D`` (nearest ``T`` bucket), see
``ea_ops.backends.tvm.tuned``. So two workloads in one ``slot`` (same kernel, causality, order, dtype,
``H``, ``D`` and ``T_bucket``) would fill one record: ``dedupe`` keeps one per slot.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ea_ops.records import t_bucket

BENCH_SHAPE = (1, 4096, 8, 64)  # the speed goal of issue 4: B=1, T=4096, H=8, D=64
LONG_TS = (16384, 65536)  # long sequences (issue 13): records per T bucket, where the best loop order differs


@dataclass(frozen=True)
class Workload:
    kernel: str
    causal: bool
    order: int
    dtype: str
    B: int
    T: int
    H: int
    D: int

    @property
    def name(self) -> str:
        c = "causal" if self.causal else "full"
        return f"{self.kernel}-{c}-t{self.order}-{self.dtype}-B{self.B}T{self.T}H{self.H}D{self.D}"

    def as_dict(self) -> dict:
        return asdict(self)


def _kernels(preset: str) -> list[tuple[str, bool, str, tuple[int, int, int, int]]]:
    bench = BENCH_SHAPE
    if preset == "bench":  # what ships in autotune_cache/ for this CPU class: the bench shape at 4k, 16k, 64k
        shapes = [bench, *((bench[0], t, *bench[2:]) for t in LONG_TS)]
        return [(k, True, "float32", shape) for shape in shapes for k in ("forward", "backward")]
    if preset == "default":
        return [("forward", True, "float32", bench), ("backward", True, "float32", bench),
                ("forward", False, "float32", bench), ("backward", False, "float32", bench)]
    if preset == "full":
        out = []
        for dtype in ("float32", "bfloat16", "float16"):
            out += [("forward", True, dtype, bench), ("backward", True, dtype, bench),
                    ("forward", False, dtype, bench), ("backward", False, dtype, bench),
                    ("step", True, dtype, (1, 1, bench[2], bench[3]))]
        return out
    if preset == "tiny":  # seconds per trial: for tests and demos
        return [("forward", True, "float32", (1, 64, 2, 16))]
    if preset == "tiny-backward":
        return [("backward", True, "float32", (1, 64, 2, 16))]
    raise SystemExit(f"--workloads must be one of {PRESETS}, got {preset!r}")


PRESETS = ("bench", "default", "full", "tiny", "tiny-backward")


def preset(name: str, orders: list[int]) -> list[Workload]:
    return [Workload(k, c, o, dt, *shape) for o in orders for (k, c, dt, shape) in _kernels(name)]


def slot(w: Workload) -> tuple:
    """What the runtime looks a record up by (``ea_ops.backends.tvm.tuned``): one record per slot."""
    return (w.kernel, w.causal, w.order, w.dtype, w.H, w.D, t_bucket(w.T))


def dedupe(work: list[Workload]) -> tuple[list[Workload], list[str]]:
    """One workload per ``slot``, the largest ``B*T`` of each (the call that costs most), in first-seen order;
    and a note per workload dropped."""
    best: dict[tuple, Workload] = {}
    notes = []
    for w in work:
        key = slot(w)
        old = best.get(key)
        if old is None or w.B * w.T > old.B * old.T:
            best[key] = w
        if old is not None and old != w:
            keep, drop = (w, old) if best[key] is w else (old, w)
            notes.append(f"{drop.name} shares T bucket {key[-1]} with {keep.name}: tuning the larger")
    return list(best.values()), notes


def for_shapes(shapes: list[tuple[int, int, int, int]], orders: list[int], dtypes: list[str],
               kernels: list[str], causal: str | None) -> list[Workload]:
    """Workloads of ``--shape``: each shape x order x dtype x kernel; forward and backward causal, non-causal
    or both (``causal`` = "causal", "non-causal" or None); the step (always causal) at ``T = 1``."""
    modes = {"causal": (True,), "non-causal": (False,), None: (True, False)}[causal]
    out = []
    for B, T, H, D in shapes:
        for o in orders:
            for dt in dtypes:
                for k in kernels:
                    if k == "step":
                        out.append(Workload("step", True, o, dt, B, 1, H, D))
                    else:
                        out += [Workload(k, c, o, dt, B, T, H, D) for c in modes]
    return out


def from_log(lines: list[dict], *, device: str = "cpu", dtypes: list[str], orders: list[int] | None = None,
             kernels: list[str] | None = None, causal: str | None = None) -> tuple[list[Workload], list[str]]:
    """Workloads of the valid lines of a call log (``ea_ops.call_log.read_log``) that run on ``device`` with
    one of ``dtypes``, and the reasons the others are skipped. ``orders``, ``kernels`` and ``causal``, if
    given, keep only those. A call with ``cu_seqlens`` runs each sequence on its own (B = 1, the mean
    length); a call that needed gradients runs the backward too."""
    from ea_ops import call_log

    out, skipped, left_out = [], {}, 0
    for line in lines:
        why = None
        if line["device"] != device:
            why = f"the TVM tuner measures {device} kernels"
        elif line["dtype"] not in dtypes:
            why = f"dtype {line['dtype']} (tuning {','.join(dtypes)})"
        if why is not None:
            what = (f"{line['kind']} {line['dtype']} on {line['device']}", why)
            skipped[what] = skipped.get(what, 0) + 1
            continue
        packed = line["n_seqs"] is not None
        B, T = (1, call_log.mean_length(line)) if packed else (line["B"], line["T"])
        for k in call_log.kernels_of(line):
            if (orders is not None and line["order"] not in orders or kernels is not None and k not in kernels
                    or k != "step" and causal is not None and line["causal"] != (causal == "causal")):
                left_out += 1
                continue
            out.append(Workload(k, line["causal"] or k == "step", line["order"], line["dtype"], B, T,
                                line["H"], line["D"]))
    notes = [f"skipped {n} {what} call(s): {why}" for (what, why), n in skipped.items()]
    if left_out:
        notes.append(f"left out {left_out} kernel(s) of logged calls: not among the --orders, --kernels or "
                     "--causal/--non-causal given")
    return out, notes
