"""HGRN (Qin et al., 2023, "Hierarchically Gated Recurrent Neural Network for Sequence Modeling").

An element-wise gated linear recurrence with a forget gate bounded below per layer:
    f_t = lambda + (1 - lambda) * sigmoid(W_f x_t)           (lambda: the layer's lower bound, 0 in the first layer)
    h_t = f_t * h_{t-1} + (1 - f_t) * silu(W_i x_t)
    o_t = W_o (RMSNorm(h_t) * silu(W_g x_t))
computed in log space (log f_t = logaddexp(log lambda, log(1 - lambda) + logsigmoid(W_f x_t))) by `fla.ops.hgrn`.
The lower bounds come from the model (`HGRNModel`: a softmax over layers, cumulated, so deeper layers forget less).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from fla.layers.utils import RecurrentStep
from fla.modules import FusedRMSNormGated, ShortConvolution, swiglu
from fla.ops.hgrn import chunk_hgrn, fused_recurrent_hgrn


def bounded_log_forget(f: torch.Tensor, lower_bound: torch.Tensor | None, layer_idx: int | None) -> torch.Tensor:
    """log(lambda + (1 - lambda) sigmoid(f)) from the raw gate f; plain logsigmoid(f) without a bound and in the
    first layer (whose bound is 0), as HGRN and HGRN-2 write it. float32: the gates are summed over time."""
    g = F.logsigmoid(f.float())
    if lower_bound is not None and layer_idx:
        lower_bound = lower_bound.float()
        g = torch.logaddexp(lower_bound.log(), torch.log1p(-lower_bound) + g)
    return g


class HGRNAttention(nn.Module):
    """Args (the peer library's):
        mode: the peer's kernel choice ("chunk", "fused_recurrent"): only checked; training runs the chunk kernels,
            decoding and short prompts the fused recurrent ones
        hidden_size: model width D; expand_ratio: recurrence width as a multiple of D
        use_short_conv / conv_size / conv_bias: causal depthwise convolutions (no activation) on the input and forget
            projections
        elementwise_affine / norm_eps: the output RMSNorm
    forward takes `lower_bound` [input_dim] (the model's, for this layer) besides the common arguments.
    The cached recurrent state is [B, input_dim] float32.
    """

    supports_cp = True  # cp_context reaches its op and its short convolutions

    def __init__(
        self,
        mode: str = "chunk",
        hidden_size: int = 1024,
        expand_ratio: int | None = 1,
        use_short_conv: bool = False,
        conv_size: int = 4,
        conv_bias: bool = False,
        elementwise_affine: bool | None = True,
        norm_eps: float = 1e-5,
        layer_idx: int | None = None,
    ):
        super().__init__()
        if mode not in ("chunk", "fused_recurrent"):
            raise ValueError(f"mode must be 'chunk' or 'fused_recurrent' (got {mode!r})")
        self.mode = mode
        self.hidden_size, self.expand_ratio = hidden_size, expand_ratio
        self.input_dim = int(hidden_size * expand_ratio)
        self.use_short_conv, self.conv_size, self.conv_bias = use_short_conv, conv_size, conv_bias
        self.layer_idx = layer_idx

        self.i_proj = nn.Linear(hidden_size, self.input_dim, bias=False)
        self.f_proj = nn.Linear(hidden_size, self.input_dim, bias=False)
        self.g_proj = nn.Linear(hidden_size, self.input_dim, bias=False)
        if use_short_conv:
            self.f_conv1d = ShortConvolution(self.input_dim, conv_size, bias=conv_bias, activation=None)
            self.i_conv1d = ShortConvolution(self.input_dim, conv_size, bias=conv_bias, activation=None)
        self.g_norm = FusedRMSNormGated(self.input_dim, elementwise_affine=bool(elementwise_affine), eps=norm_eps)
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
        x = step.x
        i, f = step.project(self, "i", "f")  # the peer's cache order: (input, forget)
        g = bounded_log_forget(f, lower_bound, self.layer_idx)
        i = swiglu(i, (1 - g.exp()).to(i.dtype))  # (1 - f_t) * silu(W_i x_t)
        op = fused_recurrent_hgrn if step.mode == "fused_recurrent" else chunk_hgrn
        o, final_state = op(i, g, initial_state=step.initial_state, output_final_state=step.use_cache,
                            cu_seqlens=step.cu_seqlens, **step.cp_kwargs)
        o = self.o_proj(self.g_norm(o, self.g_proj(x)))
        return step.finish(o, final_state), None, past_key_values

    def flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token outside the projections: no matmul, but the gates and the recurrence are all this
        mixer computes, ~20 element-wise FLOPs per channel (logsigmoid and the lower bound's logaddexp ~8, the
        input's swiglu with 1 - f ~5, h = a h + x with a = exp(g) 3, the output gate's silu and product ~4)."""
        return 20.0 * self.input_dim
