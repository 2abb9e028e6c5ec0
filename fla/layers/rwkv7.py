"""RWKV-7 "Goose" time mixing (Peng et al., 2025), on the DPLR delta rule (`fla.ops.rwkv7`).

Per head, with the token shift x' = x_{t-1} - x_t (zero before a sequence's first token, or the cached last token):
    r, k, v = W_r (x + x' mu_r), W_k (x + x' mu_k), W_v (x + x' mu_v)      (one mu_* per channel: x_r, x_k, ...)
    w = -exp(-0.5) * sigmoid(LoRA_w(x + x' mu_w))             log decay in (-0.61, 0)
    a = sigmoid(LoRA_a(x + x' mu_a))                          in-context learning rate
    g = LoRA_g(x + x' mu_g)                                   output gate (sigmoid inside the LoRA)
    v = lerp(v, v_first, sigmoid(LoRA_v(x + x' mu_v)))        value residual to the first layer's v (not layer 0)
    kk = L2norm(k * k_k) per head;  k = k * (1 + (a - 1) * k_a)
    S_t = diag(exp(w_t)) S_{t-1} - (kk_t a_t)^T (kk_t S_{t-1}) + k_t^T v_t,   o_t = r_t S_t
    o = (GroupNorm(o) + sum(r * k * r_k) v) * g, then W_o
The parameter names are the peer library's (x_r ... x_g, k_k, k_a, r_k, r/k/v/o_proj, {w,v,a,g}_lora.lora.{0,2},
g_norm), and so is its initialization (`reset_parameters`). Padding is handled by packing (`fla.layers.utils`), so
v_first, which travels between layers, is in the packed layout of the call. Under context parallelism
(`cp_context`) the token shift takes the previous rank's last token (`fla.modules.token_shift`) and the op its state
(`chunk_rwkv7`); v_first is per token, so each rank's piece of it is all its later layers read.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from fla.layers.utils import (check_cp_layer_call, choose_mode, current_token_mask, pad, recurrent_flops_per_token,
                              unpad)
from fla.modules.token_shift import token_shift
from fla.ops.rwkv7 import chunk_rwkv7, fused_mul_recurrent_rwkv7

W_SCALE = 0.6065306597126334  # exp(-0.5): the largest decay step, w >= -exp(-0.5)


class LoRA(nn.Module):
    """x -> W_2 act(W_1 x) (+ b): the low-rank projections of RWKV (the peer's `lora.0` / `lora.2` names)."""

    def __init__(self, input_dim: int, output_dim: int, low_rank_dim: int, bias: bool = True,
                 activation: str | None = "tanh"):
        super().__init__()
        acts = {None: nn.Identity, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU}
        if activation not in acts:
            raise ValueError(f"LoRA activation must be one of {list(acts)} (got {activation!r})")
        self.input_dim, self.output_dim, self.low_rank_dim = input_dim, output_dim, low_rank_dim
        self.lora = nn.Sequential(nn.Linear(input_dim, low_rank_dim, bias=False), acts[activation](),
                                  nn.Linear(low_rank_dim, output_dim, bias=bias))
        self.bias_init: torch.Tensor | None = None  # the bias reset_parameters sets (the layer decides it)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The peer's: W_1 = 0, W_2 orthogonal with gain 0.1 (times sqrt(in / out) when wider than tall)."""
        nn.init.zeros_(self.lora[0].weight)
        out_dim, in_dim = self.lora[2].weight.shape
        gain = math.sqrt(in_dim / out_dim) if in_dim > out_dim else 1
        weight = self.lora[2].weight.float()
        nn.init.orthogonal_(weight, gain=gain * 0.1)
        self.lora[2].weight.copy_(weight)
        if self.lora[2].bias is not None:
            if self.bias_init is not None:
                self.lora[2].bias.copy_(self.bias_init)
            else:
                nn.init.zeros_(self.lora[2].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lora(x)


def _low_rank(given: int | None, scale: float, hidden_size: int, factor: float) -> int:
    # the peer's default LoRA widths: round(scale * sqrt(D) * factor / 32) * 32, at least 32
    return given if given is not None else max(32, int(round(scale * hidden_size ** 0.5 * factor / 32) * 32))


class RWKV7Attention(nn.Module):
    """Args (the peer's):
        mode: "chunk" or "fused_recurrent" (checked; the kernels are picked per call: chunk for training and long
            prompts, fused recurrent for decoding)
        hidden_size: model width D (= key width); head_dim / num_heads: one of them sets the heads
        decay_low_rank_dim, gate_low_rank_dim, a_low_rank_dim, v_low_rank_dim: LoRA widths (defaults from D)
        elementwise_affine: affine GroupNorm; norm_eps: its eps per channel (the GroupNorm eps is head_dim * norm_eps)
        layer_idx, num_hidden_layers: position in the stack (layer 0 makes v_first; the init depends on both)
        fuse_norm: the peer's kernel choice (same math here)
        value_dim: value width (default D)
    forward(...) -> (o, None, past_key_values, v_first). The cache keeps the recurrent state [B, H, K, V] and, as
    conv_state, the last token of the input [B, D] (for the token shift).
    """

    supports_cp = True  # cp_context reaches its token shift and its op

    def __init__(
        self,
        mode: str = "chunk",
        hidden_size: int = 1024,
        head_dim: int | None = 64,
        num_heads: int | None = None,
        decay_low_rank_dim: int | None = None,
        gate_low_rank_dim: int | None = None,
        a_low_rank_dim: int | None = None,
        v_low_rank_dim: int | None = None,
        elementwise_affine: bool | None = True,
        norm_eps: float = 1e-5,
        layer_idx: int | None = None,
        fuse_norm: bool = False,
        value_dim: int | None = None,
        num_hidden_layers: int | None = None,
        **kwargs,
    ):
        super().__init__()
        if mode not in ("chunk", "fused_recurrent"):
            raise ValueError(f"mode must be 'chunk' or 'fused_recurrent' (got {mode!r})")
        if head_dim is None and num_heads is None:
            raise ValueError("give head_dim or num_heads")
        self.mode, self.hidden_size, self.key_dim = mode, hidden_size, hidden_size
        self.value_dim = value_dim if value_dim is not None else hidden_size
        if head_dim is not None:
            self.head_dim, self.num_heads = head_dim, hidden_size // head_dim
        else:
            self.head_dim, self.num_heads = hidden_size // num_heads, num_heads
        if self.head_dim * self.num_heads != hidden_size or self.value_dim % self.num_heads:
            raise ValueError(f"hidden_size {hidden_size} and value_dim {self.value_dim} must split into "
                             f"{self.num_heads} heads of {self.head_dim}")
        self.head_v_dim = self.value_dim // self.num_heads
        factor = self.head_dim / 64  # wider heads get wider LoRAs (the peer's rule)
        self.decay_low_rank_dim = _low_rank(decay_low_rank_dim, 2.5, hidden_size, factor)
        self.gate_low_rank_dim = _low_rank(gate_low_rank_dim, 5, hidden_size, 1)
        self.a_low_rank_dim = _low_rank(a_low_rank_dim, 2.5, hidden_size, factor)
        self.v_low_rank_dim = _low_rank(v_low_rank_dim, 1.7, hidden_size, factor)
        self.layer_idx, self.num_hidden_layers = layer_idx, num_hidden_layers
        self.fuse_norm, self.norm_eps = fuse_norm, norm_eps

        D = hidden_size
        for name in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g"):
            setattr(self, name, nn.Parameter(torch.zeros(1, 1, D)))
        self.k_k = nn.Parameter(torch.zeros(self.key_dim))
        self.k_a = nn.Parameter(torch.zeros(self.key_dim))
        self.r_k = nn.Parameter(torch.zeros(self.num_heads, self.head_dim))
        self.r_proj = nn.Linear(D, self.key_dim, bias=False)
        self.k_proj = nn.Linear(D, self.key_dim, bias=False)
        self.v_proj = nn.Linear(D, self.value_dim, bias=False)
        self.o_proj = nn.Linear(self.value_dim, D, bias=False)
        self.w_lora = LoRA(D, self.key_dim, self.decay_low_rank_dim, activation="tanh")
        if self.layer_idx != 0:
            self.v_lora = LoRA(D, self.value_dim, self.v_low_rank_dim, activation=None)
        self.a_lora = LoRA(D, self.key_dim, self.a_low_rank_dim, activation=None)
        self.g_lora = LoRA(D, self.value_dim, self.gate_low_rank_dim, activation="sigmoid", bias=False)
        self.g_norm = nn.GroupNorm(self.num_heads, self.value_dim, eps=self.head_dim * norm_eps,
                                   affine=bool(elementwise_affine))
        for child in self.modules():
            child._rwkv_owned = child is not self  # a model's init leaves them to reset_parameters
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The peer's init (RWKV-7's): token-shift mixes and LoRA biases by channel and depth, orthogonal r/k/v,
        zero o_proj (the model rescales it), GroupNorm weight by depth."""
        D, L = self.hidden_size, self.num_hidden_layers
        idx = 0 if self.layer_idx is None else self.layer_idx
        ratio_0_to_1 = idx / (L - 1) if L is not None and L > 1 else 0.0
        ratio_1_to_almost0 = 1.0 - idx / L if L else 1.0
        n = torch.arange(D, dtype=torch.float32)
        ddd = (n / D).view(1, 1, D)
        linear = n / max(D - 1, 1) - 0.5
        zigzag = ((n % self.head_dim) - (self.head_dim - 1) / 2) / max((self.head_dim - 1) / 2, 1e-6)
        zigzag = zigzag * zigzag.abs()
        www = -6 + 6 * (n / max(D - 1, 1)) ** (1 + ratio_0_to_1 ** 0.3)
        for name, power in (("x_r", 0.2), ("x_w", 0.9), ("x_k", 0.7), ("x_v", 0.7), ("x_a", 0.9), ("x_g", 0.2)):
            getattr(self, name).copy_(1.0 - ddd ** (power * ratio_1_to_almost0))
        self.k_a.fill_(1.02)
        self.r_k.fill_(-0.04)
        self.k_k.copy_(0.71 - linear * 0.1)
        self.w_lora.bias_init = www + 0.5 + zigzag * 2.5
        self.a_lora.bias_init = -0.19 + zigzag * 0.3 + linear * 0.4
        loras = [self.w_lora, self.a_lora, self.g_lora]
        if self.layer_idx != 0:
            self.v_lora.bias_init = 0.73 - linear * 0.4
            loras.append(self.v_lora)
        for lora in loras:
            lora.reset_parameters()
        if self.g_norm.weight is not None:
            self.g_norm.weight.fill_(((idx + 1) / L) ** 0.7 if L else 1.0)
            self.g_norm.bias.zero_()
        for proj, gain in ((self.r_proj, 1.0), (self.k_proj, 0.1), (self.v_proj, 1.0)):
            weight = proj.weight.float()
            nn.init.orthogonal_(weight, gain=gain)
            proj.weight.copy_(weight)
        self.o_proj.weight.zero_()

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values=None,
        use_cache: bool = False,
        output_attentions: bool = False,
        v_first: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        **kwargs,
    ):
        cp_context = kwargs.get("cp_context")
        check_cp_layer_call(self, cp_context, attention_mask, past_key_values, use_cache, cu_seqlens)
        batch_size, seq_len = hidden_states.shape[:2]
        state = past_key_values.layer_state(self.layer_idx) if past_key_values is not None else None
        use_cache = use_cache and past_key_values is not None
        x, cu, indices = unpad(hidden_states, current_token_mask(attention_mask, seq_len), cu_seqlens)
        shift_cache = state.conv_state if state is not None else None
        delta, last = token_shift(x, cu, shift_cache, output_cache=True, cp_context=cp_context)
        xr, xw, xk, xv, xa, xg = (x + delta * getattr(self, n) for n in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g"))

        r, k, v = self.r_proj(xr), self.k_proj(xk), self.v_proj(xv)
        w = -W_SCALE * self.w_lora(xw).sigmoid()
        if self.layer_idx == 0:
            v_first = v
        else:
            if v_first is None:
                raise ValueError(f"layer {self.layer_idx}: v_first (the first layer's values) must be passed")
            v = torch.lerp(v, v_first, self.v_lora(xv).sigmoid())
        a = self.a_lora(xa).sigmoid()
        g = self.g_lora(xg)
        H, K, V = self.num_heads, self.head_dim, self.head_v_dim
        heads = lambda t, d: t.view(*t.shape[:2], H, d)  # noqa: E731
        kk = F.normalize(heads(k * self.k_k, K), dim=-1)
        k = k.addcmul(k * (a - 1), self.k_a)
        r, w, k, a, vh = heads(r, K), heads(w, K), heads(k, K), heads(a, K), heads(v, V)

        initial_state = state.recurrent_state if state is not None else None
        if cp_context is not None:  # the chunked op has the CP path (decoding never runs under CP)
            o, final_state = chunk_rwkv7(r, w, k, vh, -kk, kk * a, scale=1.0, cp_context=cp_context)
        elif choose_mode(self.training, seq_len) == "chunk":
            o, final_state = chunk_rwkv7(r, w, k, vh, -kk, kk * a, scale=1.0, initial_state=initial_state,
                                         output_final_state=use_cache, cu_seqlens=cu)
        else:
            o, final_state = fused_mul_recurrent_rwkv7(r, w, k, vh, kk, a, scale=1.0, initial_state=initial_state,
                                                       output_final_state=use_cache, cu_seqlens=cu)
        if use_cache:
            past_key_values.update(recurrent_state=final_state, conv_state=last, layer_idx=self.layer_idx,
                                   offset=seq_len)
        o = self.g_norm(o.reshape(-1, self.value_dim)).view(*o.shape[:2], self.value_dim)
        o = (o + ((r * k * self.r_k).sum(-1, keepdim=True) * vh).view(o.shape)) * g
        o = self.o_proj(o)
        return pad(o, indices, batch_size, seq_len), None, past_key_values, v_first

    def flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token of the chunked DPLR op (counted as a delta-rule op, see
        `recurrent_flops_per_token`)."""
        return recurrent_flops_per_token(self.num_heads, self.head_dim, self.head_v_dim, 16, True)
