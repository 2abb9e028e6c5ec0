"""Gated DeltaProduct (Siems et al., 2025, "DeltaProduct: Improving State-Tracking in Linear RNNs via Householder
Products").

Each token writes to the state with n = num_householder delta-rule steps (a product of n generalized Householder
transitions) after one Mamba-2 style decay:
    S = alpha_t S_{t-1};  for j < n: S = S (I - beta_tj k_tj^T k_tj) + beta_tj k_tj^T v_tj;   o_t = q_t S * scale
with log(alpha_t) = -exp(A_log) * softplus(W_a x_t + dt_bias) (use_forget_gate), beta_tj = sigmoid(W_b x_t)_j
(times 2 with allow_neg_eigval: eigenvalues in [-1, 1]), L2-normalized q and k, SiLU short convolutions on q, k, v,
and a gated RMSNorm output RMSNorm(o) * swish(W_g x). Keys, values and strengths have n rows per token
(`fla.ops.gated_delta_product`'s layout).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from fla.layers.utils import RecurrentStep, init_dt_bias, recurrent_flops_per_token, split_heads
from fla.modules import FusedRMSNormGated, RMSNorm, ShortConvolution
from fla.ops.gated_delta_product import chunk_gated_delta_product
from fla.ops.gated_delta_product.chunk import interleave_steps, steps_cu_seqlens
from fla.ops.gated_delta_rule import fused_recurrent_gated_delta_rule
from fla.ops.gated_delta_rule.gate import naive_gdn_gate


class GatedDeltaProduct(nn.Module):
    """Args (the peer library's names and defaults):
        hidden_size: model width D
        expand_v: value head width as a multiple of head_dim
        head_dim, num_heads: key head width K and query/key heads H
        num_v_heads: value heads HV, a multiple of H (grouped values); default H
        mode: the peer's kernel choice ("chunk", "fused_recurrent"): only checked; training runs the chunk kernels,
            decoding and short prompts the fused recurrent ones
        use_output_gate: gated output norm RMSNorm(o) * swish(W_g x) (else plain RMSNorm)
        use_short_conv / conv_size / conv_bias: causal depthwise SiLU convolutions on q, k, v
        use_forget_gate: the decay alpha_t (else none: DeltaProduct)
        allow_neg_eigval: beta in (0, 2) instead of (0, 1)
        num_householder: delta-rule steps per token
    The cached recurrent state is [B, HV, K, V] float32 (the peer's layout for this layer).
    """

    supports_cp = True  # cp_context reaches its op (on token boundaries) and its short convolutions

    _no_weight_decay = ("A_log", "dt_bias")

    def __init__(
        self,
        hidden_size: int = 2048,
        expand_v: float = 2,
        head_dim: int = 256,
        num_heads: int = 6,
        num_v_heads: int | None = None,
        mode: str = "chunk",
        use_output_gate: bool = True,
        use_short_conv: bool = True,
        conv_size: int = 4,
        conv_bias: bool = False,
        layer_idx: int | None = None,
        norm_eps: float = 1e-5,
        use_forget_gate: bool = True,
        allow_neg_eigval: bool = True,
        num_householder: int = 2,
    ):
        super().__init__()
        if mode not in ("chunk", "fused_recurrent"):
            raise ValueError(f"mode must be 'chunk' or 'fused_recurrent' (got {mode!r})")
        self.num_v_heads = num_v_heads or num_heads
        if self.num_v_heads % num_heads:
            raise ValueError(f"num_v_heads ({self.num_v_heads}) must be a multiple of num_heads ({num_heads})")
        if not math.isclose(head_dim * expand_v, int(head_dim * expand_v), rel_tol=1e-5):
            raise ValueError(f"head_dim * expand_v must be an integer (got {head_dim} * {expand_v})")
        if isinstance(num_householder, bool) or not isinstance(num_householder, int) or num_householder < 1:
            raise ValueError(f"num_householder must be a positive int (got {num_householder!r})")
        self.mode, self.hidden_size, self.expand_v = mode, hidden_size, expand_v
        self.head_dim, self.num_heads = head_dim, num_heads
        self.head_k_dim, self.head_v_dim = head_dim, int(head_dim * expand_v)
        self.key_dim, self.value_dim = num_heads * self.head_k_dim, self.num_v_heads * self.head_v_dim
        self.use_output_gate, self.use_short_conv, self.use_forget_gate = use_output_gate, use_short_conv, \
            use_forget_gate
        self.conv_size, self.conv_bias = conv_size, conv_bias
        self.allow_neg_eigval, self.num_householder = allow_neg_eigval, num_householder
        self.layer_idx = layer_idx
        self.chunk_size = 64
        n = num_householder

        self.q_proj = nn.Linear(hidden_size, self.key_dim, bias=False)
        self.k_proj = nn.Linear(hidden_size, self.key_dim * n, bias=False)
        self.v_proj = nn.Linear(hidden_size, self.value_dim * n, bias=False)
        self.b_proj = nn.Linear(hidden_size, self.num_v_heads * n, bias=False)
        if use_forget_gate:
            self.a_proj = nn.Linear(hidden_size, self.num_v_heads, bias=False)
            self.A_log = nn.Parameter(torch.empty(self.num_v_heads, dtype=torch.float32))
            self.dt_bias = nn.Parameter(torch.empty(self.num_v_heads, dtype=torch.float32))
            self.A_log._no_weight_decay = True
            self.dt_bias._no_weight_decay = True
        if use_short_conv:
            self.q_conv1d = ShortConvolution(self.key_dim, conv_size, bias=conv_bias, activation="silu")
            self.k_conv1d = ShortConvolution(self.key_dim * n, conv_size, bias=conv_bias, activation="silu")
            self.v_conv1d = ShortConvolution(self.value_dim * n, conv_size, bias=conv_bias, activation="silu")
        if use_output_gate:
            self.g_proj = nn.Linear(hidden_size, self.value_dim, bias=False)
            self.o_norm = FusedRMSNormGated(self.head_v_dim, eps=norm_eps)
        else:
            self.o_norm = RMSNorm(self.head_v_dim, eps=norm_eps, dtype=torch.float32)
        self.o_proj = nn.Linear(self.value_dim, hidden_size, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, dt_min: float = 0.001, dt_max: float = 0.1, dt_floor: float = 1e-4) -> None:
        """The gate parameters only (Mamba-2's init, as the peer's): A ~ U(0, 16), dt ~ logU(dt_min, dt_max) stored
        as softplus^-1(dt). The projections are initialized by the model."""
        if not self.use_forget_gate:
            return
        self.A_log.copy_(torch.empty_like(self.A_log).uniform_(0, 16).log())
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
        B, T = x.shape[:2]
        H, HV, K, V, n = self.num_heads, self.num_v_heads, self.head_k_dim, self.head_v_dim, self.num_householder
        q = split_heads(q, H, K)
        # per token the n steps' features side by side -> n rows per token: [B, T, n * H * K] -> [B, T * n, H, K]
        k, v = k.reshape(B, T * n, H, K), v.reshape(B, T * n, HV, V)
        beta = self.b_proj(x).sigmoid().reshape(B, T * n, HV)
        if self.allow_neg_eigval:
            beta = beta * 2
        g = naive_gdn_gate(self.a_proj(x), self.A_log, self.dt_bias) if self.use_forget_gate else None

        if step.mode == "fused_recurrent":  # the gated delta rule over the unrolled steps (see the op's chunk.py)
            o, final_state = fused_recurrent_gated_delta_rule(
                interleave_steps(q, n, first=False), k, v,
                g=interleave_steps(g, n, first=True) if g is not None else None, beta=beta,
                initial_state=step.initial_state, output_final_state=step.use_cache,
                cu_seqlens=steps_cu_seqlens(step.cu_seqlens, n), use_qk_l2norm_in_kernel=True)
            o = o.unflatten(1, (-1, n))[:, :, -1]
        else:
            o, final_state = chunk_gated_delta_product(q, k, v, g, beta, n, initial_state=step.initial_state,
                                                       output_final_state=step.use_cache,
                                                       use_qk_l2norm_in_kernel=True, cu_seqlens=step.cu_seqlens,
                                                       **step.cp_kwargs)
        if self.use_output_gate:
            o = self.o_norm(o, split_heads(self.g_proj(x), HV, V))
        else:
            o = self.o_norm(o)
        o = self.o_proj(o.reshape(B, T, self.value_dim))
        return step.finish(o, final_state), None, past_key_values

    def flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token: the chunked gated delta rule over n rows per token (see
        `recurrent_flops_per_token`)."""
        return self.num_householder * recurrent_flops_per_token(self.num_v_heads, self.head_k_dim, self.head_v_dim,
                                                                self.chunk_size, True)
