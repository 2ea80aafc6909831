"""docs/design.md layering: ``import ea_ops`` needs only torch and never pulls in schedules or analysis."""

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_import_needs_only_torch():
    code = textwrap.dedent("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                top = name.split('.')[0]
                if top in {'schedules', 'analysis', 'tvm', 'tvm_ffi', 'triton', 'mpmath', 'scipy',
                           'matplotlib'}:
                    raise ImportError('blocked: ' + name)
        sys.meta_path.insert(0, Block())
        import torch, ea_ops
        q = torch.randn(1, 5, 1, 2)
        ea_ops.ea_attention(q, q, q, backend='auto')
        ea_ops.ea_recurrent_step(q[:, 0], q[:, 0], q[:, 0], None)
        print('ok')
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_ea_ops_sources_never_import_schedules_or_analysis():
    offenders = []
    for path in (ROOT / "ea_ops").rglob("*.py"):
        for line in path.read_text().splitlines():
            s = line.strip()
            if s.startswith(("import schedules", "from schedules", "import analysis", "from analysis")):
                offenders.append(f"{path.relative_to(ROOT)}: {s}")
    # ea_ops/cli.py names them only as strings, imported when a subcommand runs.
    assert offenders == []


def _project_imports() -> dict[str, set[str]]:
    """``module -> project modules it imports``, lazy imports inside functions included (ast, no import)."""
    import ast

    mods = {}
    for pkg in ("ea_ops", "schedules", "analysis"):
        for path in (ROOT / pkg).rglob("*.py"):
            rel = path.relative_to(ROOT).with_suffix("")
            name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
            mods[name] = path
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        is_pkg = path.name == "__init__.py"
        here = name.split(".") if is_pkg else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(here[: len(here) - node.level + 1]) if node.level else ""
                mod = ".".join(p for p in (base, node.module or "") if p)
                targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != name and not name.startswith(t + "."):  # a package's own parents are not cycles
                    graph[name].add(t)
    return graph


def test_no_import_cycles():
    graph = _project_imports()
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:  # n is on the current path: a cycle
                path = stack + [m]
                cycles.append(" -> ".join(path[path.index(n):] + [n]))
            elif n not in state:
                visit(n, stack + [m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    assert cycles == []


def test_sources_cite_only_documents_in_the_repo():
    import re

    cited, outside = set(), []
    for pkg in ("ea_ops", "schedules", "analysis", "tests", "scripts", "examples"):
        for path in (ROOT / pkg).rglob("*.py"):
            text = path.read_text()
            cited |= set(re.findall(r"\bdocs/[\w-]+\.md\b", text))
            outside += [f"{path.relative_to(ROOT)}: {m}" for m in
                        re.findall(r"\.\./shared\b|\b(?:SPEC|DESIGN|FINDINGS)\.md\b", text)]
    assert outside == []
    assert cited and all((ROOT / c).is_file() for c in cited), sorted(c for c in cited if not (ROOT / c).is_file())
