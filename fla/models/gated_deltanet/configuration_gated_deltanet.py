"""Configuration of the Gated DeltaNet family (model_type "gated_deltanet")."""
from __future__ import annotations

from fla.models.configuration_base import FLAConfig, check_choice


class GatedDeltaNetConfig(FLAConfig):
    """The mixer's fields (the peer's names and defaults); the shared backbone fields are in FLAConfig.

    Args:
        head_dim, num_heads: key head width K and query/key heads H
        num_v_heads: value heads, a multiple of num_heads (grouped values: value head j reads q/k head
            j // (num_v_heads / num_heads)); default num_heads
        expand_v: value head width as a multiple of head_dim
        use_gate: gated output norm RMSNorm(o) * act(W_g x), act = output_gate_activation (else plain RMSNorm)
        output_gate_activation: "swish" (alias "silu") or "sigmoid"
        use_short_conv / conv_size: causal depthwise SiLU convolutions on q, k, v
        allow_neg_eigval: beta in (0, 2) instead of (0, 1)
        attn_mode: the peer's kernel choice ("chunk", "fused_recurrent"): only checked here
    """

    model_type = "gated_deltanet"
    attn_modes = ("chunk", "fused_recurrent")

    def __init__(
        self,
        attn_mode: str = "chunk",
        expand_v: float = 2.0,
        use_gate: bool = True,
        use_short_conv: bool = True,
        allow_neg_eigval: bool = False,
        conv_size: int = 4,
        head_dim: int = 256,
        num_heads: int = 6,
        num_v_heads: int | None = None,
        num_hidden_layers: int = 21,
        output_gate_activation: str = "swish",
        **kwargs,
    ):
        check_choice("attn_mode", attn_mode, self.attn_modes)
        check_choice("output_gate_activation", output_gate_activation, ("swish", "silu", "sigmoid"))
        if num_v_heads is not None and (num_v_heads < num_heads or num_v_heads % num_heads):
            raise ValueError(f"num_v_heads={num_v_heads} must be a multiple of num_heads={num_heads} (each group "
                             "of value heads shares one query/key head)")
        self.attn_mode = attn_mode
        self.expand_v = expand_v
        self.use_gate = use_gate
        self.use_short_conv = use_short_conv
        self.allow_neg_eigval = allow_neg_eigval
        self.conv_size = conv_size
        self.head_dim = head_dim
        self.num_heads = num_heads
        self.num_v_heads = num_v_heads
        self.output_gate_activation = output_gate_activation
        super().__init__(num_hidden_layers=num_hidden_layers, **kwargs)
