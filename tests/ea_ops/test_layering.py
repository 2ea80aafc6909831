"""DESIGN.md layering: ``import ea_ops`` needs only torch and never pulls in schedules or analysis."""

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
