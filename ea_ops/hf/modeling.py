"""``EAModel`` and ``EAForCausalLM``: decoder-only transformers models whose attention is EA-t, with the O(t D)
state as their cache (``EACache``), so that ``generate`` costs the same per token at any context length."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from ..nn import ElementwiseAttention
from .cache import EACache
from .configuration import EAConfig


class EAMLP(nn.Module):
    """SwiGLU: ``down(act(gate(x)) * up(x))``, ``[B, T, C] -> [B, T, C]``."""

    def __init__(self, config: EAConfig) -> None:
        super().__init__()
        C, F = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(C, F, bias=False)
        self.up_proj = nn.Linear(C, F, bias=False)
        self.down_proj = nn.Linear(F, C, bias=False)
        self.act = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class EABlock(nn.Module):
    """Pre-norm block: ``x + attn(norm(x))``, then ``+ mlp(norm(.))``."""

    def __init__(self, config: EAConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.attn_norm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.attn = ElementwiseAttention(
            config.hidden_size, config.num_attention_heads, config.num_key_value_heads, order=config.ea_order,
            qk_norm=config.ea_qk_norm, scale=config.ea_scale, backend=config.ea_backend, bias=config.attention_bias,
            head_dim=config.head_dim, error_budget=config.ea_error_budget, norm_eps=config.rms_norm_eps,
            layer_idx=layer_idx)
        self.mlp_norm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = EAMLP(config)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None, cache: EACache | None,
                use_cache: bool) -> torch.Tensor:
        state = cache.get_state(self.layer_idx) if cache is not None else None
        h, new = self.attn(self.attn_norm(x), state=state, attention_mask=attention_mask, use_cache=use_cache)
        if use_cache and cache is not None:
            cache.update(new, self.layer_idx, x.shape[1])
        x = x + h
        return x + self.mlp(self.mlp_norm(x))


class EAPreTrainedModel(PreTrainedModel):
    config: EAConfig
    config_class = EAConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = False
    _no_split_modules = ["EABlock"]
    _supports_sdpa = False
    _supports_flash_attn = False
    _can_compile_fullgraph = False  # the cache replaces its states each step

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, ElementwiseAttention):
            module.reset_accuracy_tracking()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the model makes its own EACache (a DynamicCache of keys and values would be wrong here)


def _check_mask(attention_mask: torch.Tensor | None, B: int, T: int) -> torch.Tensor | None:
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 2 or attention_mask.shape[0] != B \
            or attention_mask.shape[1] < T:
        raise ValueError(f"attention_mask must be a 2D [batch, past + seq_len] padding mask with batch {B} and at "
                         f"least {T} columns, got {getattr(attention_mask, 'shape', type(attention_mask).__name__)}")
    return attention_mask


class EAModel(EAPreTrainedModel):
    """Embeddings, ``num_hidden_layers`` EA blocks, a final RMSNorm: ``input_ids [B, T] -> hidden [B, T, C]``.

    ``attention_mask`` is the 2D padding mask ``[B, past + T]`` (1 = token; left or right padding), handled
    exactly by every layer. With ``use_cache`` the output carries an ``EACache`` (made here when ``cache`` is None)
    holding each layer's ``EAState``; pass it back as ``cache`` to continue. No positional encoding:
    ``position_ids`` are accepted and ignored (docs/models.md, "Positions").
    """

    def __init__(self, config: EAConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList([EABlock(config, i) for i in range(config.num_hidden_layers)])
        self.norm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: EACache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        past_key_values: EACache | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids or inputs_embeds")
        if cache is None:
            cache = past_key_values
        if cache is not None and not isinstance(cache, EACache):
            raise TypeError(f"cache must be an ea_ops.hf.EACache, got {type(cache).__name__}")
        use_cache = self.config.use_cache if use_cache is None else use_cache
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        B, T = x.shape[:2]
        attention_mask = _check_mask(attention_mask, B, T)
        if attention_mask is not None and not torch.compiler.is_compiling() and bool(attention_mask.bool().all()):
            attention_mask = None  # no padding: every layer takes the plain form (checked once, not per layer)
        if use_cache and cache is None:
            cache = EACache(self.config.num_hidden_layers)
        for layer in self.layers:
            x = layer(x, attention_mask, cache, bool(use_cache))
        return BaseModelOutputWithPast(last_hidden_state=self.norm(x), cache=cache if use_cache else None)


class EAForCausalLM(EAPreTrainedModel, GenerationMixin):
    """``EAModel`` with a language-model head: ``input_ids [B, T] -> logits [B, T, vocab]`` (and the loss with
    ``labels``). ``generate`` decodes from the ``EACache``: one recurrent step per layer per token."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: EAConfig) -> None:
        super().__init__(config)
        self.model = EAModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: EACache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        past_key_values: EACache | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, cache=cache, inputs_embeds=inputs_embeds,
                         use_cache=use_cache, past_key_values=past_key_values)
        h = out.last_hidden_state
        if isinstance(logits_to_keep, int):
            h = h[:, -logits_to_keep:] if logits_to_keep > 0 else h
        else:
            h = h[:, logits_to_keep]
        logits = self.lm_head(h)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=out.cache)
