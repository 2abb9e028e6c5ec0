"""Configuration of the Gated DeltaNet family (model_type "gated_deltanet")."""
from __future__ import annotations

from fla.models.configuration_base import FLAConfig


class GatedDeltaNetConfig(FLAConfig):
    """The mixer's fields; the shared backbone fields (sizes, vocab, norms, losses, hybrid `attn`) are in FLAConfig."""

    model_type = "gated_deltanet"

    def __init__(
        self,
        head_dim: int = 256,
        num_heads: int = 6,
        expand_v: float = 2.0,
        use_gate: bool = True,
        use_short_conv: bool = True,
        conv_size: int = 4,
        allow_neg_eigval: bool = False,
        **kwargs,
    ):
        self.head_dim = head_dim
        self.num_heads = num_heads
        self.expand_v = expand_v
        self.use_gate = use_gate
        self.use_short_conv = use_short_conv
        self.conv_size = conv_size
        self.allow_neg_eigval = allow_neg_eigval
        super().__init__(**kwargs)
