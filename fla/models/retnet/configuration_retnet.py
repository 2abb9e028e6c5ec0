"""Configuration of the RetNet (multi-scale retention) family (model_type "retnet")."""
from __future__ import annotations

from fla.layers.feature_maps import ACTIVATIONS
from fla.models.configuration_base import FLAConfig, OutputGateMixin, check_choice


class RetNetConfig(OutputGateMixin, FLAConfig):
    """The mixer's fields (the peer's names and defaults); the shared backbone fields are in FLAConfig.

    Args:
        expand_k / expand_v, num_heads: key and value widths as multiples of hidden_size (paper: 1 and 2), heads
        num_kv_heads: key/value heads (grouped), default num_heads
        feature_map: an activation applied to q and k before rotary, default none
        use_output_gate: o = RMSNorm(o) * act(W_g x), act = gate_fn
        elementwise_affine: a learned weight in the output RMSNorm
        attn_mode: the peer's kernel choice ("chunk", "fused_chunk", "parallel", "fused_recurrent"): the same
            function, only checked here
        use_short_conv / conv_size: in the peer's config, read by no part of its model; accepted, with no effect
        gate_fn: ours, the output gate's activation; None (default) means hidden_act, which the peer uses
        rope_theta: ours, the rotary base (the peer's is 10000)
    """

    model_type = "retnet"
    attn_modes = ("chunk", "fused_chunk", "parallel", "fused_recurrent")
    peer_ignored = {"use_short_conv": False}
    peer_unknown = {"rope_theta": 10000.0}

    def __init__(
        self,
        attn_mode: str = "chunk",
        expand_k: float = 1.0,
        expand_v: float = 2.0,
        hidden_ratio: float | None = 2,
        num_heads: int = 8,
        num_kv_heads: int | None = None,
        feature_map: str | None = None,
        use_short_conv: bool = False,
        conv_size: int = 4,
        use_output_gate: bool = True,
        elementwise_affine: bool = True,
        gate_fn: str | None = None,
        rope_theta: float = 10000.0,
        **kwargs,
    ):
        if feature_map is not None:
            check_choice("feature_map", feature_map, tuple(ACTIVATIONS))
        check_choice("attn_mode", attn_mode, self.attn_modes)
        self.attn_mode = attn_mode
        self.expand_k = expand_k
        self.expand_v = expand_v
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.feature_map = feature_map
        self.use_short_conv = use_short_conv
        self.conv_size = conv_size
        self.use_output_gate = use_output_gate
        self.elementwise_affine = elementwise_affine
        self.gate_fn = gate_fn
        self.rope_theta = rope_theta
        super().__init__(hidden_ratio=hidden_ratio, **kwargs)
