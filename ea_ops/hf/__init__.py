"""transformers models with EA attention (extra ``hf``): ``EAConfig`` (model_type ``"ea"``), ``EAModel``,
``EAForCausalLM`` and ``EACache``, registered with ``AutoConfig``, ``AutoModel`` and ``AutoModelForCausalLM`` on
import (docs/models.md)."""

from __future__ import annotations

try:
    import transformers  # noqa: F401
except ImportError as exc:  # the extra is missing: say which one to install
    raise ImportError("ea_ops.hf needs the 'hf' extra: pip install 'ea-ops[hf]' (transformers >= 5.24)") from exc

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .cache import EACache, EACacheLayer
from .configuration import EAConfig
from .modeling import EAForCausalLM, EAModel, EAPreTrainedModel

AutoConfig.register(EAConfig.model_type, EAConfig, exist_ok=True)
AutoModel.register(EAConfig, EAModel, exist_ok=True)
AutoModelForCausalLM.register(EAConfig, EAForCausalLM, exist_ok=True)

__all__ = ["EACache", "EACacheLayer", "EAConfig", "EAForCausalLM", "EAModel", "EAPreTrainedModel"]
