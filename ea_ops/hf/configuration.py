"""``EAConfig``: the configuration of the EA transformers models (model_type ``"ea"``)."""

from __future__ import annotations

from transformers import PreTrainedConfig


class EAConfig(PreTrainedConfig):
    """A decoder-only language model whose attention is ``ea_ops.nn.ElementwiseAttention`` (pre-norm blocks,
    RMSNorm, SwiGLU MLP, no positional encoding: see docs/models.md for why not RoPE).

    The ``ea_*`` fields are the layer's arguments: ``ea_order`` (even Taylor order), ``ea_qk_norm`` ("rms" or
    None), ``ea_scale`` ("auto" or a float), ``ea_error_budget`` (what "auto" and the accuracy tracker aim at),
    ``ea_backend`` ("auto", "torch", "tvm", "triton"). ``num_key_value_heads`` below ``num_attention_heads``
    gives grouped-query attention. ``intermediate_size=None`` is 8/3 of ``hidden_size`` rounded up to 8.
    """

    model_type = "ea"

    vocab_size: int = 32000
    hidden_size: int = 256
    intermediate_size: int | None = None
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    ea_order: int = 6
    ea_qk_norm: str | None = "rms"
    ea_scale: float | str = "auto"
    ea_error_budget: float = 1e-3
    ea_backend: str = "auto"
    attention_bias: bool = False
    hidden_act: str = "silu"
    rms_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.intermediate_size is None:
            self.intermediate_size = -(-8 * self.hidden_size // 3 // 8) * 8
        super().__post_init__(**kwargs)
