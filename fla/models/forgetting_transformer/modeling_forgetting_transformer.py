"""The Forgetting Transformer: the shared backbone with ForgettingAttention as its mixer (no rotary: the forget
gate is the positional signal)."""
from __future__ import annotations

import torch.nn as nn

from fla.layers import ForgettingAttention
from fla.models.forgetting_transformer.configuration_forgetting_transformer import ForgettingTransformerConfig
from fla.models.modeling_base import FLAForCausalLM, FLAModel


class ForgettingTransformerModel(FLAModel):
    config_class = ForgettingTransformerConfig

    @staticmethod
    def build_mixer(config: ForgettingTransformerConfig, layer_idx: int) -> nn.Module:
        return ForgettingAttention(
            hidden_size=config.hidden_size,
            num_heads=config.num_heads,
            num_kv_heads=config.num_kv_heads,
            qkv_bias=config.qkv_bias,
            qk_norm=config.qk_norm,
            window_size=config.window_size,
            use_output_gate=config.use_output_gate,
            layer_idx=layer_idx,
        )


class ForgettingTransformerForCausalLM(FLAForCausalLM):
    config_class = ForgettingTransformerConfig
    base_model_class = ForgettingTransformerModel
