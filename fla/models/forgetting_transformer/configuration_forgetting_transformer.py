"""Configuration of the Forgetting Transformer family (model_type "forgetting_transformer")."""
from __future__ import annotations

from fla.models.configuration_base import FLAConfig


class ForgettingTransformerConfig(FLAConfig):
    """The mixer's fields (the peer's names and defaults); the shared backbone fields are in FLAConfig.

    Args:
        num_heads / num_kv_heads: query heads and key/value heads (grouped-query attention), default num_heads
        qkv_bias: biases on the q/k/v projections
        qk_norm: per-head RMSNorm of q and k
        window_size: attend to at most this many most recent tokens (itself included); None = unlimited (the
            peer applies it to its decoding cache only; here to training and decoding alike)
        use_output_gate: o * sigmoid(W_g x) before the output projection
        elementwise_affine: in the peer's config, read by no part of its model; accepted, with no effect
    """

    model_type = "forgetting_transformer"
    peer_ignored = {"elementwise_affine": True}

    def __init__(
        self,
        num_heads: int = 32,
        num_kv_heads: int | None = None,
        qkv_bias: bool = False,
        qk_norm: bool = False,
        window_size: int | None = None,
        use_output_gate: bool = False,
        elementwise_affine: bool | None = True,
        **kwargs,
    ):
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.qkv_bias = qkv_bias
        self.qk_norm = qk_norm
        self.window_size = window_size
        self.use_output_gate = use_output_gate
        self.elementwise_affine = elementwise_affine
        super().__init__(**kwargs)

    def peer_mismatches(self) -> list[str]:
        out = super().peer_mismatches()
        if self.attn is not None:
            out.append("attn (its Forgetting Transformer has no hybrid layers)")
        return out
