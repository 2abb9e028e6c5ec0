"""Linear attention (Katharopoulos et al.): the shared backbone with its mixer."""
from __future__ import annotations

import torch.nn as nn

from fla.layers import LinearAttention
from fla.models.linear_attn.configuration_linear_attn import LinearAttentionConfig
from fla.models.modeling_base import FLAForCausalLM, FLAModel


class LinearAttentionModel(FLAModel):
    config_class = LinearAttentionConfig

    @staticmethod
    def build_mixer(config: LinearAttentionConfig, layer_idx: int) -> nn.Module:
        return LinearAttention(
            hidden_size=config.hidden_size,
            expand_k=config.expand_k,
            expand_v=config.expand_v,
            num_heads=config.num_heads,
            feature_map=config.feature_map,
            output_norm=config.output_norm,
            norm_eps=config.norm_eps,
            layer_idx=layer_idx,
            num_kv_heads=config.num_kv_heads,
            tie_feature_map_qk=config.tie_feature_map_qk,
            norm_q=config.norm_q,
            norm_k=config.norm_k,
            do_feature_map_norm=config.norm_feature_map,
            elementwise_affine=config.elementwise_affine,
        )


class LinearAttentionForCausalLM(FLAForCausalLM):
    config_class = LinearAttentionConfig
    base_model_class = LinearAttentionModel
