"""Gated linear attention (Yang et al., 2024, "Gated Linear Attention Transformers with Hardware-Efficient Training").

S_t = diag(exp(gk_t)) S_{t-1} + k_t^T v_t,   o_t = q_t S_t * scale,   gk_t = logsigmoid(W_2 W_1 x_t) / tau
with a low-rank data-dependent forget gate, an output gate (o = RMSNorm(o) * swish(W_g x)), optional short
convolutions on q, k, v, grouped key/value heads and a feature map on q and k.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from fla.layers.feature_maps import ACTIVATIONS
from fla.layers.utils import (RecurrentStep, output_norm, output_norm_name, recurrent_flops_per_token, repeat_kv,
                              split_heads)
from fla.modules import ShortConvolution
from fla.ops.gla import chunk_gla, fused_recurrent_gla


class GatedLinearAttention(nn.Module):
    """Args:
        hidden_size: model width D
        expand_k / expand_v: key and value widths as fractions of D (paper: 0.5 and 1)
        num_heads: query heads H
        num_kv_heads: key/value (and forget-gate) heads, dividing H; each serves H / num_kv_heads query heads
        feature_map: an activation (`fla.layers.feature_maps.ACTIVATIONS`) applied to q and k, or None
        use_short_conv / conv_size / conv_bias: causal depthwise convolutions on q, k, v
        use_output_gate: o = RMSNorm(o) * act(W_g x) (act = gate_fn), else o = RMSNorm(o)
        elementwise_affine: a learned weight in that RMSNorm
        fuse_norm: with a swish output gate, the norm is named `g_norm_swish_gate` (else `g_norm`), as the peer
            library names it; the math is the same either way
        gate_logit_normalizer: tau, dividing the log forget gate (16 in the paper)
        gate_low_rank_dim: rank of the forget-gate projection
        clamp_min: optional lower clamp of the log forget gate
    The cached recurrent state is [B, H, V, K] (the peer library's layout).
    """

    supports_cp = True  # cp_context reaches its op, its short convolutions and its rotary positions

    def __init__(
        self,
        hidden_size: int = 1024,
        expand_k: float = 0.5,
        expand_v: float = 1.0,
        num_heads: int = 4,
        use_short_conv: bool = False,
        conv_size: int = 4,
        conv_bias: bool = False,
        use_output_gate: bool = True,
        gate_fn: str = "swish",
        gate_logit_normalizer: float = 16.0,
        gate_low_rank_dim: int = 16,
        clamp_min: float | None = None,
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
        kv_key_dim, kv_value_dim = self.head_k_dim * self.num_kv_heads, self.head_v_dim * self.num_kv_heads
        self.feature_map = ACTIVATIONS[feature_map] if feature_map is not None else None
        self.use_short_conv, self.use_output_gate = use_short_conv, use_output_gate
        self.gate_logit_normalizer, self.clamp_min = gate_logit_normalizer, clamp_min
        self.chunk_size = chunk_size
        self.layer_idx = layer_idx

        self.q_proj = nn.Linear(hidden_size, self.key_dim, bias=False)
        self.k_proj = nn.Linear(hidden_size, kv_key_dim, bias=False)
        self.v_proj = nn.Linear(hidden_size, kv_value_dim, bias=False)
        if use_output_gate:
            self.g_proj = nn.Linear(hidden_size, self.value_dim, bias=False)
        self.gk_proj = nn.Sequential(
            nn.Linear(hidden_size, gate_low_rank_dim, bias=False),
            nn.Linear(gate_low_rank_dim, kv_key_dim, bias=True),
        )
        if use_short_conv:
            self.q_conv1d = ShortConvolution(self.key_dim, conv_size, bias=conv_bias, activation="silu")
            self.k_conv1d = ShortConvolution(kv_key_dim, conv_size, bias=conv_bias, activation="silu")
            self.v_conv1d = ShortConvolution(kv_value_dim, conv_size, bias=conv_bias, activation="silu")
        self.g_norm_name = output_norm_name(use_output_gate, gate_fn, fuse_norm)
        self.add_module(self.g_norm_name, output_norm(self.head_v_dim, use_output_gate, gate_fn, elementwise_affine,
                                                      norm_eps))
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
        q, k, v = step.project(self, "q", "k", "v")
        gk = F.logsigmoid(self.gk_proj(x).float()) / self.gate_logit_normalizer
        if self.clamp_min is not None:
            gk = gk.clamp_min(self.clamp_min)

        H, H_kv, K, V = self.num_heads, self.num_kv_heads, self.head_k_dim, self.head_v_dim
        q = split_heads(q, H, K)
        k, gk, v = (repeat_kv(split_heads(t, H_kv, d), self.num_kv_groups) for t, d in ((k, K), (gk, K), (v, V)))
        if self.feature_map is not None:
            q, k = self.feature_map(q), self.feature_map(k)
        op = fused_recurrent_gla if step.mode == "fused_recurrent" else chunk_gla
        o, final_state = op(q, k, v, gk, initial_state=step.initial_state, output_final_state=step.use_cache,
                            state_v_first=True, cu_seqlens=step.cu_seqlens, **step.cp_kwargs)
        norm = getattr(self, self.g_norm_name)
        o = norm(o, split_heads(self.g_proj(x), H, V)) if self.use_output_gate else norm(o)
        o = self.o_proj(o.reshape(*o.shape[:2], self.value_dim))
        return step.finish(o, final_state), None, past_key_values

    def flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token of the chunked op (see `recurrent_flops_per_token`)."""
        return recurrent_flops_per_token(self.num_heads, self.head_k_dim, self.head_v_dim, self.chunk_size)
