"""``import analysis`` needs torch only (mpmath, scipy, matplotlib load lazily); ea_ops never loads analysis."""

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_analysis_imports_without_optional_packages():
    code = textwrap.dedent("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in {'mpmath', 'scipy', 'matplotlib'}:
                    raise ImportError('blocked: ' + name)
        sys.meta_path.insert(0, Block())
        import analysis
        c = analysis.select_order(1e-3, scale=1.0)
        print(c.order)
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "10"
