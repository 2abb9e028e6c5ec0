"""HGRN-2 (Qin et al., 2024, "HGRN2: Gated Linear RNNs with State Expansion").

HGRN's recurrence with the state expanded by an outer product, i.e. gated linear attention whose keys are tied to
the forget gate (no key projection):
    f_t = lambda + (1 - lambda) * sigmoid(W_f x_t)   (per head and forget channel; lambda the layer's lower bound)
    S_t = diag(f_t) S_{t-1} + (1 - f_t)^T i_t,     i_t = W_i x_t
    o_t = W_o RMSNorm(scale * swish(W_q x_t) S_t)
run by `chunk_gla` / `fused_recurrent_gla` with k = 1 - f, log gate log f. The scale is GLA's default
head_f_dim ** -0.5, as in the peer library's layer (the paper writes none; RMSNorm makes it cancel up to eps).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from fla.layers.hgrn import bounded_log_forget
from fla.layers.utils import RecurrentStep, recurrent_flops_per_token, split_heads
from fla.modules import RMSNorm, ShortConvolution
from fla.ops.gla import chunk_gla, fused_recurrent_gla


class HGRN2Attention(nn.Module):
    """Args (the peer library's):
        mode: the peer's kernel choice ("chunk", "fused_recurrent", "fused_chunk"): only checked
        hidden_size: model width D (also the input width: value heads of D / num_heads)
        num_heads / expand_ratio: heads H and the forget (key) width per head; expand_ratio wins when both are given
            (num_heads = D // expand_ratio)
        use_short_conv / conv_size / conv_bias: causal depthwise convolutions (no activation) on q, f, i
        elementwise_affine / norm_eps: the output RMSNorm
    forward takes `lower_bound` [H * expand_ratio] (the model's, for this layer) besides the common arguments.
    The cached recurrent state is [B, H, head_i_dim, expand_ratio] float32 (GLA's value-first layout).
    """

    supports_cp = True  # cp_context reaches its op and its short convolutions

    def __init__(
        self,
        mode: str = "chunk",
        hidden_size: int = 1024,
        num_heads: int | None = None,
        expand_ratio: int | None = 128,
        use_short_conv: bool = False,
        conv_size: int = 4,
        conv_bias: bool = False,
        elementwise_affine: bool | None = True,
        norm_eps: float = 1e-5,
        layer_idx: int | None = None,
    ):
        super().__init__()
        if mode not in ("chunk", "fused_recurrent", "fused_chunk"):
            raise ValueError(f"mode must be 'chunk', 'fused_recurrent' or 'fused_chunk' (got {mode!r})")
        if expand_ratio is not None:
            num_heads = hidden_size // expand_ratio
        elif num_heads is not None:
            expand_ratio = hidden_size // num_heads
        else:
            raise ValueError("HGRN2Attention needs expand_ratio (the forget width per head) or num_heads")
        if num_heads < 1 or hidden_size % num_heads:
            raise ValueError(f"hidden_size={hidden_size} must be a multiple of num_heads={num_heads} (from "
                             f"expand_ratio={expand_ratio})")
        self.mode = mode
        self.hidden_size, self.num_heads, self.expand_ratio = hidden_size, num_heads, expand_ratio
        self.use_short_conv, self.conv_size, self.conv_bias = use_short_conv, conv_size, conv_bias
        self.forget_dim, self.input_dim = num_heads * expand_ratio, hidden_size
        self.head_f_dim, self.head_i_dim = expand_ratio, hidden_size // num_heads
        self.layer_idx = layer_idx
        self.chunk_size = 64

        self.q_proj = nn.Linear(hidden_size, self.forget_dim, bias=False)
        self.f_proj = nn.Linear(hidden_size, self.forget_dim, bias=False)
        self.i_proj = nn.Linear(hidden_size, self.input_dim, bias=False)
        if use_short_conv:
            self.q_conv1d = ShortConvolution(self.forget_dim, conv_size, bias=conv_bias, activation=None)
            self.f_conv1d = ShortConvolution(self.forget_dim, conv_size, bias=conv_bias, activation=None)
            self.i_conv1d = ShortConvolution(self.input_dim, conv_size, bias=conv_bias, activation=None)
        self.g_norm = RMSNorm(hidden_size, elementwise_affine=bool(elementwise_affine), eps=norm_eps)
        self.o_proj = nn.Linear(self.input_dim, hidden_size, bias=False)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values=None,
        use_cache: bool = False,
        cu_seqlens: torch.Tensor | None = None,
        lower_bound: torch.Tensor | None = None,
        cp_context=None,
        **kwargs,
    ) -> tuple[torch.Tensor, None, object]:
        step = RecurrentStep(self, hidden_states, attention_mask, past_key_values, use_cache, cu_seqlens, cp_context)
        q, f, i = step.project(self, "q", "f", "i")
        q = F.silu(q)
        g = bounded_log_forget(f, lower_bound, self.layer_idx)
        k = (1 - g.exp()).to(i.dtype)  # keys tied to the forget gate
        H, K, V = self.num_heads, self.head_f_dim, self.head_i_dim
        q, k, g, i = split_heads(q, H, K), split_heads(k, H, K), split_heads(g, H, K), split_heads(i, H, V)
        op = fused_recurrent_gla if step.mode == "fused_recurrent" else chunk_gla
        o, final_state = op(q, k, i, g, initial_state=step.initial_state, output_final_state=step.use_cache,
                            state_v_first=True, cu_seqlens=step.cu_seqlens, **step.cp_kwargs)
        o = self.o_proj(self.g_norm(o.reshape(*o.shape[:2], self.input_dim)))
        return step.finish(o, final_state), None, past_key_values

    def flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token of the chunked GLA op (see `recurrent_flops_per_token`)."""
        return recurrent_flops_per_token(self.num_heads, self.head_f_dim, self.head_i_dim, self.chunk_size)
