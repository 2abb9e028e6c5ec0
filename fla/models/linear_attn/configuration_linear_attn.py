"""Configuration of the Linear attention (Katharopoulos et al.) family (model_type "linear_attn")."""
from __future__ import annotations

from fla.layers.feature_maps import LINEAR_ATTN_FEATURE_MAPS
from fla.models.configuration_base import FLAConfig, check_choice


class LinearAttentionConfig(FLAConfig):
    """The mixer's fields (the peer's names and defaults); the shared backbone fields are in FLAConfig.

    Args:
        expand_k / expand_v, num_heads: key and value widths as multiples of hidden_size, heads
        num_kv_heads: key/value heads (grouped), default num_heads
        feature_map: phi applied to q and k: "elementwise_product" (two learned linear maps multiplied, the peer's
            default), "hedgehog", "t2r", "dpfp", "elu" (elu + 1), "relu", "identity"; "silu" is ours
        tie_feature_map_qk: one learned feature map for q and k (stored once, under feature_map_q)
        norm_q / norm_k: divide q (k) by its sum over the head (+ 1e-4) after the feature map
        norm_feature_map: the normalized form o_t = q_t S_t / (q_t z_t), z_t the running sum of keys
        elementwise_affine: a learned weight in the output RMSNorm
        attn_mode: the peer's kernel choice ("chunk", "fused_chunk", "fused_recurrent"): only checked here
        output_norm: ours, "rmsnorm" (what the peer's model always uses) or "identity"
    """

    model_type = "linear_attn"
    attn_modes = ("chunk", "fused_chunk", "fused_recurrent")
    peer_unknown = {"output_norm": "rmsnorm"}

    def __init__(
        self,
        attn_mode: str = "fused_chunk",
        expand_k: float = 1.0,
        expand_v: float = 1.0,
        num_heads: int = 4,
        num_kv_heads: int | None = None,
        feature_map: str = "elementwise_product",
        tie_feature_map_qk: bool = False,
        norm_q: bool = False,
        norm_k: bool = False,
        norm_feature_map: bool = False,
        elementwise_affine: bool = True,
        output_norm: str = "rmsnorm",
        **kwargs,
    ):
        check_choice("feature_map", feature_map, tuple(LINEAR_ATTN_FEATURE_MAPS))
        check_choice("attn_mode", attn_mode, self.attn_modes)
        check_choice("output_norm", output_norm, ("rmsnorm", "identity"))
        self.attn_mode = attn_mode
        self.expand_k = expand_k
        self.expand_v = expand_v
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.feature_map = feature_map
        self.tie_feature_map_qk = tie_feature_map_qk
        self.norm_q = norm_q
        self.norm_k = norm_k
        self.norm_feature_map = norm_feature_map
        self.elementwise_affine = elementwise_affine
        self.output_norm = output_norm
        super().__init__(**kwargs)

    def peer_mismatches(self) -> list[str]:
        out = super().peer_mismatches()
        if self.feature_map == "silu":
            out.append("feature_map='silu' (its linear attention refuses it)")
        return out
