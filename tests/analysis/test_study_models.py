"""analysis.study.models: exact EA against the library's reference, matched parameter counts, decode = forward."""

import pytest
import torch

import ea_ops
from analysis.study.models import EXPLICIT_MAX_T, TinyLM, count_params, exact_ea, model_spec
from ea_ops.nn import ElementwiseAttention


def test_exact_ea_equals_the_library_reference():
    g = torch.Generator().manual_seed(0)
    for T in (19, EXPLICIT_MAX_T + 3):  # both forms
        q, k, v = (2 * torch.randn(2, T, 3, 4, generator=g, dtype=torch.float64) for _ in range(3))
        for s in (0.3, 1.0, 4.0):
            want = ea_ops.ea_attention_exact(q, k, v, causal=True, scale=s)
            torch.testing.assert_close(exact_ea(q, k, v, s), want, rtol=1e-10, atol=1e-10)


def test_parameter_counts_match_within_the_qk_norm_weights():
    counts = {m: count_params(TinyLM(m, 20, 16, 2, 2, 16, backend="torch"))
              for m in ("softmax", "linear", "ea-exact", "ea-exact-rms", "ea-2-rms", "ea-6")}
    base = counts["softmax"]
    assert counts["linear"] == counts["ea-exact"] == counts["ea-6"] == base
    assert counts["ea-2-rms"] == counts["ea-exact-rms"] == base + 2 * 2 * (16 // 2)  # q, k norm per layer


def test_model_names():
    assert model_spec("ea-6-rms").qk_norm == "rms" and model_spec("ea-6").scale == 1.0
    default = ElementwiseAttention(16, 2, order=6, backend="torch").scale  # what ea-6-rms runs at
    assert model_spec("ea-exact-rms").scale == pytest.approx(default)
    with pytest.raises(ValueError, match="model name"):
        model_spec("mamba")
    with pytest.raises(ValueError, match="order"):
        TinyLM("ea-3", 20, 16, 2, 1, 16, backend="torch")


@pytest.mark.parametrize("model", ["softmax", "linear", "ea-exact", "ea-4-rms", "ea-2"])
def test_decode_steps_give_the_forward_logits(model):
    torch.manual_seed(0)
    net = TinyLM(model, 20, 16, 2, 2, 16, backend="torch").eval()
    for p in net.parameters():  # larger weights than at init, so that a wrong cache shows
        p.data.mul_(2)
    tokens = torch.randint(0, 20, (2, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = net(tokens)
    caches, prev = [None, None], torch.full((2,), net.start)
    for i in range(tokens.shape[1]):
        logits, caches = net.step(tokens[:, i], prev, i, caches)
        prev = tokens[:, i]
        torch.testing.assert_close(logits, full[:, i], rtol=1e-4, atol=1e-4)  # float32, chunked vs recurrent
