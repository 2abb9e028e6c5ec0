"""Configuration of the softmax-attention Transformer family (Llama-style: RoPE, RMSNorm, SwiGLU; model_type
"transformer")."""
from __future__ import annotations

from fla.models.configuration_base import FLAConfig


class TransformerConfig(FLAConfig):
    """The mixer's fields; the shared backbone fields (sizes, vocab, norms, losses, hybrid `attn`) are in FLAConfig."""

    model_type = "transformer"

    def __init__(
        self,
        num_heads: int = 32,
        num_kv_heads: int | None = None,
        qkv_bias: bool = False,
        qk_norm: bool = False,
        window_size: int | None = None,
        rope_theta: float = 10000.0,
        **kwargs,
    ):
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.qkv_bias = qkv_bias
        self.qk_norm = qk_norm
        self.window_size = window_size
        self.rope_theta = rope_theta
        super().__init__(**kwargs)
