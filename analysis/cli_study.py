"""``ea-ops study --out DIR [--quick | --preset NAME] [--models a,b] [--no-progress]``: the evidence study
(analysis.study): the spikiness/accuracy frontier, recall and copying against softmax and linear attention, and
cost. Writes ``study.json``, ``study.md``, ``frontier.png`` and ``curves.png`` into ``DIR``. ``--quick``: about
10 minutes on 2 cores; the default (``full``) about an hour. Exit status 0, or 2 for bad arguments."""

from __future__ import annotations

import argparse
import sys

from ea_ops.outdir import OutDirError, prepare_out_dir


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ea-ops study",
                                description="Evidence: the spikiness/accuracy frontier, recall and copying against "
                                            "softmax and linear attention, and cost. Writes study.json, study.md, "
                                            "frontier.png and curves.png into --out.")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--quick", action="store_true", help="the quick preset (about 10 minutes on 2 cores)")
    p.add_argument("--preset", choices=["smoke", "quick", "full"], help="a preset by name (default full)")
    p.add_argument("--models", help="comma-separated model names, instead of the preset's")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .study import PRESETS, run_study
    from .study.output import FILES

    if args.quick and args.preset not in (None, "quick"):
        print(f"ea-ops study: --quick and --preset {args.preset} contradict each other", file=sys.stderr)
        return 2
    name = "quick" if args.quick else (args.preset or "full")
    cfg = PRESETS[name]
    try:
        if args.models is not None:
            models = tuple(m.strip() for m in args.models.split(",") if m.strip())
            cfg = cfg.replace(models=models)
        out = prepare_out_dir(args.out, FILES)
    except (OutDirError, ValueError, TypeError) as exc:
        what = "" if isinstance(exc, OutDirError) else "--models: "
        print(f"ea-ops study: {what}{exc}", file=sys.stderr)
        return 2
    label = name if args.models is None else f"{name}, models {','.join(cfg.models)}"
    study = run_study(cfg, out, progress=not args.no_progress, label=label)
    print(f"ea-ops study: wrote {out}/ ({', '.join(FILES)}) in {study['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
