"""``ea_ops.hf``: the transformers models decode from their state. ``generate`` with the ``EACache`` gives the
tokens of re-running the full forward; left-padded batches give their unpadded rows; beam search (reorder_cache)
gives what it gives without a cache; batch selection and repetition; save/load round trip; Auto registration."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM  # noqa: E402

import ea_ops  # noqa: E402
from ea_ops.hf import EACache, EAConfig, EAForCausalLM, EAModel  # noqa: E402
from ea_ops.nn import accuracy_report  # noqa: E402
from ea_ops.testing import rel_err  # noqa: E402

V = 61


def tiny(seed=0, **kw) -> EAForCausalLM:
    torch.manual_seed(seed)
    cfg = EAConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                   ea_backend="torch", initializer_range=0.2, pad_token_id=0, eos_token_id=None, **kw)
    return EAForCausalLM(cfg).eval()


def greedy_by_full_forward(model, ids, n):
    for _ in range(n):
        nxt = model(ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], 1)
    return ids


def test_generate_with_the_cache_equals_rerunning_the_full_forward():
    model = tiny()
    ids = torch.randint(1, V, (3, 9))
    out = model.generate(ids, max_new_tokens=12, do_sample=False)
    want = greedy_by_full_forward(model, ids, 12)
    assert torch.equal(out, want)
    assert len(set(out[:, 9:].flatten().tolist())) > 3  # a real sequence, not one token repeated


def test_cache_holds_one_state_per_layer_per_kv_head():
    model = tiny()
    ids = torch.randint(1, V, (2, 7))
    out = model(ids, use_cache=True)
    cache = out.cache
    assert isinstance(cache, EACache) and len(cache) == 2 and cache.get_seq_length() == 7
    st = cache.get_state(0)
    assert isinstance(st, ea_ops.EAState) and st.S.shape == (2, 2, 7, 8)  # [B, H_kv, t+1, D]
    step = model(ids[:, :1], cache=cache, use_cache=True)
    assert step.cache is cache and cache.get_seq_length() == 8
    full = model(torch.cat([ids, ids[:, :1]], 1), use_cache=False).logits[:, -1]
    assert (step.logits[:, -1] - full).abs().max() < 1e-5


def test_left_padded_batch_equals_its_unpadded_rows():
    model = tiny(seed=1)
    rows = [torch.randint(1, V, (n,)) for n in (4, 9, 6)]
    T = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), T, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, T - len(r):], mask[b, T - len(r):] = r, 1
    out = model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False)
    for b, r in enumerate(rows):
        alone = model.generate(r[None], max_new_tokens=8, do_sample=False)
        assert torch.equal(out[b, T:], alone[0, len(r):]), b
    # and the logits of the padded forward at the tokens equal those of the rows alone
    logits = model(ids, attention_mask=mask, use_cache=False).logits
    for b, r in enumerate(rows):
        alone = model(r[None], use_cache=False).logits[0]
        assert (logits[b, T - len(r):] - alone).abs().max() < 1e-5


def test_beam_search_reorders_the_cache():
    """Beam search with the cache (reorder_cache after each step) gives what it gives re-running everything."""
    model = tiny(seed=2)
    ids = torch.randint(1, V, (2, 6))
    kw = {"max_new_tokens": 7, "num_beams": 3, "do_sample": False, "num_return_sequences": 2}
    with_cache = model.generate(ids, use_cache=True, **kw)
    without = model.generate(ids, use_cache=False, **kw)
    assert torch.equal(with_cache, without)


def test_batch_selection_and_repetition():
    model = tiny()
    ids = torch.randint(1, V, (3, 5))
    nxt = torch.randint(1, V, (3, 1))
    cache = model(ids, use_cache=True).cache
    cache.batch_select_indices(torch.tensor([2, 0]))
    sel = model(nxt[[2, 0]], cache=cache, use_cache=True).logits[:, -1]
    full = model(torch.cat([ids, nxt], 1)[[2, 0]], use_cache=False).logits[:, -1]
    assert (sel - full).abs().max() < 1e-5
    cache = model(ids, use_cache=True).cache
    cache.batch_select_indices(torch.tensor([True, False, True]))  # a row mask selects alike
    want = model(ids[[0, 2]], use_cache=True).cache.get_state(0).S
    assert cache.get_state(0).S.shape == want.shape and rel_err(cache.get_state(0).S, want) < 1e-5
    cache = model(ids, use_cache=True).cache
    cache.batch_repeat_interleave(2)
    assert cache.get_state(1).S.shape[0] == 6
    rep = model(nxt.repeat_interleave(2, 0), cache=cache, use_cache=True).logits[:, -1]
    want = model(torch.cat([ids, nxt], 1), use_cache=False).logits[:, -1].repeat_interleave(2, 0)
    assert (rep - want).abs().max() < 1e-5
    cache.reset()
    assert cache.get_seq_length() == 0 and cache.get_state(0) is None
    with pytest.raises(NotImplementedError, match="crop"):
        cache.crop(1)


def test_save_and_load_round_trip(tmp_path):
    model = tiny()
    model.train()
    ids = torch.randint(1, V, (2, 8))
    model(ids, labels=ids).loss.backward()  # the accuracy trackers have seen a batch
    model.eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(loaded) is EAForCausalLM and loaded.config.model_type == "ea"
    assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert [r.rms_x for r in accuracy_report(loaded)] == [r.rms_x for r in accuracy_report(model)]
    assert torch.equal(loaded.generate(ids, max_new_tokens=5, do_sample=False),
                       model.generate(ids, max_new_tokens=5, do_sample=False))


def test_auto_classes_know_the_model():
    cfg = AutoConfig.for_model("ea", vocab_size=V, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                               ea_backend="torch")
    assert isinstance(cfg, EAConfig) and cfg.num_key_value_heads == 4
    assert type(AutoModel.from_config(cfg)) is EAModel
    assert type(AutoModelForCausalLM.from_config(cfg)) is EAForCausalLM


def test_training_step_and_loss():
    model = tiny()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids = torch.randint(1, V, (4, 16))
    losses = []
    for _ in range(5):
        loss = model(ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_bad_inputs():
    model = tiny()
    ids = torch.randint(1, V, (2, 5))
    with pytest.raises(ValueError, match="attention_mask"):
        model(ids, attention_mask=torch.ones(2, 1, 5, 5))
    with pytest.raises(TypeError, match="cache"):
        model(ids, cache=transformers.DynamicCache())
    with pytest.raises(ValueError, match="input_ids"):
        model.model()
    with pytest.raises(ValueError, match="num_layers"):
        EACache(0)
