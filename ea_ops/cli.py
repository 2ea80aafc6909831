"""The ``ea-ops`` command. Each subcommand lives in the package that owns it and is imported only when run,
so ``ea_ops`` never imports ``schedules`` or ``analysis`` at import time."""

from __future__ import annotations

import importlib
import sys

# name -> (module with main(argv) -> int, one-line help, extra that provides it)
SUBCOMMANDS: dict[str, tuple[str, str, str | None]] = {
    "info": ("ea_ops.cli_info", "backends found, the local target's fingerprint, applicable records", None),
    "tune": ("schedules.cli_tune", "tune kernels for a backend and target (resumable, budgeted)", None),
    "compile": ("schedules.cli_compile", "build kernels for a target and export them with a manifest", None),
    "bench": ("schedules.cli_bench", "side-by-side speed ratios against eager, compiled, SDPA, a copy and more",
              None),
    "report": ("analysis.cli_report", "stability report: orders x dtypes x channel scales (md, json, png)",
               "analysis"),
    "select-order": ("analysis.cli_select", "smallest even order meeting an error budget, with evidence",
                     "analysis"),
    "check": ("analysis.cli_check", "check an EA implementation against EA's properties (smallest failing input)",
              "analysis"),
    "study": ("analysis.cli_study", "evidence: spikiness vs accuracy, recall/copying vs softmax, cost", "analysis"),
}


def _usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = ["usage: ea-ops <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_, _) in SUBCOMMANDS.items()]
    lines += ["", "Run 'ea-ops <command> --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from . import __version__

        print(f"ea-ops {__version__}")
        return 0
    name = argv[0]
    if name not in SUBCOMMANDS:
        print(f"ea-ops: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module, _, extra = SUBCOMMANDS[name]
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        hint = f" Install it with: pip install 'ea-ops[{extra}]'" if extra else ""
        print(f"ea-ops {name}: needs a missing package ({exc}).{hint}", file=sys.stderr)
        return 2
    return int(mod.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
