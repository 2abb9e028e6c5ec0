"""Configuration of the DeltaNet (delta-rule linear attention) family (model_type "delta_net")."""
from __future__ import annotations

from fla.models.configuration_base import FLAConfig, check_choice


class DeltaNetConfig(FLAConfig):
    """The mixer's fields (the peer's names and defaults); the shared backbone fields are in FLAConfig.

    Args:
        expand_k / expand_v, num_heads: key and value widths as multiples of hidden_size, heads
        use_gate: o = RMSNorm(o) * swish(W_g x) instead of RMSNorm(o)
        use_short_conv / conv_size: causal depthwise convolutions on q, k, v (SiLU on v always, on q and k when
            qk_activation is "silu")
        allow_neg_eigval: beta in (0, 2) instead of (0, 1)
        use_beta: learned per-token writing strength (else beta = 1)
        qk_activation: "silu", "relu", "elu" (elu + 1) or "identity" on q and k
        qk_norm: "l2" (in the kernel) or "sum" (divide by the L1 norm)
        attn_mode: the peer's kernel choice ("chunk", "fused_recurrent"): only checked here
        use_output_norm: in the peer's config, read by no part of its model (the output norm is always there);
            accepted, with no effect
    """

    model_type = "delta_net"
    attn_modes = ("chunk", "fused_recurrent")
    peer_ignored = {"use_output_norm": True}

    def __init__(
        self,
        attn_mode: str = "chunk",
        expand_k: float = 1.0,
        expand_v: float = 1.0,
        use_gate: bool = False,
        use_short_conv: bool = True,
        allow_neg_eigval: bool = False,
        conv_size: int = 4,
        use_beta: bool = True,
        use_output_norm: bool = True,
        num_heads: int = 16,
        qk_norm: str = "l2",
        qk_activation: str = "silu",
        **kwargs,
    ):
        check_choice("attn_mode", attn_mode, self.attn_modes)
        check_choice("qk_norm", qk_norm, ("l2", "sum"))
        check_choice("qk_activation", qk_activation, ("silu", "relu", "elu", "identity"))
        self.attn_mode = attn_mode
        self.expand_k = expand_k
        self.expand_v = expand_v
        self.use_gate = use_gate
        self.use_short_conv = use_short_conv
        self.allow_neg_eigval = allow_neg_eigval
        self.conv_size = conv_size
        self.use_beta = use_beta
        self.use_output_norm = use_output_norm
        self.num_heads = num_heads
        self.qk_norm = qk_norm
        self.qk_activation = qk_activation
        super().__init__(**kwargs)
