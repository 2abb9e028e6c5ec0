"""Configuration of the HGRN family (model_type "hgrn")."""
from __future__ import annotations

from fla.models.configuration_base import FLAConfig, check_choice


class HGRNConfig(FLAConfig):
    """The mixer's fields (the peer's names and defaults); the shared backbone fields are in FLAConfig.

    Args:
        expand_ratio: recurrence width as a multiple of hidden_size
        use_short_conv / conv_size: causal depthwise convolutions on the input and forget projections
        use_lower_bound: per-layer lower bounds of the forget gate (a learned [layers, width] table, softmax over
            layers and cumulated, so the first layer's bound is 0 and deeper layers forget less)
        elementwise_affine: a learned weight in the output RMSNorm
        attn_mode: the peer's kernel choice ("chunk", "fused_recurrent"): only checked here
    """

    model_type = "hgrn"
    attn_modes = ("chunk", "fused_recurrent")

    def __init__(
        self,
        attn_mode: str = "fused_recurrent",
        num_hidden_layers: int = 24,
        expand_ratio: int | None = 1,
        use_short_conv: bool = False,
        conv_size: int = 4,
        use_lower_bound: bool = True,
        elementwise_affine: bool | None = True,
        **kwargs,
    ):
        check_choice("attn_mode", attn_mode, self.attn_modes)
        self.attn_mode = attn_mode
        self.expand_ratio = expand_ratio
        self.use_short_conv = use_short_conv
        self.conv_size = conv_size
        self.use_lower_bound = use_lower_bound
        self.elementwise_affine = elementwise_affine
        super().__init__(num_hidden_layers=num_hidden_layers, **kwargs)
