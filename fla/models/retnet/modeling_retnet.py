"""RetNet (multi-scale retention): the shared backbone with its mixer."""
from __future__ import annotations

import torch.nn as nn

from fla.layers import MultiScaleRetention
from fla.models.retnet.configuration_retnet import RetNetConfig
from fla.models.modeling_base import FLAForCausalLM, FLAModel


class RetNetModel(FLAModel):
    config_class = RetNetConfig

    @staticmethod
    def build_mixer(config: RetNetConfig, layer_idx: int) -> nn.Module:
        return MultiScaleRetention(
            hidden_size=config.hidden_size,
            expand_k=config.expand_k,
            expand_v=config.expand_v,
            num_heads=config.num_heads,
            use_output_gate=config.use_output_gate,
            gate_fn=config.output_gate_fn,
            rope_theta=config.rope_theta,
            norm_eps=config.norm_eps,
            layer_idx=layer_idx,
            num_kv_heads=config.num_kv_heads,
            feature_map=config.feature_map,
            elementwise_affine=config.elementwise_affine,
            fuse_norm=config.fuse_norm,
        )


class RetNetForCausalLM(FLAForCausalLM):
    config_class = RetNetConfig
    base_model_class = RetNetModel
