"""Configuration of the Gated Linear Attention family (model_type "gla")."""
from __future__ import annotations

from fla.layers.feature_maps import ACTIVATIONS
from fla.models.configuration_base import FLAConfig, OutputGateMixin, check_choice


class GLAConfig(OutputGateMixin, FLAConfig):
    """The mixer's fields (the peer's names and defaults); the shared backbone fields are in FLAConfig.

    Args:
        expand_k / expand_v, num_heads: key and value widths as fractions of hidden_size, query heads
        num_kv_heads: key/value heads (grouped: each serves num_heads / num_kv_heads query heads), default num_heads
        feature_map: an activation applied to q and k ("relu", "swish", ...), default none
        use_short_conv / conv_size: causal depthwise SiLU convolutions on q, k, v
        use_output_gate: o = RMSNorm(o) * act(W_g x), act = gate_fn
        clamp_min: lower clamp of the log forget gate
        elementwise_affine: a learned weight in the output RMSNorm
        attn_mode: the peer's kernel choice ("chunk", "fused_recurrent", "fused_chunk"); the same function, so
            only checked here (the layer picks its kernel by sequence length)
        use_gk / use_gv: read by no part of the peer's model; accepted, with no effect
        gate_fn: ours, the output gate's activation; None (default) means hidden_act, which the peer uses
        gate_logit_normalizer / gate_low_rank_dim: ours (the peer's layer fixes both at 16)
    """

    model_type = "gla"
    attn_modes = ("chunk", "fused_recurrent", "fused_chunk")
    peer_ignored = {"use_gk": True, "use_gv": False}
    peer_unknown = {"gate_logit_normalizer": 16, "gate_low_rank_dim": 16}

    def __init__(
        self,
        expand_k: float = 0.5,
        expand_v: float = 1.0,
        num_heads: int = 4,
        num_kv_heads: int | None = None,
        feature_map: str | None = None,
        attn_mode: str = "chunk",
        use_short_conv: bool = False,
        conv_size: int = 4,
        use_output_gate: bool = True,
        clamp_min: float | None = None,
        elementwise_affine: bool = True,
        use_gk: bool = True,
        use_gv: bool = False,
        gate_fn: str | None = None,
        gate_logit_normalizer: float = 16,
        gate_low_rank_dim: int = 16,
        **kwargs,
    ):
        if feature_map is not None:
            check_choice("feature_map", feature_map, tuple(ACTIVATIONS))
        check_choice("attn_mode", attn_mode, self.attn_modes)
        self.expand_k = expand_k
        self.expand_v = expand_v
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.feature_map = feature_map
        self.attn_mode = attn_mode
        self.use_short_conv = use_short_conv
        self.conv_size = conv_size
        self.use_output_gate = use_output_gate
        self.clamp_min = clamp_min
        self.elementwise_affine = elementwise_affine
        self.use_gk = use_gk
        self.use_gv = use_gv
        self.gate_fn = gate_fn
        self.gate_logit_normalizer = gate_logit_normalizer
        self.gate_low_rank_dim = gate_low_rank_dim
        super().__init__(**kwargs)
