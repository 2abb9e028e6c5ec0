"""Linear attention (Katharopoulos et al., 2020, "Transformers are RNNs").

S_t = S_{t-1} + phi(k_t)^T v_t,   o_t = phi(q_t) S_t * scale
with a positive feature map phi (elu + 1 by default) and, in place of the paper's normalizer
phi(q_t) sum_s phi(k_s), a per-head RMSNorm on the output (numerically safer, as later work found).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from fla.layers.utils import RecurrentStep, recurrent_flops_per_token, split_heads
from fla.modules import RMSNorm
from fla.ops.linear_attn import chunk_linear_attn, fused_recurrent_linear_attn

FEATURE_MAPS = {
    "elu": lambda x: F.elu(x) + 1,
    "relu": F.relu,
    "silu": F.silu,
    "identity": lambda x: x,
}


class LinearAttention(nn.Module):
    """Args:
        hidden_size: model width D
        expand_k / expand_v: key and value widths as multiples of D
        num_heads: heads H
        feature_map: one of "elu" (elu + 1), "relu", "silu", "identity", applied to q and k
        output_norm: "rmsnorm" (per head) or "identity"
    """

    def __init__(
        self,
        hidden_size: int = 1024,
        expand_k: float = 1.0,
        expand_v: float = 1.0,
        num_heads: int = 8,
        feature_map: str = "elu",
        output_norm: str = "rmsnorm",
        norm_eps: float = 1e-6,
        chunk_size: int = 64,
        layer_idx: int | None = None,
    ):
        super().__init__()
        if feature_map not in FEATURE_MAPS:
            raise ValueError(f"feature_map must be one of {sorted(FEATURE_MAPS)} (got {feature_map!r})")
        if output_norm not in ("rmsnorm", "identity"):
            raise ValueError(f"output_norm must be 'rmsnorm' or 'identity' (got {output_norm!r})")
        self.hidden_size, self.num_heads = hidden_size, num_heads
        self.key_dim, self.value_dim = int(hidden_size * expand_k), int(hidden_size * expand_v)
        if self.key_dim % num_heads or self.value_dim % num_heads:
            raise ValueError(
                f"key_dim ({self.key_dim}) and value_dim ({self.value_dim}) must be divisible by "
                f"num_heads ({num_heads})"
            )
        self.head_k_dim, self.head_v_dim = self.key_dim // num_heads, self.value_dim // num_heads
        self.feature_map_name, self.feature_map = feature_map, FEATURE_MAPS[feature_map]
        self.chunk_size = chunk_size
        self.layer_idx = layer_idx

        self.q_proj = nn.Linear(hidden_size, self.key_dim, bias=False)
        self.k_proj = nn.Linear(hidden_size, self.key_dim, bias=False)
        self.v_proj = nn.Linear(hidden_size, self.value_dim, bias=False)
        self.norm = RMSNorm(self.head_v_dim, eps=norm_eps) if output_norm == "rmsnorm" else nn.Identity()
        self.o_proj = nn.Linear(self.value_dim, hidden_size, bias=False)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values=None,
        use_cache: bool = False,
        cu_seqlens: torch.Tensor | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, None, object]:
        step = RecurrentStep(self, hidden_states, attention_mask, past_key_values, use_cache, cu_seqlens)
        x = step.x
        q = self.feature_map(split_heads(self.q_proj(x), self.num_heads, self.head_k_dim))
        k = self.feature_map(split_heads(self.k_proj(x), self.num_heads, self.head_k_dim))
        v = split_heads(self.v_proj(x), self.num_heads, self.head_v_dim)
        op = fused_recurrent_linear_attn if step.mode == "fused_recurrent" else chunk_linear_attn
        # no normalizer: the output norm takes its place (the two ops default differently, as in the peer library)
        o, final_state = op(q, k, v, initial_state=step.initial_state, output_final_state=step.use_cache,
                            normalize=False, cu_seqlens=step.cu_seqlens)
        o = self.o_proj(self.norm(o).reshape(*o.shape[:2], self.value_dim))
        return step.finish(o, final_state), None, past_key_values

    def flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token of the chunked op (see `recurrent_flops_per_token`)."""
        return recurrent_flops_per_token(self.num_heads, self.head_k_dim, self.head_v_dim, self.chunk_size)
