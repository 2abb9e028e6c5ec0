"""Multi-scale retention (Sun et al., 2023, "Retentive Network").

S_t = gamma_h S_{t-1} + k_t^T v_t,   o_t = q_t S_t * scale,   gamma_h = 1 - 2^(-5 - h)
with rotary positions on q and k (RoPE in place of the paper's xPos, as the peers do), a fixed decay per head
(computed inside `fla.ops.retention`), and a swish output gate after a per-head RMSNorm (the paper's GroupNorm).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from fla.layers.feature_maps import ACTIVATIONS
from fla.layers.utils import (RecurrentStep, cp_rotary_args, output_norm, output_norm_name, recurrent_flops_per_token,
                              repeat_kv, rotary_offsets, split_heads)
from fla.modules import RotaryEmbedding
from fla.ops.retention import chunk_retention, fused_recurrent_retention


class MultiScaleRetention(nn.Module):
    """Args:
        hidden_size: model width D
        expand_k / expand_v: key and value widths as multiples of D (paper: 1 and 2)
        num_heads: query heads H (head h decays with gamma_h = 1 - 2^(-5 - h))
        num_kv_heads: key/value heads, dividing H (grouped); default H
        feature_map: an activation (`fla.layers.feature_maps.ACTIVATIONS`) applied to q and k before rotary
        use_output_gate: o = RMSNorm(o) * act(W_g x) (act = gate_fn), else o = RMSNorm(o)
        elementwise_affine: a learned weight in that RMSNorm
        fuse_norm: names the norm as the peer library does (see `fla.layers.utils.output_norm_name`)
        rope_theta: rotary base
    """

    supports_cp = True  # cp_context reaches its op, its short convolutions and its rotary positions

    def __init__(
        self,
        hidden_size: int = 1024,
        expand_k: float = 1.0,
        expand_v: float = 2.0,
        num_heads: int = 8,
        use_output_gate: bool = True,
        gate_fn: str = "swish",
        rope_theta: float = 10000.0,
        norm_eps: float = 1e-6,
        chunk_size: int = 64,
        layer_idx: int | None = None,
        *,
        num_kv_heads: int | None = None,
        feature_map: str | None = None,
        elementwise_affine: bool = True,
        fuse_norm: bool = True,
    ):
        super().__init__()
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
        self.feature_map = ACTIVATIONS[feature_map] if feature_map is not None else None
        self.use_output_gate = use_output_gate
        self.chunk_size = chunk_size
        self.layer_idx = layer_idx

        self.q_proj = nn.Linear(hidden_size, self.key_dim, bias=False)
        self.k_proj = nn.Linear(hidden_size, self.head_k_dim * self.num_kv_heads, bias=False)
        self.v_proj = nn.Linear(hidden_size, self.head_v_dim * self.num_kv_heads, bias=False)
        if use_output_gate:
            self.g_proj = nn.Linear(hidden_size, self.value_dim, bias=False)
        self.g_norm_name = output_norm_name(use_output_gate, gate_fn, fuse_norm)
        self.add_module(self.g_norm_name, output_norm(self.head_v_dim, use_output_gate, gate_fn, elementwise_affine,
                                                      norm_eps))
        self.o_proj = nn.Linear(self.value_dim, hidden_size, bias=False)
        self.rotary = RotaryEmbedding(dim=self.head_k_dim, base=rope_theta)

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
        q, k = split_heads(self.q_proj(x), H, K), split_heads(self.k_proj(x), H_kv, K)
        v = split_heads(self.v_proj(x), H_kv, V)
        if self.feature_map is not None:
            q, k = self.feature_map(q), self.feature_map(k)
        past_len = past_key_values.get_seq_length(self.layer_idx) if step.initial_state is not None else 0
        offset, rotary_cu = rotary_offsets(attention_mask, past_len, step.batch_size), step.cu_seqlens
        if cp_context is not None:  # positions continue from the earlier ranks
            offset, rotary_cu = cp_rotary_args(cp_context, step.seq_len, x.device)
        q, k = self.rotary(q, k, seqlen_offset=offset, cu_seqlens=rotary_cu)
        k, v = repeat_kv(k, self.num_kv_groups), repeat_kv(v, self.num_kv_groups)

        op = fused_recurrent_retention if step.mode == "fused_recurrent" else chunk_retention
        o, final_state = op(q, k, v, initial_state=step.initial_state, output_final_state=step.use_cache,
                            cu_seqlens=step.cu_seqlens, **step.cp_kwargs)
        norm = getattr(self, self.g_norm_name)
        o = norm(o, split_heads(self.g_proj(x), H, V)) if self.use_output_gate else norm(o)
        o = self.o_proj(o.reshape(*o.shape[:2], self.value_dim))
        return step.finish(o, final_state), None, past_key_values

    def flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token of the chunked op (see `recurrent_flops_per_token`)."""
        return recurrent_flops_per_token(self.num_heads, self.head_k_dim, self.head_v_dim, self.chunk_size)
