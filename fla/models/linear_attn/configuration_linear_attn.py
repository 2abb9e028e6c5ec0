"""Configuration of the Linear attention (Katharopoulos et al.) family (model_type "linear_attn")."""
from __future__ import annotations

from fla.models.configuration_base import FLAConfig


class LinearAttentionConfig(FLAConfig):
    """The mixer's fields; the shared backbone fields (sizes, vocab, norms, losses, hybrid `attn`) are in FLAConfig."""

    model_type = "linear_attn"

    def __init__(
        self,
        expand_k: float = 1.0,
        expand_v: float = 1.0,
        num_heads: int = 8,
        feature_map: str = "elu",
        output_norm: str = "rmsnorm",
        **kwargs,
    ):
        self.expand_k = expand_k
        self.expand_v = expand_v
        self.num_heads = num_heads
        self.feature_map = feature_map
        self.output_norm = output_norm
        super().__init__(**kwargs)
