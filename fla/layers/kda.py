"""Kimi Delta Attention (Kimi Team, 2025, "Kimi Linear: An Expressive, Efficient Attention Architecture").

The gated delta rule with a forget gate per key channel:
    S_t = diag(alpha_t) S_{t-1} + beta_t k_t^T (v_t - k_t diag(alpha_t) S_{t-1}),   o_t = scale * q_t S_t
with log(alpha_t) = -exp(A_log) * softplus(W_f x_t + dt_bias) per value head and key channel (W_f a low-rank
bottleneck D -> V -> HV * K), beta_t = sigmoid(W_b x_t), L2-normalized q and k, SiLU short convolutions on q, k, v,
and a sigmoid-gated RMSNorm output o = RMSNorm(o) * sigmoid(W_g x) (W_g low-rank D -> V -> HV * V, with a bias).
The gate and beta's sigmoid are computed inside the op (`use_gate_in_kernel`, `use_beta_sigmoid_in_kernel`).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from fla.layers.utils import RecurrentStep, init_dt_bias, recurrent_flops_per_token, split_heads
from fla.modules import FusedRMSNormGated, ShortConvolution
from fla.ops.kda import chunk_kda, fused_recurrent_kda


class KimiDeltaAttention(nn.Module):
    """Args (the peer library's names, order and defaults):
        hidden_size: model width D
        expand_v: value head width as a multiple of head_dim
        head_dim: key head width K
        num_heads: query/key heads H
        num_v_heads: value heads HV, a multiple of H (grouped values); default H. Gate, beta and state are per
            value head
        mode: "chunk" or "fused_recurrent" (training always uses chunk; short inference calls the recurrent kernel)
        use_short_conv / conv_size / conv_bias: causal depthwise SiLU convolutions on q, k, v
        allow_neg_eigval: beta in (0, 2) instead of (0, 1)
        safe_gate / lower_bound: the peer's bounded gate; not supported (an error when set)
        layer_idx: index in the model (the cache's key)
        norm_eps: epsilon of the output norm
    The cached recurrent state is [B, HV, V, K] (the peer library's layout).
    """

    supports_cp = True  # cp_context reaches its op and its short convolutions

    _no_weight_decay = ("A_log", "dt_bias")

    def __init__(
        self,
        hidden_size: int = 2048,
        expand_v: float = 1,
        head_dim: int = 128,
        num_heads: int = 16,
        num_v_heads: int | None = None,
        mode: str = "chunk",
        use_short_conv: bool = True,
        allow_neg_eigval: bool = False,
        safe_gate: bool = False,
        lower_bound: float | None = None,
        conv_size: int = 4,
        conv_bias: bool = False,
        layer_idx: int | None = None,
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        if mode not in ("chunk", "fused_recurrent"):
            raise ValueError(f"mode must be 'chunk' or 'fused_recurrent' (got {mode!r})")
        if safe_gate or lower_bound is not None:
            raise ValueError("safe_gate / lower_bound (the peer's sigmoid-bounded gate) are not supported by fla's "
                             "KimiDeltaAttention; leave them at False / None")
        self.hidden_size, self.num_heads = hidden_size, num_heads
        self.num_v_heads = num_v_heads or num_heads
        if self.num_v_heads % num_heads:
            raise ValueError(f"num_v_heads ({self.num_v_heads}) must be a multiple of num_heads ({num_heads})")
        self.head_k_dim = head_dim
        self.head_v_dim = int(head_dim * expand_v)
        if not math.isclose(head_dim * expand_v, self.head_v_dim, rel_tol=1e-5):
            raise ValueError(f"expand_v={expand_v} times head_dim={head_dim} must be an integer")
        self.key_dim, self.value_dim = num_heads * self.head_k_dim, self.num_v_heads * self.head_v_dim
        self.mode, self.use_short_conv, self.allow_neg_eigval = mode, use_short_conv, allow_neg_eigval
        self.safe_gate, self.lower_bound = safe_gate, lower_bound
        self.layer_idx = layer_idx

        self.q_proj = nn.Linear(hidden_size, self.key_dim, bias=False)
        self.k_proj = nn.Linear(hidden_size, self.key_dim, bias=False)
        self.v_proj = nn.Linear(hidden_size, self.value_dim, bias=False)
        if use_short_conv:
            self.q_conv1d = ShortConvolution(self.key_dim, conv_size, bias=conv_bias, activation="silu")
            self.k_conv1d = ShortConvolution(self.key_dim, conv_size, bias=conv_bias, activation="silu")
            self.v_conv1d = ShortConvolution(self.value_dim, conv_size, bias=conv_bias, activation="silu")
        gate_dim = self.num_v_heads * self.head_k_dim
        # the gate's projection is a low-rank bottleneck through the value head width (the peer's layout)
        self.f_proj = nn.Sequential(nn.Linear(hidden_size, self.head_v_dim, bias=False),
                                    nn.Linear(self.head_v_dim, gate_dim, bias=False))
        self.b_proj = nn.Linear(hidden_size, self.num_v_heads, bias=False)
        self.A_log = nn.Parameter(torch.empty(self.num_v_heads, dtype=torch.float32))
        self.dt_bias = nn.Parameter(torch.empty(gate_dim, dtype=torch.float32))
        self.A_log._no_weight_decay = True
        self.dt_bias._no_weight_decay = True
        self.g_proj = nn.Sequential(nn.Linear(hidden_size, self.head_v_dim, bias=False),
                                    nn.Linear(self.head_v_dim, self.value_dim, bias=True))
        self.o_norm = FusedRMSNormGated(self.head_v_dim, eps=norm_eps, activation="sigmoid")
        self.o_proj = nn.Linear(self.value_dim, hidden_size, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, dt_min: float = 0.001, dt_max: float = 0.1, dt_floor: float = 1e-4) -> None:
        """The gate parameters only (the peer's init): A ~ U(1, 16), dt ~ logU(dt_min, dt_max) stored as
        softplus^-1(dt). The projections are initialized by the model."""
        self.A_log.copy_(torch.empty_like(self.A_log).uniform_(1, 16).log())
        init_dt_bias(self.dt_bias, dt_min, dt_max, dt_floor)

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
        q, k, v = step.project(self, "q", "k", "v", silu_without_conv=("q", "k", "v"))
        H, HV, K, V = self.num_heads, self.num_v_heads, self.head_k_dim, self.head_v_dim
        q, k, v = split_heads(q, H, K), split_heads(k, H, K), split_heads(v, HV, V)
        g = split_heads(self.f_proj(x), HV, K)  # the raw gate: the op applies -exp(A_log) softplus(g + dt_bias)
        beta = self.b_proj(x)  # logits: the op applies the sigmoid (times 2 with allow_neg_eigval)
        options = dict(initial_state=step.initial_state, output_final_state=step.use_cache,
                       use_qk_l2norm_in_kernel=True, use_gate_in_kernel=True, use_beta_sigmoid_in_kernel=True,
                       allow_neg_eigval=self.allow_neg_eigval, state_v_first=True, cu_seqlens=step.cu_seqlens,
                       **step.cp_kwargs)
        mode = "fused_recurrent" if step.mode == "fused_recurrent" else self.mode if not self.training else "chunk"
        mode = "chunk" if step.cp_context is not None else mode  # only the chunked op takes cp_context
        op = fused_recurrent_kda if mode == "fused_recurrent" else chunk_kda
        o, final_state = op(q, k, v, g, beta, A_log=self.A_log, dt_bias=self.dt_bias, **options)
        o = self.o_norm(o, split_heads(self.g_proj(x), HV, V))
        o = self.o_proj(o.reshape(*o.shape[:2], self.value_dim))
        return step.finish(o, final_state), None, past_key_values

    def flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token of the chunked KDA op (see `recurrent_flops_per_token`)."""
        return recurrent_flops_per_token(self.num_v_heads, self.head_k_dim, self.head_v_dim, 64, True)
