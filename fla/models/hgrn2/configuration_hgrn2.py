"""Configuration of the HGRN-2 family (model_type "hgrn2")."""
from __future__ import annotations

from fla.models.configuration_base import FLAConfig, check_choice


class HGRN2Config(FLAConfig):
    """The mixer's fields (the peer's names and defaults); the shared backbone fields are in FLAConfig.

    Args:
        num_heads / expand_ratio: heads and the forget (state) width per head; one gives the other
            (num_heads = hidden_size // expand_ratio), at least one is needed
        use_short_conv / conv_size: causal depthwise convolutions on q, f, i
        use_lower_bound: per-layer lower bounds of the forget gate (see HGRNConfig)
        elementwise_affine: a learned weight in the output RMSNorm
        attn_mode: the peer's kernel choice ("chunk", "fused_recurrent", "fused_chunk"): only checked here
    """

    model_type = "hgrn2"
    attn_modes = ("chunk", "fused_recurrent", "fused_chunk")

    def __init__(
        self,
        hidden_size: int = 2048,
        num_hidden_layers: int = 24,
        attn_mode: str = "chunk",
        num_heads: int | None = None,
        expand_ratio: int | None = 128,
        use_short_conv: bool = False,
        conv_size: int = 4,
        use_lower_bound: bool = True,
        elementwise_affine: bool | None = True,
        **kwargs,
    ):
        check_choice("attn_mode", attn_mode, self.attn_modes)
        if expand_ratio is None and num_heads is not None:
            expand_ratio = hidden_size // num_heads
        elif expand_ratio is not None and num_heads is None:
            num_heads = hidden_size // expand_ratio
        elif expand_ratio is None and num_heads is None:
            raise ValueError("HGRN2Config needs expand_ratio (the forget width per head) or num_heads")
        self.attn_mode = attn_mode
        self.num_heads = num_heads
        self.expand_ratio = expand_ratio
        self.use_short_conv = use_short_conv
        self.conv_size = conv_size
        self.use_lower_bound = use_lower_bound
        self.elementwise_affine = elementwise_affine
        super().__init__(hidden_size=hidden_size, num_hidden_layers=num_hidden_layers, **kwargs)
