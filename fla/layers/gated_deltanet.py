"""Gated DeltaNet (Yang et al., 2025, "Gated Delta Networks: Improving Mamba2 with Delta Rule").

S_t = alpha_t S_{t-1} + beta_t k_t^T (v_t - alpha_t k_t S_{t-1}),   o_t = q_t S_t * scale
with the Mamba2-style decay log(alpha_t) = -exp(A_log) * softplus(W_a x_t + dt_bias) per head,
beta_t = sigmoid(W_b x_t), L2-normalized q and k, SiLU short convolutions on q, k, v and a gated RMSNorm output
o = RMSNorm(o) * swish(W_g x).
"""
from __future__ import annotations


import torch
import torch.nn as nn

from fla.layers.utils import RecurrentStep, init_dt_bias, recurrent_flops_per_token, split_heads
from fla.modules import FusedRMSNormGated, RMSNorm, ShortConvolution
from fla.ops.gated_delta_rule import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule
from fla.ops.gated_delta_rule.gate import naive_gdn_gate


class GatedDeltaNet(nn.Module):
    """Args:
        hidden_size: model width D
        head_dim: key head width K (the paper: 256)
        num_heads: heads H (key width H * K)
        expand_v: value head width as a multiple of head_dim (the paper: 2)
        num_v_heads: value heads HV, a multiple of H (grouped values: value head j reads q/k head j // (HV / H));
            default H. The decay, beta and the state are per value head
        use_gate: gated output norm RMSNorm(o) * act(W_g x), act = output_gate_activation ("swish", alias "silu",
            or "sigmoid"); else plain RMSNorm
        use_short_conv / conv_size / conv_bias: causal depthwise SiLU convolutions on q, k, v
        allow_neg_eigval: beta in (0, 2) instead of (0, 1)
    The cached recurrent state is [B, HV, V, K] (the peer library's layout).
    """

    supports_cp = True  # cp_context reaches its op, its short convolutions and its rotary positions

    # A_log and dt_bias are gate parameters that should not be decayed (trainers look for this attribute).
    _no_weight_decay = ("A_log", "dt_bias")

    def __init__(
        self,
        hidden_size: int = 2048,
        head_dim: int = 256,
        num_heads: int = 6,
        expand_v: float = 2.0,
        use_gate: bool = True,
        use_short_conv: bool = True,
        conv_size: int = 4,
        conv_bias: bool = False,
        allow_neg_eigval: bool = False,
        norm_eps: float = 1e-6,
        chunk_size: int = 64,
        layer_idx: int | None = None,
        *,
        num_v_heads: int | None = None,
        output_gate_activation: str = "swish",
    ):
        super().__init__()
        self.hidden_size, self.num_heads = hidden_size, num_heads
        self.num_v_heads = num_v_heads or num_heads
        if self.num_v_heads % num_heads:
            raise ValueError(f"num_v_heads ({self.num_v_heads}) must be a multiple of num_heads ({num_heads})")
        self.head_k_dim, self.head_v_dim = head_dim, int(head_dim * expand_v)
        self.key_dim, self.value_dim = num_heads * self.head_k_dim, self.num_v_heads * self.head_v_dim
        self.use_gate, self.use_short_conv, self.allow_neg_eigval = use_gate, use_short_conv, allow_neg_eigval
        self.chunk_size = chunk_size
        self.layer_idx = layer_idx

        self.q_proj = nn.Linear(hidden_size, self.key_dim, bias=False)
        self.k_proj = nn.Linear(hidden_size, self.key_dim, bias=False)
        self.v_proj = nn.Linear(hidden_size, self.value_dim, bias=False)
        self.a_proj = nn.Linear(hidden_size, self.num_v_heads, bias=False)
        self.b_proj = nn.Linear(hidden_size, self.num_v_heads, bias=False)
        self.A_log = nn.Parameter(torch.empty(self.num_v_heads, dtype=torch.float32))
        self.dt_bias = nn.Parameter(torch.empty(self.num_v_heads, dtype=torch.float32))
        self.A_log._no_weight_decay = True
        self.dt_bias._no_weight_decay = True
        if use_short_conv:
            self.q_conv1d = ShortConvolution(self.key_dim, conv_size, bias=conv_bias, activation="silu")
            self.k_conv1d = ShortConvolution(self.key_dim, conv_size, bias=conv_bias, activation="silu")
            self.v_conv1d = ShortConvolution(self.value_dim, conv_size, bias=conv_bias, activation="silu")
        if use_gate:
            self.g_proj = nn.Linear(hidden_size, self.value_dim, bias=False)
            self.o_norm = FusedRMSNormGated(self.head_v_dim, eps=norm_eps, activation=output_gate_activation)
        else:
            self.o_norm = RMSNorm(self.head_v_dim, eps=norm_eps)
        self.o_proj = nn.Linear(self.value_dim, hidden_size, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, dt_min: float = 0.001, dt_max: float = 0.1, dt_floor: float = 1e-4) -> None:
        """The gate parameters only (Mamba2's init): A ~ U(0, 16), dt ~ logU(dt_min, dt_max) stored as
        softplus^-1(dt). The projections are initialized by the model."""
        self.A_log.copy_(torch.empty_like(self.A_log).uniform_(0, 16).clamp_min(1e-4).log())
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
        beta = self.b_proj(x).sigmoid()
        if self.allow_neg_eigval:
            beta = beta * 2
        g = naive_gdn_gate(self.a_proj(x), self.A_log, self.dt_bias)  # -exp(A_log) * softplus(a + dt_bias)

        op = fused_recurrent_gated_delta_rule if step.mode == "fused_recurrent" else chunk_gated_delta_rule
        o, final_state = op(q, k, v, g=g, beta=beta, initial_state=step.initial_state,  # keywords: the peer's order
                            output_final_state=step.use_cache, state_v_first=True, cu_seqlens=step.cu_seqlens,
                            use_qk_l2norm_in_kernel=True, **step.cp_kwargs)
        if self.use_gate:
            o = self.o_norm(o, split_heads(self.g_proj(x), HV, V))
        else:
            o = self.o_norm(o)
        o = self.o_proj(o.reshape(*o.shape[:2], self.value_dim))
        return step.finish(o, final_state), None, past_key_values

    def flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token of the chunked gated delta-rule op (see `recurrent_flops_per_token`)."""
        return recurrent_flops_per_token(self.num_v_heads, self.head_k_dim, self.head_v_dim, self.chunk_size, True)
