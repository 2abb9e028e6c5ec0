"""Gated DeltaNet: the shared backbone with its mixer."""
from __future__ import annotations

import torch.nn as nn

from fla.layers import GatedDeltaNet
from fla.models.gated_deltanet.configuration_gated_deltanet import GatedDeltaNetConfig
from fla.models.modeling_base import FLAForCausalLM, FLAModel


class GatedDeltaNetModel(FLAModel):
    config_class = GatedDeltaNetConfig

    @staticmethod
    def build_mixer(config: GatedDeltaNetConfig, layer_idx: int) -> nn.Module:
        return GatedDeltaNet(
            hidden_size=config.hidden_size,
            head_dim=config.head_dim,
            num_heads=config.num_heads,
            expand_v=config.expand_v,
            use_gate=config.use_gate,
            use_short_conv=config.use_short_conv,
            conv_size=config.conv_size,
            allow_neg_eigval=config.allow_neg_eigval,
            norm_eps=config.norm_eps,
            layer_idx=layer_idx,
            num_v_heads=config.num_v_heads,
            output_gate_activation=config.output_gate_activation,
        )


class GatedDeltaNetForCausalLM(FLAForCausalLM):
    config_class = GatedDeltaNetConfig
    base_model_class = GatedDeltaNetModel
