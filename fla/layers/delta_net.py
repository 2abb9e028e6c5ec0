"""DeltaNet (Schlag et al., 2021; parallelized by Yang et al., 2024, "Parallelizing Linear Transformers with the Delta
Rule over Sequence Length").

S_t = S_{t-1} + beta_t k_t^T (v_t - k_t S_{t-1}),   o_t = q_t S_t * scale
with q, k activated (SiLU by default) and normalized per head (L2 inside the kernel, or by their L1 norm),
beta_t = sigmoid(W_b x_t) (times 2 to allow negative eigenvalues), short convolutions on q, k, v, and a per-head
RMSNorm (optionally gated) on the output.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from fla.layers.feature_maps import elu_p1, sum_norm
from fla.layers.utils import RecurrentStep, recurrent_flops_per_token, split_heads
from fla.modules import FusedRMSNormGated, RMSNorm, ShortConvolution
from fla.ops.delta_rule import chunk_delta_rule, fused_recurrent_delta_rule

QK_ACTIVATIONS = {"silu": F.silu, "relu": F.relu, "elu": elu_p1, "identity": lambda x: x}


class DeltaNet(nn.Module):
    """Args:
        hidden_size: model width D
        expand_k / expand_v: key and value widths as multiples of D
        num_heads: heads H
        use_beta: learned per-token writing strength (else beta = 1)
        use_short_conv / conv_size / conv_bias: causal depthwise convolutions on q, k, v; SiLU on v always, on q and
            k when qk_activation is "silu" (without convolutions the same activations apply directly)
        use_gate: o = RMSNorm(o) * swish(W_g x) instead of RMSNorm(o)
        allow_neg_eigval: beta in (0, 2) instead of (0, 1) (2 without use_beta)
        qk_activation: "silu", "relu", "elu" (elu + 1) or "identity" on q and k
        qk_norm: "l2" (in the kernel) or "sum" (q / sum |q|, k likewise)
    """

    supports_cp = True  # cp_context reaches its op, its short convolutions and its rotary positions

    def __init__(
        self,
        hidden_size: int = 1024,
        expand_k: float = 1.0,
        expand_v: float = 1.0,
        num_heads: int = 4,
        use_beta: bool = True,
        use_short_conv: bool = True,
        conv_size: int = 4,
        conv_bias: bool = False,
        use_gate: bool = False,
        allow_neg_eigval: bool = False,
        norm_eps: float = 1e-6,
        chunk_size: int = 64,
        layer_idx: int | None = None,
        *,
        qk_activation: str = "silu",
        qk_norm: str = "l2",
    ):
        super().__init__()
        if qk_activation not in QK_ACTIVATIONS:
            raise ValueError(f"qk_activation must be one of {sorted(QK_ACTIVATIONS)} (got {qk_activation!r})")
        if qk_norm not in ("l2", "sum"):
            raise ValueError(f"qk_norm must be 'l2' or 'sum' (got {qk_norm!r})")
        self.qk_activation, self.qk_norm = qk_activation, qk_norm
        self.hidden_size, self.num_heads = hidden_size, num_heads
        self.key_dim, self.value_dim = int(hidden_size * expand_k), int(hidden_size * expand_v)
        if self.key_dim % num_heads or self.value_dim % num_heads:
            raise ValueError(
                f"key_dim ({self.key_dim}) and value_dim ({self.value_dim}) must be divisible by "
                f"num_heads ({num_heads})"
            )
        self.head_k_dim, self.head_v_dim = self.key_dim // num_heads, self.value_dim // num_heads
        self.use_beta, self.use_short_conv, self.use_gate = use_beta, use_short_conv, use_gate
        self.allow_neg_eigval = allow_neg_eigval
        self.chunk_size = chunk_size
        self.layer_idx = layer_idx

        self.q_proj = nn.Linear(hidden_size, self.key_dim, bias=False)
        self.k_proj = nn.Linear(hidden_size, self.key_dim, bias=False)
        self.v_proj = nn.Linear(hidden_size, self.value_dim, bias=False)
        if use_beta:
            self.b_proj = nn.Linear(hidden_size, num_heads, bias=False)
        if use_short_conv:
            qk_act = "silu" if qk_activation == "silu" else None  # other activations come after the heads split
            self.q_conv1d = ShortConvolution(self.key_dim, conv_size, bias=conv_bias, activation=qk_act)
            self.k_conv1d = ShortConvolution(self.key_dim, conv_size, bias=conv_bias, activation=qk_act)
            self.v_conv1d = ShortConvolution(self.value_dim, conv_size, bias=conv_bias, activation="silu")
        if use_gate:
            self.g_proj = nn.Linear(hidden_size, self.value_dim, bias=False)
            self.o_norm = FusedRMSNormGated(self.head_v_dim, eps=norm_eps)
        else:
            self.o_norm = RMSNorm(self.head_v_dim, eps=norm_eps)
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
        # without convolutions the SiLU they carry: on v always, on q and k when it is the qk_activation
        silu = ("q", "k", "v") if self.qk_activation == "silu" else ("v",)
        q, k, v = step.project(self, "q", "k", "v", silu_without_conv=silu)
        H, K, V = self.num_heads, self.head_k_dim, self.head_v_dim
        q, k, v = split_heads(q, H, K), split_heads(k, H, K), split_heads(v, H, V)
        if self.qk_activation != "silu":
            q, k = QK_ACTIVATIONS[self.qk_activation](q), QK_ACTIVATIONS[self.qk_activation](k)
        if self.qk_norm == "sum":
            q, k = sum_norm(q), sum_norm(k)
        beta = self.b_proj(x).sigmoid() if self.use_beta else x.new_ones(*x.shape[:2], self.num_heads)
        if self.allow_neg_eigval:  # also without use_beta (beta = 2), as in the peer library
            beta = beta * 2

        op = fused_recurrent_delta_rule if step.mode == "fused_recurrent" else chunk_delta_rule
        o, final_state = op(q, k, v, beta, initial_state=step.initial_state, output_final_state=step.use_cache,
                            cu_seqlens=step.cu_seqlens, **step.cp_kwargs, use_qk_l2norm_in_kernel=self.qk_norm == "l2")
        if self.use_gate:
            o = self.o_norm(o, split_heads(self.g_proj(x), H, V))
        else:
            o = self.o_norm(o)
        o = self.o_proj(o.reshape(*o.shape[:2], self.value_dim))
        return step.finish(o, final_state), None, past_key_values

    def flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token of the chunked delta-rule op (see `recurrent_flops_per_token`)."""
        return recurrent_flops_per_token(self.num_heads, self.head_k_dim, self.head_v_dim, self.chunk_size, True)
