"""Gated DeltaProduct: the shared backbone with its mixer."""
from __future__ import annotations

import torch.nn as nn

from fla.layers.gated_deltaproduct import GatedDeltaProduct
from fla.models.gated_deltaproduct.configuration_gated_deltaproduct import GatedDeltaProductConfig
from fla.models.modeling_base import FLAForCausalLM, FLAModel


class GatedDeltaProductModel(FLAModel):
    config_class = GatedDeltaProductConfig

    @staticmethod
    def build_mixer(config: GatedDeltaProductConfig, layer_idx: int) -> nn.Module:
        return GatedDeltaProduct(
            mode=config.attn_mode,
            hidden_size=config.hidden_size,
            expand_v=config.expand_v,
            head_dim=config.head_dim,
            num_heads=config.num_heads,
            use_output_gate=config.use_output_gate,
            use_forget_gate=config.use_forget_gate,
            use_short_conv=config.use_short_conv,
            conv_size=config.conv_size,
            norm_eps=config.norm_eps,
            allow_neg_eigval=config.allow_neg_eigval,
            num_householder=config.num_householder,
            layer_idx=layer_idx,
        )


class GatedDeltaProductForCausalLM(FLAForCausalLM):
    config_class = GatedDeltaProductConfig
    base_model_class = GatedDeltaProductModel
