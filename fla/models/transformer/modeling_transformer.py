"""The softmax-attention Transformer (Llama-style): the shared backbone with Attention as its mixer."""
from __future__ import annotations

import torch.nn as nn

from fla.models.modeling_base import FLAForCausalLM, FLAModel, build_attention
from fla.models.transformer.configuration_transformer import TransformerConfig


class TransformerModel(FLAModel):
    config_class = TransformerConfig

    @staticmethod
    def build_mixer(config: TransformerConfig, layer_idx: int) -> nn.Module:
        return build_attention(config, layer_idx, {"num_heads": config.num_heads, "num_kv_heads": config.num_kv_heads,
                                                 "qkv_bias": config.qkv_bias, "qk_norm": config.qk_norm,
                                                 "window_size": config.window_size, "rope_theta": config.rope_theta})


class TransformerForCausalLM(FLAForCausalLM):
    config_class = TransformerConfig
    base_model_class = TransformerModel
