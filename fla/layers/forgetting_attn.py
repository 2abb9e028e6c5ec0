"""Forgetting Attention (Lin et al., 2025, "Forgetting Transformer: Softmax Attention with a Forget Gate").

Softmax attention whose scores carry the log of a data-dependent forget gate f_t = sigmoid(w_f x_t + b_f), one
per head and token, accumulated between key and query:
    o_i = sum_{j <= i} softmax_j(q_i k_j^T / sqrt(d) + D_ij) v_j,    D_ij = sum_{l = j+1 .. i} log f_l
No positional embedding (the gate is the positional signal), optional QK-norm and output gate
o_i * sigmoid(W_g x_i), as in the paper's "Pro" block and the peer library.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from fla.layers.attn_cache import pack_tokens, store_kv, visible_keys, with_cached
from fla.layers.utils import check_cp_layer_call, pad
from fla.modules import rms_norm
from fla.ops.attn import parallel_attn


class HeadRMSNorm(nn.Module):
    """RMSNorm of each head of x [..., H, D] with a weight per channel [H * D] (the peer's QK-norm: a group norm
    with one group per head, in RMS form, eps 1e-5)."""

    def __init__(self, num_heads: int, head_dim: int, eps: float = 1e-5):
        super().__init__()
        self.num_heads, self.head_dim, self.eps = num_heads, head_dim, eps
        self.weight = nn.Parameter(torch.empty(num_heads * head_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, head_dim={self.head_dim}, eps={self.eps}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, None, eps=self.eps) * self.weight.view(self.num_heads, self.head_dim).to(x.dtype)


class ForgettingAttention(nn.Module):
    """Causal softmax attention with a forget gate (the peer library's arguments and defaults).

    Training and prefill run `fla.ops.attn.parallel_attn(q, k, v, g=log f)` (packed sequences through cu_seqlens,
    padded batches packed the same way). Once the cache holds keys, values and log gates, new queries attend to
    them in float32 with the bias D_ij rebuilt from the cached log gates.

    Args:
        hidden_size: model width; num_heads: query heads H (head_dim = hidden_size / H)
        num_kv_heads: key/value heads (grouped-query attention; must divide H), default H; the gate is per
            query head
        qkv_bias: biases on the q/k/v projections (f_proj always has one)
        qk_norm: per-head RMSNorm of q and k (weights [H * D] and [H_kv * D], eps 1e-5)
        window_size: attend to at most this many most recent tokens (itself included); None = unlimited. (The
            peer only trims its decoding cache to the window; here training and decoding both use it.)
        use_output_gate: o * sigmoid(W_g x) before o_proj
    The cache's attn_state is (keys [B, S, H_kv * D], values [B, S, H_kv * D], log gates [B, S, H] float32), the
    peer's layout.
    """

    supports_cp = True  # cp_context reaches parallel_attn (keys and forget gates all-gathered)

    def __init__(
        self,
        hidden_size: int = 2048,
        num_heads: int = 32,
        num_kv_heads: int | None = None,
        qkv_bias: bool = False,
        qk_norm: bool = False,
        window_size: int | None = None,
        use_output_gate: bool = False,
        layer_idx: int | None = None,
    ):
        super().__init__()
        num_kv_heads = num_kv_heads or num_heads
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})")
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
        if window_size is not None and (isinstance(window_size, bool) or not isinstance(window_size, int)
                                        or window_size < 1):
            raise ValueError(f"window_size must be a positive int or None (got {window_size!r})")
        self.hidden_size, self.num_heads, self.num_kv_heads = hidden_size, num_heads, num_kv_heads
        self.num_kv_groups = num_heads // num_kv_heads
        self.head_dim = hidden_size // num_heads
        self.kv_dim = num_kv_heads * self.head_dim
        self.qkv_bias, self.qk_norm = qkv_bias, qk_norm
        self.window_size, self.use_output_gate = window_size, use_output_gate
        self.layer_idx = layer_idx

        self.q_proj = nn.Linear(hidden_size, hidden_size, bias=qkv_bias)
        self.k_proj = nn.Linear(hidden_size, self.kv_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(hidden_size, self.kv_dim, bias=qkv_bias)
        self.f_proj = nn.Linear(hidden_size, num_heads, bias=True)
        if use_output_gate:
            self.g_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.o_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        if qk_norm:
            self.q_norm = HeadRMSNorm(num_heads, self.head_dim)
            self.k_norm = HeadRMSNorm(num_kv_heads, self.head_dim)

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
        f = F.logsigmoid(self.f_proj(hidden_states).float())  # [B, T, H] log forget gates
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)

        state = past_key_values.layer_state(self.layer_idx) if past_key_values is not None else None
        if cp_context is not None:  # this rank's queries against the keys (and gates) of the whole sequence
            o = parallel_attn(q.contiguous(), k.contiguous(), v.contiguous(), g=f, window_size=self.window_size,
                              cp_context=cp_context)
            new = (k, v, f)
        elif state is None or state.attn_state is None:
            (q, k, v, f), cu, indices = pack_tokens(attention_mask, cu_seqlens, q, k, v, f)
            o = parallel_attn(q.contiguous(), k.contiguous(), v.contiguous(), g=f, window_size=self.window_size,
                              cu_seqlens=cu)
            o = pad(o, indices, B, T)
            # padded positions are stored as zeros: a zero log gate adds nothing to any later sum
            new = (pad(k, indices, B, T), pad(v, indices, B, T), pad(f, indices, B, T))
        else:
            past_len = state.seen_tokens
            keys, values, log_f = with_cached(state, k, v, f)
            o = self._attend_to_cache(q, keys, values, log_f, attention_mask, past_len)
            new = (k, v, f)

        store_kv(self, past_key_values, use_cache, T, *new)
        o = o.reshape(B, T, -1)
        if self.use_output_gate:
            o = o * torch.sigmoid(self.g_proj(hidden_states))
        return self.o_proj(o), None, past_key_values

    def _attend_to_cache(
        self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, log_f: torch.Tensor,
        attention_mask: torch.Tensor | None, past_len: int,
    ) -> torch.Tensor:
        """q [B, T, H, D] at columns past_len.. against the last S columns up to past_len + T: keys / values
        [B, S, H_kv, D], log gates [B, S, H]. Scores in float32 with D_ij = F_i - F_j, F the running sum of the
        log gates over these S columns (the columns before them cancel in the difference)."""
        B, T = q.shape[:2]
        allowed = visible_keys(attention_mask, B, T, keys.shape[1], past_len, self.window_size, q.device)
        cum = log_f.float().cumsum(1).transpose(1, 2)  # [B, H, S]
        bias = cum[..., -T:, None] - cum[..., None, :]  # [B, H, T, S]
        k = keys.float().repeat_interleave(self.num_kv_groups, dim=2)
        v = values.float().repeat_interleave(self.num_kv_groups, dim=2)
        s = torch.einsum("bthd,bshd->bhts", q.float(), k) * self.head_dim ** -0.5 + bias
        p = s.masked_fill(~allowed[:, None], float("-inf")).softmax(-1)
        return torch.einsum("bhts,bshd->bthd", p, v).to(q.dtype)

    def flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token outside the projections, as softmax attention: 4 * H * D * visible keys."""
        span = seq_len if self.window_size is None else min(seq_len, self.window_size)
        return 4.0 * self.num_heads * self.head_dim * span
