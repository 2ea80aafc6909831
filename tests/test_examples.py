"""examples/train_lm.py runs end to end (a few steps): training, the accuracy report, generation from the cache,
and the speed comparison with softmax and a KV cache."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]


def test_train_lm_runs(capsys):
    spec = importlib.util.spec_from_file_location("train_lm", ROOT / "examples" / "train_lm.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--quick", "--steps", "3", "--contexts", "16", "--new-tokens", "4", "--backend", "torch"]) == 0
    text = capsys.readouterr().out
    assert "EA: step    3  loss" in text
    assert "model.layers.3.attn" in text and "predicted" in text  # the accuracy report, one row per layer
    assert "greedy sample from the EACache" in text
    assert "softmax (KV cache)" in text and "\n      16 " in text
