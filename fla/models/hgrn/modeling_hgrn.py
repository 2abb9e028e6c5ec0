"""HGRN: the shared backbone with its mixer, and the forget gates' lower bounds across layers.

The model owns `lower_bounds` [layers, width] (zeros at init, the peer's name); each forward turns it into one bound
per layer, softmax over layers then a cumulative sum minus the first entry (so layer 0's bound is 0 and the bounds
grow with depth), and hands layer i its row as `lower_bound`.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from fla.layers.hgrn import HGRNAttention
from fla.models.hgrn.configuration_hgrn import HGRNConfig
from fla.models.modeling_base import FLAForCausalLM, FLAModel


def layer_lower_bounds(lower_bounds: torch.Tensor) -> torch.Tensor:
    """[L, D] learned table -> [L, D] bounds in [0, 1): cumsum(softmax over layers) - its first row."""
    bounds = lower_bounds.softmax(0, dtype=torch.float32)
    return bounds.cumsum(0) - bounds[0]


class LowerBoundMixin:
    """For HGRN and HGRN-2 backbones (before the backbone class in the bases): the `lower_bounds` table, its init,
    and the per-layer inputs the backbone's forward hands each block."""

    def add_lower_bounds(self, config, width: int) -> None:
        if config.use_lower_bound:
            self.lower_bounds = nn.Parameter(torch.zeros(config.num_hidden_layers, width))

    def layer_inputs(self) -> list[dict] | None:
        if not self.config.use_lower_bound:
            return None
        return [{"lower_bound": bound} for bound in layer_lower_bounds(self.lower_bounds)]


class LowerBoundInitMixin:
    """Zeros for the table (the peer's init) when the model is (re)initialized: the generic init skips parameters
    that sit on a model class itself."""

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, LowerBoundMixin) and getattr(module, "lower_bounds", None) is not None:
            module.lower_bounds.zero_()
        super()._init_weights(module)


class HGRNModel(LowerBoundInitMixin, LowerBoundMixin, FLAModel):
    config_class = HGRNConfig

    def __init__(self, config: HGRNConfig):
        super().__init__(config)
        self.add_lower_bounds(config, int(config.hidden_size * config.expand_ratio))

    @staticmethod
    def build_mixer(config: HGRNConfig, layer_idx: int) -> nn.Module:
        return HGRNAttention(
            mode=config.attn_mode,
            hidden_size=config.hidden_size,
            expand_ratio=config.expand_ratio,
            use_short_conv=config.use_short_conv,
            conv_size=config.conv_size,
            elementwise_affine=config.elementwise_affine,
            norm_eps=config.norm_eps,
            layer_idx=layer_idx,
        )


class HGRNForCausalLM(LowerBoundInitMixin, FLAForCausalLM):
    config_class = HGRNConfig
    base_model_class = HGRNModel
