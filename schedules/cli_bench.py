"""``ea-ops bench``: the kernel against its peers (untuned, eager PyTorch, torch.compile, SDPA, a copy...)
side by side, after a correctness gate."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from ea_ops import dispatch
from ea_ops.errors import BackendUnavailableError
from ea_ops.outdir import prepare_out_dir
from ea_ops.records import atomic_write_json, atomic_write_text

from .bench import peers, report, timing
from .bench.goals import Goal
from .bench.runner import Options, Runner
from .bench.workloads import DTYPES, MODES, PRESETS, Preset, Workload, parse_shape, plan


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="ea-ops bench",
        description="Check the backend against the torch reference, then time it beside its peers: by default "
                    "eager PyTorch, torch.compile, SDPA (exact softmax attention) and a copy of the same bytes "
                    "(roofline); also the backend untuned (default), the unstabilised cumsum form and "
                    "FlashAttention. A peer that cannot run here says why in its row.",
        epilog="presets: " + "; ".join(f"{k}: {v.description}" for k, v in PRESETS.items())
               + ". Exit status: 0 all checked and timed; 1 a kernel failed the correctness gate (not timed); "
                 "2 bad arguments or backend unavailable.")
    ap.add_argument("--backend", default=None, choices=("auto", *dispatch.BACKEND_MODULES),
                    help="auto (what ea_attention picks for the device) or a backend by name; default: the "
                         "preset's (" + ", ".join(f"{k} {v.backend}" for k, v in PRESETS.items() if v.backend)
                         + "), else auto")
    what = ap.add_mutually_exclusive_group()
    what.add_argument("--workload", default=None, choices=sorted(PRESETS), help="a preset (default: cpu or gpu)")
    what.add_argument("--shape", default=None, help="one workload B,T,H,D")
    ap.add_argument("--order", type=int, default=None, help="even Taylor order (default 6)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="input dtype (default: the preset's)")
    ap.add_argument("--mode", choices=MODES, default=None,
                    help="fwd, fwdbwd (forward + backward) or step (one decoding step at context T)")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--peers", default=None,
                    help=f"comma-separated peers besides the kernel, from {','.join(peers.PEERS[1:])}; "
                         f"default: the preset's, else {','.join(peers.STANDARD)}")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads), default 2")
    ap.add_argument("--budget-s", type=float, default=10.0,
                    help="CPU: measuring time per workload, shared by the peers (each gets >= 1 sample)")
    ap.add_argument("--settle-s", type=float, default=timing.SETTLE_S,
                    help="CPU: pause before each peer's block of samples, so other runtimes' spinning "
                         "thread pools go idle (default %(default)s)")
    ap.add_argument("--max-call-s", type=float, default=60.0,
                    help="skip a call predicted (from smaller T) to take longer than this")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    ap.add_argument("--out", default=None, help="folder for bench-<name>.json, .txt and .png")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument("--dry-run", action="store_true",
                    help="print the plan (workloads, peers, timer, goals) and run nothing; needs no GPU")
    return ap


def _device(arg: str, preset_name: str | None, dry_run: bool = False) -> str:
    need = PRESETS[preset_name].device if preset_name else None
    cuda = torch.cuda.is_available()
    dev = arg if arg != "auto" else (need or ("cuda" if cuda else "cpu"))
    if dev == "cuda" and not cuda and not dry_run:
        raise ValueError(f"{'preset ' + repr(preset_name) if preset_name else '--device cuda'} needs a CUDA "
                         "device and torch.cuda.is_available() is False here (--dry-run shows its plan)")
    return dev


def workloads_from(args: argparse.Namespace) -> tuple[str, list[tuple[Workload, tuple[str, ...] | None]]]:
    """``(name, [(workload, its peers or None)])`` from the command line (ValueError naming the option)."""
    if args.shape is not None:
        B, T, H, D = parse_shape(args.shape)
        dev = _device(args.device, None, args.dry_run)
        base = [(Workload(B, T, H, D, 6, "bfloat16" if dev == "cuda" else "float32", "fwd", dev), None)]
        name = f"shape-{B}x{T}x{H}x{D}"
    else:
        name = args.workload or ("gpu" if torch.cuda.is_available() and args.device != "cpu" else "cpu")
        dev = _device(args.device, name, args.dry_run)
        base = plan(name, dev)
    if name == "decode" and args.mode not in (None, "step"):
        raise ValueError(f"--workload decode is --mode step, got --mode {args.mode}")
    if args.mode is not None and len({w.mode for w, _ in base}) > 1:
        raise ValueError(f"--workload {name} sets the mode of each workload; drop --mode {args.mode}")
    if args.order is not None and (args.order < 0 or args.order % 2):
        raise ValueError(f"--order must be a non-negative even int, got {args.order}")
    changes = {k: v for k, v in (("order", args.order), ("dtype", args.dtype), ("mode", args.mode))
               if v is not None}
    return name, [(Workload(**{**w.to_json(), **changes}), ps) for w, ps in base]


def parse_peers(text: str) -> tuple[str, ...]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in names if p not in peers.PEERS[1:]]
    if bad:
        raise ValueError(f"--peers takes names from {','.join(peers.PEERS[1:])}, got {','.join(bad)}")
    return ("kernel", *dict.fromkeys(names))


def output_names(name: str) -> dict[str, str]:
    """The files ``--out`` receives for the workloads called ``name``, by kind."""
    return {ext: f"bench-{name}.{ext}" for ext in ("json", "txt", "png")}


def resolve_backend(name: str, w: Workload) -> str:
    """The backend to bench: a named one if it can run here, or what ``ea_attention`` picks for ``auto``."""
    if name != "auto":
        dispatch.load(name)  # raises BackendUnavailableError with the reason and the extra to install
        return name
    shape = (w.B, w.H, w.D) if w.mode == "step" else (w.B, w.T, w.H, w.D)
    q = torch.empty((), dtype=w.torch_dtype, device=w.device).expand(shape)  # shape and device, no memory
    mod = dispatch.resolve("auto", q, causal=True, order=w.order, needs_grad=w.mode == "fwdbwd")
    return mod.NAME


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    log = lambda msg: print(f"ea-ops bench: {msg}", file=sys.stderr)
    if args.workload == "coldstart":  # pairs of fresh processes, not a workload timed in this one
        from .bench import coldstart

        return coldstart.main(args, argv, log, output_names(coldstart.NAME))
    try:
        name, cases = workloads_from(args)
        given = parse_peers(args.peers) if args.peers is not None else None
        peer_lists = [given or ("kernel", *(ps or peers.STANDARD)) for _, ps in cases]
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        for opt in ("budget_s", "max_call_s"):
            if not getattr(args, opt) > 0:
                raise ValueError(f"--{opt.replace('_', '-')} must be > 0, got {getattr(args, opt)}")
        if not args.settle_s >= 0:
            raise ValueError(f"--settle-s must be >= 0, got {args.settle_s}")
        if args.out:  # before any timing: a bad folder must not cost a whole run
            prepare_out_dir(args.out, output_names(name).values())
        preset = PRESETS.get(name)
        backend_arg = args.backend or (preset.backend if preset else None) or "auto"
        workloads = [w for w, _ in cases]
        goals = _goals(args, preset, log)
        if args.dry_run:
            return _dry_run(args, argv, name, list(zip(workloads, peer_lists, strict=True)), backend_arg, goals)
        backend = resolve_backend(backend_arg, workloads[0])
    except ValueError as exc:
        log(str(exc))
        return 2
    except BackendUnavailableError as exc:
        log(f"{exc}. Available: "
            + ", ".join(n for n, why in dispatch.available().items() if why is None))
        return 2
    device = workloads[0].device
    threads_before = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(args.threads)
    try:
        return _run(args, argv, name, workloads, peer_lists, backend, device, goals, log)
    finally:
        torch.set_num_threads(threads_before)  # main() may run inside another program (tests)


def _goals(args: argparse.Namespace, preset: Preset | None, log: Callable[[str], None]) -> tuple[Goal, ...]:
    """The preset's goals, unless the command line changed the workloads they were stated for."""
    if preset is None or not preset.goals:
        return ()
    if args.order is not None or args.dtype is not None:
        log("--order/--dtype change the preset's workloads: its goals are not judged")
        return ()
    return preset.goals


def _dry_run(args: argparse.Namespace, argv: list[str], name: str, cases: list[tuple[Workload, tuple[str, ...]]],
             backend: str, goals: tuple[Goal, ...]) -> int:
    device = cases[0][0].device
    why = None if backend == "auto" else dispatch.available().get(backend)
    doc = report.plan_document(cases, backend=backend,
                               unavailable=why, device=device, timer=timing.timer_name(device), argv=argv,
                               preset=name if name in PRESETS else None, goals=goals)
    text = report.plan_table(doc)
    print(json.dumps(doc, indent=1) if args.json else text)
    if args.out:
        out, files = Path(args.out), output_names(name)
        atomic_write_json(out / files["json"], doc)
        atomic_write_text(out / files["txt"], text + "\n")
    return 0


def _run(args, argv, name, workloads, peer_lists, backend, device, goals, log) -> int:
    if not args.json:
        log(f"backend={backend} on {device}"
            + (f", {args.threads} threads (torch.set_num_threads)" if device == "cpu" else ""))
    opts = Options(backend=backend, peers=peer_lists[0], threads=args.threads, budget_s=args.budget_s,
                   max_call_s=args.max_call_s, settle_s=args.settle_s, seed=args.seed,
                   show_progress=not args.no_progress)
    load_before = report.load_average()
    timer = timing.timer_name(device)
    files = output_names(name)

    def make_doc(results, complete: bool) -> dict:
        return report.document(results, backend=backend, device=device, threads=args.threads, timer=timer,
                               argv=argv, load_before=load_before, preset=name if name in PRESETS else None,
                               goals=goals, complete=complete)

    def partial(results) -> None:  # a run cut short (a time limit) keeps the workloads it finished
        if args.out and len(results) < len(workloads):
            atomic_write_json(Path(args.out) / files["json"], make_doc(results, False))

    results = Runner(opts, log).run(workloads, peer_lists, on_result=partial)
    doc = make_doc(results, True)
    text = report.table(doc)
    if args.json:
        print(json.dumps(doc, indent=1))
    else:
        print(text)
    if args.out:
        out = Path(args.out)
        atomic_write_json(out / files["json"], doc)
        atomic_write_text(out / files["txt"], text + "\n")
        why = report.plot(doc, out / files["png"])
        log(f"wrote {out / files['json']}, .txt" + (f"; no PNG: {why}" if why else ", .png"))
    failed = [r for r in results if not r.gate.ok]
    if failed:
        log(f"{len(failed)} of {len(results)} workloads failed the correctness gate: no speed reported for them")
        return 1
    return 0
