"""``ea-ops report`` end to end (hidden "tiny" preset, every backend found), and the spikiness measures."""

import json

import torch

from analysis.spikiness import distributions, entropy_and_peak
from analysis.sweep import PRESETS, discover_backends
from ea_ops.cli import main as ea_ops_main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_report_end_to_end(tmp_path):
    out = tmp_path / "rep"
    assert ea_ops_main(["report", "--out", str(out), "--preset", "tiny", "--no-progress"]) == 0
    cfg = PRESETS["tiny"]
    md = (out / "report.md").read_text()
    for section in ("## Conclusions", "## Approximation error", "## Spikiness", "## docs/math.md section 6 facts",
                    "## Bounds", "## float32, backend torch: total error"):
        assert section in md
    rep = json.loads((out / "report.json").read_text())
    backends = rep["backends"]
    assert "torch" in backends
    n_kernels = {"float32": len(backends) + 2, "float16": len(backends) + 3}  # + reference, unstabilised
    assert len(rep["cells"]) == sum(n_kernels[d] for d in cfg.dtypes) * len(cfg.scales) * len(cfg.orders)
    for png in rep["pngs"]:
        data = (out / png).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 10_000
    assert {f"heatmap_{d}.png" for d in cfg.dtypes} <= set(rep["pngs"])
    torch_cells = [c for c in rep["cells"] if c["kernel"] == "torch"]
    assert torch_cells and all(c["output"]["nan"] == c["output"]["inf"] == 0 for c in torch_cells)
    # rounding and approximation are separate numbers; total can't beat approximation by more than rounding
    for c in torch_cells:
        assert c["total"]["max"] <= c["approximation"]["max"] + c["rounding"]["max"] + 1e-12
        assert c["total"]["max"] >= c["approximation"]["max"] - c["rounding"]["max"] - 1e-12
    assert all(c["bound_violations"] == 0 for c in rep["cells"] if c["kernel"] == "reference")
    assert any(c["kernel"] == "unstabilised-float16" for c in rep["cells"])
    assert rep["conclusions"] and rep["facts"]["facts"]
    # what stabilisation buys: shifted q, k never break the library's kernels, but do break the naive sums
    shifted = rep["shift_cells"]
    assert all(c["output"]["nan"] + c["output"]["inf"] == 0 for c in shifted if c["kernel"] == "torch")
    fp16 = {c["shift"]: c for c in shifted if c["kernel"] == "unstabilised-float16"}
    assert fp16[0.0]["output"]["nan"] == 0 and fp16[8.0]["output"]["nan"] == fp16[8.0]["output"]["values"]
    assert "## What stabilisation buys" in md


def test_report_rejects_bad_out(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert ea_ops_main(["report", "--out", str(f / "sub"), "--preset", "tiny"]) == 2
    assert "--out" in capsys.readouterr().err


def test_discover_backends_lists_torch_and_explains_the_rest():
    found, skipped = discover_backends(["float32"])
    assert "torch" in found
    assert all(isinstance(why, str) and why for why in skipped.values())


def test_spikiness_measures():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 64, generator=g, dtype=torch.float64) * 2
    y = torch.randn(4, 64, generator=g, dtype=torch.float64) * 2
    for m in ("exact", "ea-2", "ea-16", "linear"):
        p = distributions(x, y, m)
        assert torch.allclose(p.sum(-1), torch.ones(4, 64, dtype=torch.float64))
        assert (p.triu(1) == 0).all() and (p >= 0).all()
    # linear attention cannot depend on the query within one channel
    p_lin = distributions(x, y, "linear")
    assert torch.allclose(p_lin[:, -1], distributions(-x, y, "linear")[:, -1])
    # exact EA at this scale is peakier than linear attention
    H_ex, peak_ex = entropy_and_peak(distributions(x, y, "exact"))
    H_li, peak_li = entropy_and_peak(p_lin)
    assert H_ex.mean() < H_li.mean() and peak_ex.mean() > peak_li.mean()
    assert ((H_ex >= -1e-12) & (H_ex <= 1 + 1e-12)).all()
    import pytest

    with pytest.raises(ValueError, match="even"):
        distributions(x, y, "ea-3")
