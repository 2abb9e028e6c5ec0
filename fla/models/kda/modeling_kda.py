"""Kimi Delta Attention: the shared backbone with its mixer."""
from __future__ import annotations

import torch.nn as nn

from fla.layers.kda import KimiDeltaAttention
from fla.models.kda.configuration_kda import KDAConfig
from fla.models.modeling_base import FLAForCausalLM, FLAModel


class KDAModel(FLAModel):
    config_class = KDAConfig

    @staticmethod
    def build_mixer(config: KDAConfig, layer_idx: int) -> nn.Module:
        return KimiDeltaAttention(
            hidden_size=config.hidden_size,
            expand_v=config.expand_v,
            head_dim=config.head_dim,
            num_heads=config.num_heads,
            num_v_heads=config.num_v_heads,
            mode=config.attn_mode,
            use_short_conv=config.use_short_conv,
            allow_neg_eigval=config.allow_neg_eigval,
            conv_size=config.conv_size,
            layer_idx=layer_idx,
            norm_eps=config.norm_eps,
        )


class KDAForCausalLM(FLAForCausalLM):
    config_class = KDAConfig
    base_model_class = KDAModel
