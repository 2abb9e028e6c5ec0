"""Gated Linear Attention: the shared backbone with its mixer."""
from __future__ import annotations

import torch.nn as nn

from fla.layers import GatedLinearAttention
from fla.models.gla.configuration_gla import GLAConfig
from fla.models.modeling_base import FLAForCausalLM, FLAModel


class GLAModel(FLAModel):
    config_class = GLAConfig

    @staticmethod
    def build_mixer(config: GLAConfig, layer_idx: int) -> nn.Module:
        return GatedLinearAttention(
            hidden_size=config.hidden_size,
            expand_k=config.expand_k,
            expand_v=config.expand_v,
            num_heads=config.num_heads,
            use_short_conv=config.use_short_conv,
            conv_size=config.conv_size,
            use_output_gate=config.use_output_gate,
            gate_fn=config.output_gate_fn,
            gate_logit_normalizer=config.gate_logit_normalizer,
            gate_low_rank_dim=config.gate_low_rank_dim,
            clamp_min=config.clamp_min,
            norm_eps=config.norm_eps,
            layer_idx=layer_idx,
            num_kv_heads=config.num_kv_heads,
            feature_map=config.feature_map,
            elementwise_affine=config.elementwise_affine,
            fuse_norm=config.fuse_norm,
        )


class GLAForCausalLM(FLAForCausalLM):
    config_class = GLAConfig
    base_model_class = GLAModel
