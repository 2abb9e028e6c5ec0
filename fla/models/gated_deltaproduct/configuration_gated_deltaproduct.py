"""Configuration of the Gated DeltaProduct family (model_type "gated_deltaproduct")."""
from __future__ import annotations

from fla.models.configuration_base import FLAConfig, check_choice


class GatedDeltaProductConfig(FLAConfig):
    """The mixer's fields (the peer's names and defaults; note that its config defaults differ from its layer's:
    no forget gate, no negative eigenvalues, one Householder step); the shared backbone fields are in FLAConfig.

    Args:
        head_dim, num_heads: key head width K and heads H; expand_v: value head width as a multiple of head_dim
        use_output_gate: gated output norm RMSNorm(o) * swish(W_g x) (else plain RMSNorm)
        use_short_conv / conv_size: causal depthwise SiLU convolutions on q, k, v
        use_forget_gate: the Mamba-2 style decay per head and token (Gated DeltaProduct; else DeltaProduct)
        allow_neg_eigval: beta in (0, 2) instead of (0, 1)
        num_householder: delta-rule (Householder) steps per token
        attn_mode: the peer's kernel choice ("chunk", "fused_recurrent"): only checked here
    """

    model_type = "gated_deltaproduct"
    attn_modes = ("chunk", "fused_recurrent")

    def __init__(
        self,
        attn_mode: str = "chunk",
        conv_size: int = 4,
        head_dim: int = 256,
        num_heads: int = 6,
        expand_v: float = 2.0,
        use_output_gate: bool = True,
        use_short_conv: bool = True,
        num_hidden_layers: int = 21,
        use_forget_gate: bool = False,
        allow_neg_eigval: bool = False,
        num_householder: int = 1,
        **kwargs,
    ):
        check_choice("attn_mode", attn_mode, self.attn_modes)
        if isinstance(num_householder, bool) or not isinstance(num_householder, int) or num_householder < 1:
            raise ValueError(f"num_householder must be a positive int (got {num_householder!r})")
        self.attn_mode = attn_mode
        self.conv_size = conv_size
        self.head_dim = head_dim
        self.num_heads = num_heads
        self.expand_v = expand_v
        self.use_output_gate = use_output_gate
        self.use_short_conv = use_short_conv
        self.use_forget_gate = use_forget_gate
        self.allow_neg_eigval = allow_neg_eigval
        self.num_householder = num_householder
        super().__init__(num_hidden_layers=num_hidden_layers, **kwargs)
