"""Softmax attention with rotary positions, grouped key/value heads and an optional sliding window."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from fla.layers.attn_cache import pack_tokens, store_kv, visible_keys, with_cached
from fla.layers.utils import check_cp_layer_call, cp_rotary_args, pad, rotary_offsets
from fla.modules import RMSNorm, RotaryEmbedding
from fla.ops.attn import parallel_attn


class Attention(nn.Module):
    """Causal multi-head softmax attention.

    Training and prefill run `fla.ops.attn.parallel_attn` (flash attention; packed sequences through `cu_seqlens`,
    padded batches packed the same way). Once the cache holds keys and values, new queries attend to them with
    PyTorch SDPA and an explicit mask (padding, causality, window), which for one decoded token is a matrix-vector
    product anyway.

    Args:
        hidden_size: model width D
        num_heads: query heads H (head_dim = D / H)
        num_kv_heads: key/value heads (grouped-query attention; must divide H), default H
        qkv_bias: biases on the q/k/v projections
        qk_norm: RMSNorm (eps norm_eps, 1e-5 as in the peer library) on each query and key head before rotary
        window_size: attend to at most this many most recent tokens (itself included); None = unlimited
        rope_theta: rotary base
    """

    supports_cp = True  # cp_context reaches its op, its short convolutions and its rotary positions

    def __init__(
        self,
        hidden_size: int = 2048,
        num_heads: int = 32,
        num_kv_heads: int | None = None,
        qkv_bias: bool = False,
        qk_norm: bool = False,
        window_size: int | None = None,
        rope_theta: float = 10000.0,
        max_position_embeddings: int | None = None,
        norm_eps: float = 1e-5,
        layer_idx: int | None = None,
    ):
        super().__init__()
        num_kv_heads = num_kv_heads or num_heads
        if hidden_size % num_heads != 0:
            raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})")
        if num_heads % num_kv_heads != 0:
            raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
        self.hidden_size, self.num_heads, self.num_kv_heads = hidden_size, num_heads, num_kv_heads
        self.head_dim = hidden_size // num_heads
        self.kv_dim = num_kv_heads * self.head_dim
        self.window_size = window_size
        self.rope_theta = rope_theta
        self.max_position_embeddings = max_position_embeddings
        self.layer_idx = layer_idx

        self.q_proj = nn.Linear(hidden_size, hidden_size, bias=qkv_bias)
        self.k_proj = nn.Linear(hidden_size, self.kv_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(hidden_size, self.kv_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.qk_norm = qk_norm
        if qk_norm:
            self.q_norm = RMSNorm(self.head_dim, eps=norm_eps)
            self.k_norm = RMSNorm(self.head_dim, eps=norm_eps)
        self.rotary = RotaryEmbedding(dim=self.head_dim, base=rope_theta)

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
        B, T, _ = hidden_states.shape
        check_cp_layer_call(self, cp_context, attention_mask, past_key_values, use_cache, cu_seqlens)
        q = self.q_proj(hidden_states).view(B, T, self.num_heads, self.head_dim)
        k = self.k_proj(hidden_states).view(B, T, self.num_kv_heads, self.head_dim)
        v = self.v_proj(hidden_states).view(B, T, self.num_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)

        state = past_key_values.layer_state(self.layer_idx) if past_key_values is not None else None
        if cp_context is not None:  # this rank's queries against the keys of the whole sequence (all-gathered)
            offset, rotary_cu = cp_rotary_args(cp_context, T, q.device)
            q, k = self.rotary(q, k, seqlen_offset=offset, cu_seqlens=rotary_cu)
            o = parallel_attn(q, k, v, window_size=self.window_size, cp_context=cp_context)
            new_kv = (k, v)
        elif state is None or state.attn_state is None:
            (q, k, v), cu, indices = pack_tokens(attention_mask, cu_seqlens, q, k, v)
            q, k = self.rotary(q, k, seqlen_offset=0, cu_seqlens=cu)
            o = parallel_attn(q, k, v, window_size=self.window_size, cu_seqlens=cu)
            o = pad(o, indices, B, T)
            new_kv = (pad(k, indices, B, T), pad(v, indices, B, T))
        else:
            past_len = state.seen_tokens  # input columns so far; a sliding window keeps only the last ones' keys
            q, k = self.rotary(q, k, seqlen_offset=rotary_offsets(attention_mask, past_len, B))
            keys, values = with_cached(state, k, v)
            o = self._attend_to_cache(q, keys, values, attention_mask, past_len)
            new_kv = (k, v)

        store_kv(self, past_key_values, use_cache, T, *new_kv)
        o = self.o_proj(o.reshape(B, T, -1))
        return o, None, past_key_values

    def _attend_to_cache(
        self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, attention_mask: torch.Tensor | None,
        past_len: int,
    ) -> torch.Tensor:
        """q [B, T, H, D] at columns past_len.. against keys/values [B, S, H_kv, D] of the last S columns up to
        past_len + T (all of them, or the window the cache kept)."""
        B, T = q.shape[:2]
        allowed = visible_keys(attention_mask, B, T, keys.shape[1], past_len, self.window_size, q.device)
        groups = self.num_heads // self.num_kv_heads
        k = keys.repeat_interleave(groups, dim=2) if groups > 1 else keys
        v = values.repeat_interleave(groups, dim=2) if groups > 1 else values
        o = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=allowed[:, None]
        )
        return o.transpose(1, 2)

    def flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token outside the projections: q k^T and p v over the visible keys (2 * 2 * H * D * S,
        S = seq_len or the window, counted without the causal half as torchtitan and the peers do)."""
        span = seq_len if self.window_size is None else min(seq_len, self.window_size)
        return 4.0 * self.num_heads * self.head_dim * span
