"""Configuration of the Kimi Delta Attention family (model_type "kda")."""
from __future__ import annotations

from fla.models.configuration_base import FLAConfig, check_choice


class KDAConfig(FLAConfig):
    """The mixer's fields (the peer's names and defaults); the shared backbone fields are in FLAConfig.

    Args:
        attn_mode: "chunk" or "fused_recurrent" (the kernel for long inference calls; training uses chunk)
        expand_v: value head width as a multiple of head_dim
        use_short_conv / conv_size: causal depthwise SiLU convolutions on q, k, v
        allow_neg_eigval: beta in (0, 2) instead of (0, 1)
        safe_gate / lower_bound: the peer's bounded gate; not supported (an error when set)
        head_dim, num_heads: key head width K and query/key heads H
        num_v_heads: value heads, a multiple of num_heads (grouped values); default num_heads
    """

    model_type = "kda"
    attn_modes = ("chunk", "fused_recurrent")

    def __init__(
        self,
        attn_mode: str = "chunk",
        hidden_size: int = 2048,
        expand_v: float = 1.0,
        use_short_conv: bool = True,
        allow_neg_eigval: bool = False,
        safe_gate: bool = False,
        lower_bound: float | None = None,
        conv_size: int = 4,
        head_dim: int = 128,
        num_heads: int = 16,
        num_v_heads: int | None = None,
        num_hidden_layers: int = 24,
        **kwargs,
    ):
        check_choice("attn_mode", attn_mode, self.attn_modes)
        if safe_gate or lower_bound is not None:
            raise ValueError("safe_gate / lower_bound (the peer's sigmoid-bounded KDA gate) are not supported by "
                             "fla; leave them at False / None")
        if num_v_heads is not None and (num_v_heads < num_heads or num_v_heads % num_heads):
            raise ValueError(f"num_v_heads={num_v_heads} must be a multiple of num_heads={num_heads} (each group "
                             "of value heads shares one query/key head)")
        self.attn_mode = attn_mode
        self.expand_v = expand_v
        self.use_short_conv = use_short_conv
        self.allow_neg_eigval = allow_neg_eigval
        self.safe_gate = safe_gate
        self.lower_bound = lower_bound
        self.conv_size = conv_size
        self.head_dim = head_dim
        self.num_heads = num_heads
        self.num_v_heads = num_v_heads
        super().__init__(hidden_size=hidden_size, num_hidden_layers=num_hidden_layers, **kwargs)
