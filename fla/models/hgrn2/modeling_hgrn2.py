"""HGRN-2: the shared backbone with its mixer and the forget gates' lower bounds across layers (see HGRN)."""
from __future__ import annotations

import torch.nn as nn

from fla.layers.hgrn2 import HGRN2Attention
from fla.models.hgrn.modeling_hgrn import LowerBoundInitMixin, LowerBoundMixin
from fla.models.hgrn2.configuration_hgrn2 import HGRN2Config
from fla.models.modeling_base import FLAForCausalLM, FLAModel


class HGRN2Model(LowerBoundInitMixin, LowerBoundMixin, FLAModel):
    config_class = HGRN2Config

    def __init__(self, config: HGRN2Config):
        super().__init__(config)
        # the peer's table is [layers, hidden_size]: as wide as the forget gates when expand_ratio * num_heads is
        # hidden_size (its configs); a bound per forget channel is what the layer reads
        self.add_lower_bounds(config, config.num_heads * config.expand_ratio)

    @staticmethod
    def build_mixer(config: HGRN2Config, layer_idx: int) -> nn.Module:
        return HGRN2Attention(
            mode=config.attn_mode,
            hidden_size=config.hidden_size,
            num_heads=config.num_heads,
            expand_ratio=config.expand_ratio,
            use_short_conv=config.use_short_conv,
            conv_size=config.conv_size,
            elementwise_affine=config.elementwise_affine,
            norm_eps=config.norm_eps,
            layer_idx=layer_idx,
        )


class HGRN2ForCausalLM(LowerBoundInitMixin, FLAForCausalLM):
    config_class = HGRN2Config
    base_model_class = HGRN2Model
