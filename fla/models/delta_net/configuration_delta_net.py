"""Configuration of the DeltaNet (delta-rule linear attention) family (model_type "delta_net")."""
from __future__ import annotations

from fla.models.configuration_base import FLAConfig


class DeltaNetConfig(FLAConfig):
    """The mixer's fields; the shared backbone fields (sizes, vocab, norms, losses, hybrid `attn`) are in FLAConfig."""

    model_type = "delta_net"

    def __init__(
        self,
        expand_k: float = 1.0,
        expand_v: float = 1.0,
        num_heads: int = 4,
        use_beta: bool = True,
        use_short_conv: bool = True,
        conv_size: int = 4,
        use_gate: bool = False,
        allow_neg_eigval: bool = False,
        **kwargs,
    ):
        self.expand_k = expand_k
        self.expand_v = expand_v
        self.num_heads = num_heads
        self.use_beta = use_beta
        self.use_short_conv = use_short_conv
        self.conv_size = conv_size
        self.use_gate = use_gate
        self.allow_neg_eigval = allow_neg_eigval
        super().__init__(**kwargs)
