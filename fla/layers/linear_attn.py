"""Linear attention (Katharopoulos et al., 2020, "Transformers are RNNs").

S_t = S_{t-1} + phi(k_t)^T v_t,   o_t = phi(q_t) S_t * scale
with a feature map phi (by default the peer library's: the elementwise product of two learned linear maps) and, in
place of the paper's normalizer phi(q_t) sum_s phi(k_s) (still available), a per-head RMSNorm on the output
(numerically safer, as later work found).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from fla.layers.feature_maps import LEARNED_FEATURE_MAPS, LINEAR_ATTN_FEATURE_MAPS, feature_dim
from fla.layers.utils import RecurrentStep, recurrent_flops_per_token, repeat_kv, split_heads
from fla.modules import RMSNorm
from fla.ops.linear_attn import chunk_linear_attn, fused_recurrent_linear_attn

class LinearAttention(nn.Module):
    """Args:
        hidden_size: model width D
        expand_k / expand_v: key and value widths as multiples of D
        num_heads: query heads H
        num_kv_heads: key/value heads, dividing H (grouped); default H
        feature_map: phi, a name of `fla.layers.feature_maps.LINEAR_ATTN_FEATURE_MAPS` ("elementwise_product",
            "hedgehog", "t2r", "dpfp", "elu" (elu + 1), "relu", "silu", "identity"), applied per head to q and k
        tie_feature_map_qk: one learned phi for q and k (its parameters live under feature_map_q only)
        norm_q / norm_k: q / (sum q + 1e-4) (k likewise) after phi
        do_feature_map_norm: the normalized form o_t = q_t S_t / (q_t z_t), z_t = sum_{s <= t} k_s
        output_norm: "rmsnorm" (per head) or "identity"
        elementwise_affine: a learned weight in that RMSNorm
    The cached state is [B, H, K', V] (K' the width of phi), and with do_feature_map_norm the pair
    ([B, H, K', V], z [B, 1, H, K']), as the peer library stores it.
    """

    supports_cp = True  # cp_context reaches its op and its short convolutions

    def __init__(
        self,
        hidden_size: int = 1024,
        expand_k: float = 1.0,
        expand_v: float = 1.0,
        num_heads: int = 8,
        feature_map: str = "elementwise_product",
        output_norm: str = "rmsnorm",
        norm_eps: float = 1e-6,
        chunk_size: int = 64,
        layer_idx: int | None = None,
        *,
        num_kv_heads: int | None = None,
        tie_feature_map_qk: bool = False,
        norm_q: bool = False,
        norm_k: bool = False,
        do_feature_map_norm: bool = False,
        elementwise_affine: bool = True,
    ):
        super().__init__()
        if feature_map not in LINEAR_ATTN_FEATURE_MAPS:
            raise ValueError(f"feature_map must be one of {sorted(LINEAR_ATTN_FEATURE_MAPS)} (got {feature_map!r})")
        if output_norm not in ("rmsnorm", "identity"):
            raise ValueError(f"output_norm must be 'rmsnorm' or 'identity' (got {output_norm!r})")
        self.hidden_size, self.num_heads = hidden_size, num_heads
        self.key_dim, self.value_dim = int(hidden_size * expand_k), int(hidden_size * expand_v)
        self.num_kv_heads = num_kv_heads or num_heads
        if self.key_dim % num_heads or self.value_dim % num_heads:
            raise ValueError(
                f"key_dim ({self.key_dim}) and value_dim ({self.value_dim}) must be divisible by "
                f"num_heads ({num_heads})"
            )
        if num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
        self.head_k_dim, self.head_v_dim = self.key_dim // num_heads, self.value_dim // num_heads
        self.num_kv_groups = num_heads // self.num_kv_heads
        self.feature_map_name = feature_map
        self.norm_q, self.norm_k, self.do_feature_map_norm = norm_q, norm_k, do_feature_map_norm
        self.chunk_size = chunk_size
        self.layer_idx = layer_idx

        build = LINEAR_ATTN_FEATURE_MAPS[feature_map]
        self.feature_map_q = build(self.head_k_dim)
        if tie_feature_map_qk and feature_map in LEARNED_FEATURE_MAPS:
            # not registered a second time: its parameters are saved once, under feature_map_q
            object.__setattr__(self, "feature_map_k", self.feature_map_q)
        else:
            self.feature_map_k = build(self.head_k_dim)
        self.q_proj = nn.Linear(hidden_size, self.key_dim, bias=False)
        self.k_proj = nn.Linear(hidden_size, self.head_k_dim * self.num_kv_heads, bias=False)
        self.v_proj = nn.Linear(hidden_size, self.head_v_dim * self.num_kv_heads, bias=False)
        if output_norm == "rmsnorm":
            self.norm = RMSNorm(self.head_v_dim, elementwise_affine=elementwise_affine, eps=norm_eps)
        else:
            self.norm = nn.Identity()
        self.o_proj = nn.Linear(self.value_dim, hidden_size, bias=False)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values=None,
        use_cache: bool = False,
        cu_seqlens: torch.Tensor | None = None,
        cp_context=None,
        **kwargs,
    ) -> tuple[torch.Tensor, None, object]:
        step = RecurrentStep(self, hidden_states, attention_mask, past_key_values, use_cache, cu_seqlens, cp_context)
        x = step.x
        H, H_kv, K, V = self.num_heads, self.num_kv_heads, self.head_k_dim, self.head_v_dim
        q = self.feature_map_q(split_heads(self.q_proj(x), H, K))
        k = self.feature_map_k(repeat_kv(split_heads(self.k_proj(x), H_kv, K), self.num_kv_groups))
        v = repeat_kv(split_heads(self.v_proj(x), H_kv, V), self.num_kv_groups)
        if self.norm_q:
            q = q / (q.sum(-1, keepdim=True) + 1e-4)
        if self.norm_k:
            k = k / (k.sum(-1, keepdim=True) + 1e-4)
        state = step.initial_state
        if self.do_feature_map_norm and state is not None:  # the peer's pair (S, z) -> our [S | z]
            state = torch.cat([state[0], state[1][:, 0, :, :, None]], -1)
        op = fused_recurrent_linear_attn if step.mode == "fused_recurrent" else chunk_linear_attn
        o, final_state = op(q.contiguous(), k.contiguous(), v, initial_state=state,
                            output_final_state=step.use_cache, normalize=self.do_feature_map_norm,
                            cu_seqlens=step.cu_seqlens, **step.cp_kwargs)
        if self.do_feature_map_norm and final_state is not None:
            final_state = (final_state[..., :V], final_state[..., V][:, None])
        o = self.o_proj(self.norm(o).reshape(*o.shape[:2], self.value_dim))
        return step.finish(o, final_state), None, past_key_values

    def flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token of the chunked op (see `recurrent_flops_per_token`)."""
        return recurrent_flops_per_token(self.num_heads, feature_dim(self.feature_map_name, self.head_k_dim),
                                         self.head_v_dim, self.chunk_size)
