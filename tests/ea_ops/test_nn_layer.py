"""``ea_ops.nn.ElementwiseAttention`` against its pure-torch reference: padding (left, right, both, empty rows),
GQA, prefill then decode, state hand-off, gradients, ``torch.compile(fullgraph=True)``, argument errors, and the
position study (RoPE breaks EA's shift invariance; no positional encoding keeps it)."""

from __future__ import annotations

import pytest
import torch

import ea_ops
from ea_ops.nn import ElementwiseAttention, ElementwiseAttentionReference, padding_segments, rotary
from ea_ops.testing import rel_err

# float32 layer against the float64 reference: measured max |diff| 1.5e-7 to 3e-7 on these shapes; 2e-5 leaves
# a margin of about 60x for other CPUs' rounding, and is still far below any padding or state mistake (>= 1e-2).
TOL = 2e-5


def pair(hidden=32, heads=4, kv_heads=None, order=6, **kw):
    torch.manual_seed(0)
    lay = ElementwiseAttention(hidden, heads, kv_heads, order=order, backend="torch", **kw).eval()
    ref = ElementwiseAttentionReference(hidden, heads, kv_heads, order=order, backend="torch", **kw).eval()
    ref.load_state_dict(lay.state_dict())
    return lay, ref


def masks(B, T):
    m = torch.ones(B, T, dtype=torch.long)
    m[0, : T // 3] = 0  # left padding
    m[1, T - 3:] = 0  # right padding
    m[2] = 0  # an empty row
    m[3, :2] = 0  # both sides
    m[3, T - 1:] = 0
    return m


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_padded_batch_matches_reference(kv_heads):
    lay, ref = pair(kv_heads=kv_heads)
    x = torch.randn(5, 13, 32)
    m = masks(5, 13)
    y, st = lay(x, attention_mask=m, use_cache=True)
    yr, _ = ref(x, attention_mask=m)
    assert (y - yr).abs().max() < TOL
    # padded positions give exactly zero before the output projection: o_proj(0) = its bias (none here)
    assert y[m == 0].abs().max() == 0
    assert st.S.shape == (5, kv_heads, 7, 8)  # one state per kv head: G times smaller than per query head


def test_padded_rows_equal_their_unpadded_rows():
    """Outputs at the tokens and the final state of each padded row equal those of the row run alone."""
    lay, _ = pair()
    x = torch.randn(5, 13, 32)
    m = masks(5, 13)
    y, st = lay(x, attention_mask=m, use_cache=True)
    for b in range(5):
        idx = m[b].nonzero()[:, 0]
        if idx.numel() == 0:
            empty = ea_ops.EAState.empty(1, 4, 8, 6)
            assert torch.equal(st.S[b:b + 1], empty.S) and torch.equal(st.m[b:b + 1], empty.m)
            continue
        yb, sb = lay(x[b:b + 1, idx], use_cache=True)
        assert (y[b:b + 1, idx] - yb).abs().max() < 1e-6
        for got, want in ((st.S, sb.S), (st.Z, sb.Z), (st.m, sb.m)):
            assert rel_err(got[b:b + 1], want) < 1e-6


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_prefill_then_decode_equals_the_full_forward(kv_heads):
    """A chunked prefill, one-token steps (the recurrent step) and a second chunk from the state give the
    reference's full forward over the whole sequence."""
    lay, ref = pair(kv_heads=kv_heads)
    x = torch.randn(2, 20, 32)
    y0, st = lay(x[:, :9], use_cache=True)
    ys = [y0]
    for t in range(9, 14):
        yt, st = lay(x[:, t:t + 1], state=st, use_cache=True)
        ys.append(yt)
    y1, st = lay(x[:, 14:], state=st, use_cache=True)
    ys.append(y1)
    yr, _ = ref(x)
    assert (torch.cat(ys, 1) - yr).abs().max() < TOL
    assert st.S.shape == (2, kv_heads, 7, 8)


def test_left_padded_prefill_then_decode_with_the_growing_mask():
    """As ``generate`` calls it: a left-padded prompt, then steps whose mask is the whole history (its last column
    is the step's); a padded step (mask 0) leaves the state as it was."""
    lay, ref = pair()
    x = torch.randn(3, 12, 32)
    m = torch.ones(3, 12, dtype=torch.long)
    m[0, :5] = 0
    m[1, :2] = 0
    y, st = lay(x[:, :8], attention_mask=m[:, :8], use_cache=True)
    ys = [y]
    for t in range(8, 12):
        yt, st = lay(x[:, t:t + 1], state=st, attention_mask=m[:, : t + 1], use_cache=True)
        ys.append(yt)
    yr, _ = ref(x, attention_mask=m)
    assert (torch.cat(ys, 1) - yr).abs().max() < TOL
    before = st
    pad_step = torch.tensor([[0], [1], [0]])
    yt, st = lay(x[:, :1], state=before, attention_mask=pad_step, use_cache=True)
    assert torch.equal(st.S[0], before.S[0]) and torch.equal(st.m[2], before.m[2])
    assert not torch.equal(st.S[1], before.S[1])
    assert yt[0].abs().max() == 0
    _, fresh = lay(x[:, :1], attention_mask=pad_step, use_cache=True)  # no state yet: padded rows stay empty
    empty = ea_ops.EAState.empty(3, 4, 8, 6)
    assert torch.equal(fresh.S[0], empty.S[0]) and torch.equal(fresh.m[2], empty.m[2])
    assert not torch.equal(fresh.S[1], empty.S[1])


def test_mask_with_holes_is_refused():
    lay, _ = pair()
    m = torch.ones(1, 6, dtype=torch.long)
    m[0, 2] = 0
    with pytest.raises(ValueError, match="attention_mask"):
        lay(torch.randn(1, 6, 32), attention_mask=m)


def test_padding_segments():
    m = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 0], [0, 0, 0, 0]])
    cu, keep = padding_segments(m)
    assert cu.tolist() == [0, 2, 4, 4, 4, 7, 8, 8 + 4, 8 + 4, 12]
    assert torch.equal(keep, m.bool())


def test_gradients_match_the_reference():
    lay, ref = pair(kv_heads=2)
    lay.train(), ref.train()
    x = torch.randn(2, 11, 32)
    m = torch.ones(2, 11, dtype=torch.long)
    m[0, :3] = 0
    (lay(x, attention_mask=m)[0] ** 2).sum().backward()
    (ref(x, attention_mask=m)[0] ** 2).sum().backward()
    for (name, p), pr in zip(lay.named_parameters(), ref.parameters()):
        assert rel_err(p.grad, pr.grad) < 1e-4, name


def test_auto_backend_matches_the_torch_backend():
    torch.manual_seed(1)
    lay = ElementwiseAttention(32, 4, 2, backend="auto").eval()
    ref = ElementwiseAttentionReference(32, 4, 2).eval()
    ref.load_state_dict(lay.state_dict())
    x = torch.randn(2, 16, 32)
    y, st = lay(x[:, :15], use_cache=True)
    yt, _ = lay(x[:, 15:], state=st)
    assert (torch.cat([y, yt], 1) - ref(x)[0]).abs().max() < TOL


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_compiles_fullgraph_on_its_first_call(backend):
    """Training mode (the accuracy tracker updates its buffers inside the graph), forward and backward."""
    lay, _ = pair(kv_heads=2)
    lay.backend = backend
    lay.train()
    x = torch.randn(2, 16, 32)
    comp = torch.compile(lay, fullgraph=True, backend="aot_eager")
    y, _ = comp(x)
    y.square().sum().backward()
    g = {n: p.grad.clone() for n, p in lay.named_parameters()}
    assert int(lay._updates) == 1
    lay.zero_grad()
    y2, _ = lay(x)
    y2.square().sum().backward()
    assert (y - y2).abs().max() < 1e-6
    for n, p in lay.named_parameters():
        assert rel_err(g[n], p.grad) < 1e-5, n


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="num_kv_heads"):
        ElementwiseAttention(32, 4, 3)
    with pytest.raises(ValueError, match="hidden_size"):
        ElementwiseAttention(30, 4)
    with pytest.raises(ValueError, match="order"):
        ElementwiseAttention(32, 4, order=5)
    with pytest.raises(ValueError, match="qk_norm"):
        ElementwiseAttention(32, 4, qk_norm="layer")
    with pytest.raises(ValueError, match="scale"):
        ElementwiseAttention(32, 4, scale=-1.0)
    with pytest.raises(ValueError, match="scale"):
        ElementwiseAttention(32, 4, scale="big")
    with pytest.raises(ValueError, match="backend"):
        ElementwiseAttention(32, 4, backend="cuda")
    with pytest.raises(ValueError, match="error_budget"):
        ElementwiseAttention(32, 4, error_budget=0.0)
    lay = ElementwiseAttention(32, 4, backend="torch").eval()
    with pytest.raises(ValueError, match="x must have shape"):
        lay(torch.randn(2, 5, 31))
    with pytest.raises(TypeError, match="state"):
        lay(torch.randn(2, 5, 32), state=(1, 2))
    with pytest.raises(ValueError, match="attention_mask"):
        lay(torch.randn(2, 5, 32), attention_mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="state"):  # a state of the wrong batch: the operator names it
        lay(torch.randn(2, 5, 32), state=ea_ops.EAState.empty(3, 4, 8, 6))


def test_rope_breaks_shift_invariance_and_no_positions_keeps_it():
    """The position study in one test: the same tokens at positions p and p + 100. Softmax with RoPE depends
    only on p_i - p_j (0 change); EA with RoPE changes (each channel's values mix with absolute angles); EA with
    no positional encoding is unchanged by construction. Measured: EA + RoPE moves the output by ~0.3 of its
    RMS at these sizes (docs/models.md has the table)."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 32, 2, 16, dtype=torch.float64) for _ in range(3))
    pos = torch.arange(32)

    def ea(qq, kk):
        return ea_ops.ea_attention(qq, kk, v, order=6, scale=0.3, backend="torch")[0]

    def softmax(qq, kk):
        sd = torch.nn.functional.scaled_dot_product_attention
        return sd(qq.transpose(1, 2), kk.transpose(1, 2), v.transpose(1, 2), is_causal=True).transpose(1, 2)

    shifted = {}
    for name, f in (("ea_rope", ea), ("softmax_rope", softmax)):
        a = f(rotary(q, pos), rotary(k, pos))
        b = f(rotary(q, pos + 100), rotary(k, pos + 100))
        shifted[name] = float((a - b).abs().max() / a.square().mean().sqrt())
    assert shifted["softmax_rope"] < 1e-10
    assert shifted["ea_rope"] > 1e-2


def test_nn_needs_only_torch_and_hf_names_its_extra():
    """ea_ops.nn imports (and builds its scale="auto" from the shipped table) with analysis, transformers and the
    compiled backends' libraries blocked; ea_ops.hf without transformers names the extra to install."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in {'analysis', 'schedules', 'transformers', 'tvm', 'triton', 'mpmath', 'scipy'}:
                    raise ImportError('blocked: ' + name)
        sys.meta_path.insert(0, Block())
        import torch
        from ea_ops.nn import ElementwiseAttention
        lay = ElementwiseAttention(16, 2, backend='torch')
        print(lay(torch.randn(1, 3, 16))[0].shape, round(lay.scale, 4))
        try:
            import ea_ops.hf
        except ImportError as e:
            print('hf:', e)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "torch.Size([1, 3, 16]) 0.1574" in out.stdout
    assert "hf: ea_ops.hf needs the 'hf' extra" in out.stdout
