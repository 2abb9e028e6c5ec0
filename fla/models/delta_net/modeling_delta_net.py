"""DeltaNet (delta-rule linear attention): the shared backbone with its mixer."""
from __future__ import annotations

import torch.nn as nn

from fla.layers import DeltaNet
from fla.models.delta_net.configuration_delta_net import DeltaNetConfig
from fla.models.modeling_base import FLAForCausalLM, FLAModel


class DeltaNetModel(FLAModel):
    config_class = DeltaNetConfig

    @staticmethod
    def build_mixer(config: DeltaNetConfig, layer_idx: int) -> nn.Module:
        return DeltaNet(
            hidden_size=config.hidden_size,
            expand_k=config.expand_k,
            expand_v=config.expand_v,
            num_heads=config.num_heads,
            use_beta=config.use_beta,
            use_short_conv=config.use_short_conv,
            conv_size=config.conv_size,
            use_gate=config.use_gate,
            allow_neg_eigval=config.allow_neg_eigval,
            norm_eps=config.norm_eps,
            layer_idx=layer_idx,
            qk_activation=config.qk_activation,
            qk_norm=config.qk_norm,
        )


class DeltaNetForCausalLM(FLAForCausalLM):
    config_class = DeltaNetConfig
    base_model_class = DeltaNetModel
