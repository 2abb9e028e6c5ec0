"""What every mixer shares: padded batches <-> packed sequences, rotary positions, the decode-or-train choice.

Padding is handled by packing: the real tokens of a left- (or right-) padded batch `[B, T, D]` become one packed
sequence `[1, T_real, D]` with `cu_seqlens`, the ops run on it exactly as on packed training data (no state crosses a
boundary and padding never touches a state), and the output is scattered back to `[B, T, D]` with zeros at the pads.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from fla.modules import FusedRMSNormGated, RMSNorm

# Prompts up to this length go through the fused recurrent kernels when not training (one walk over the sequence is
# cheaper than the chunk machinery for short inputs; decoding is always one token).
FUSED_RECURRENT_MAX_LEN = 64


def choose_mode(training: bool, seq_len: int) -> str:
    """"chunk" for training and long prompts, "fused_recurrent" for decoding and short prompts."""
    return "fused_recurrent" if not training and seq_len <= FUSED_RECURRENT_MAX_LEN else "chunk"


def current_token_mask(attention_mask: torch.Tensor | None, seq_len: int) -> torch.Tensor | None:
    """The 0/1 mask `[B, seq_len]` of the tokens in this call (the last `seq_len` columns of a generation mask that
    also covers the cached tokens), or None when every token is real."""
    if attention_mask is None:
        return None
    if attention_mask.dim() != 2:
        raise ValueError(
            f"attention_mask must be a 2-D 0/1 padding mask [batch, seq_len] (got shape {list(attention_mask.shape)}); "
            "causality is built in, do not pass a 4-D attention bias"
        )
    mask = attention_mask[:, -seq_len:].bool()
    return None if bool(mask.all()) else mask


def unpad(
    hidden_states: torch.Tensor, mask: torch.Tensor | None, cu_seqlens: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Pack the real tokens of a padded batch.

    Args:
        hidden_states: [B, T, D]
        mask: [B, T] bool (True = real token) or None
        cu_seqlens: [N + 1] or None (packed input already)
    Returns:
        x: [1, T_real, D] (or the input when nothing is padded); cu_seqlens: [B + 1] int32 (or the given one);
        indices: [T_real] flat positions of the real tokens in [B * T], or None when nothing was packed
    """
    if mask is None:
        return hidden_states, cu_seqlens, None
    if cu_seqlens is not None:
        raise ValueError(
            "pass either cu_seqlens (packed sequences, no padding) or an attention_mask with padding, not both"
        )
    indices = mask.flatten().nonzero().squeeze(-1)
    lens = mask.sum(-1, dtype=torch.int32)
    cu_seqlens = F.pad(lens.cumsum(0, dtype=torch.int32), (1, 0))
    return hidden_states.flatten(0, 1)[indices].unsqueeze(0), cu_seqlens, indices


def pad(x: torch.Tensor, indices: torch.Tensor | None, batch_size: int, seq_len: int) -> torch.Tensor:
    """Inverse of `unpad`: [1, T_real, ...] -> [B, T, ...] with zeros at the padded positions."""
    if indices is None:
        return x
    out = x.new_zeros(batch_size * seq_len, *x.shape[2:])
    out = out.index_put((indices,), x[0])
    return out.view(batch_size, seq_len, *x.shape[2:])


def rotary_offsets(attention_mask: torch.Tensor | None, past_len: int, batch_size: int) -> int | torch.Tensor:
    """Position of each row's first new token: the number of real tokens already in the cache (a [B] tensor when
    the cached part holds padding, else the int `past_len`)."""
    if attention_mask is None or past_len == 0:
        return past_len
    past_mask = attention_mask[:, :past_len]
    if bool(past_mask.all()):
        return past_len
    return past_mask.sum(-1).to(torch.int32)


class RecurrentStep:
    """The bookkeeping of one call of a recurrent mixer (all but softmax attention), so each mixer's forward reads as
    its paper's equations: pack the padded batch, read the cached state, pick chunk or fused recurrent kernels,
    run the short convolutions with their cached windows, then store the new state and unpack the output.

        step = RecurrentStep(self, hidden_states, attention_mask, past_key_values, use_cache, cu_seqlens)
        q, k, v = step.project(self, "q", "k", "v")  # q_proj, q_conv1d, ... with their cached windows
        ...
        o, final_state = op(q, k, v, ..., initial_state=step.initial_state, output_final_state=use_cache,
                            cu_seqlens=step.cu_seqlens)
        return step.finish(self.o_proj(o), final_state), None, past_key_values
    """

    def __init__(self, mixer, hidden_states, attention_mask, past_key_values, use_cache, cu_seqlens,
                 cp_context=None):
        check_cp_layer_call(mixer, cp_context, attention_mask, past_key_values, use_cache, cu_seqlens)
        self.cp_context = cp_context
        # what the chunked op and the short convolutions take under context parallelism (nothing otherwise, so
        # the fused recurrent ops, which have no cp_context, are called as before)
        self.cp_kwargs = {} if cp_context is None else {"cp_context": cp_context}
        self.batch_size, self.seq_len = hidden_states.shape[:2]
        self.layer_idx = mixer.layer_idx
        self.use_cache = use_cache and past_key_values is not None
        self.cache = past_key_values
        state = past_key_values.layer_state(mixer.layer_idx) if past_key_values is not None else None
        self.initial_state = state.recurrent_state if state is not None else None
        self._conv_in = state.conv_state if state is not None and state.conv_state is not None else ()
        self._conv_out: list[torch.Tensor | None] = []
        self.mode = "chunk" if cp_context is not None else choose_mode(mixer.training, self.seq_len)
        mask = current_token_mask(attention_mask, self.seq_len)
        self.x, self.cu_seqlens, self.indices = unpad(hidden_states, mask, cu_seqlens)

    def conv(self, idx: int, conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Short convolution number `idx` of this mixer, continuing from its cached window."""
        cache = self._conv_in[idx] if idx < len(self._conv_in) else None
        y, window = conv(x, cache=cache, output_final_state=self.use_cache, cu_seqlens=self.cu_seqlens,
                         **self.cp_kwargs)
        while len(self._conv_out) <= idx:
            self._conv_out.append(None)
        self._conv_out[idx] = window
        return y

    def project(self, mixer: nn.Module, *names: str, silu_without_conv: tuple[str, ...] = ()) -> list[torch.Tensor]:
        """The mixer's input projections `<name>_proj(x)` of the packed input, each through its short convolution
        `<name>_conv1d` when `mixer.use_short_conv` (cached window number i for the i-th name, so `names` is the
        cache order; per sequence with cu_seqlens; across ranks with cp_context). Without convolutions the names in
        `silu_without_conv` get the SiLU their convolution would have applied.

            q, k, v = step.project(self, "q", "k", "v", silu_without_conv=("q", "k", "v"))

        Returns: one [B', T', width] tensor per name (the packed layout of `self.x`)."""
        out = []
        for idx, name in enumerate(names):
            y = getattr(mixer, f"{name}_proj")(self.x)
            if mixer.use_short_conv:
                y = self.conv(idx, getattr(mixer, f"{name}_conv1d"), y)
            elif name in silu_without_conv:
                y = F.silu(y)
            out.append(y)
        return out

    def finish(self, o: torch.Tensor, final_state) -> torch.Tensor:
        """Store the new states (when caching) and unpack the output to [B, T, ...]."""
        if self.use_cache:
            conv_state = tuple(self._conv_out) if self._conv_out else None
            self.cache.update(recurrent_state=final_state, conv_state=conv_state, layer_idx=self.layer_idx,
                              offset=self.seq_len)
        return pad(o, self.indices, self.batch_size, self.seq_len)


def check_cp_layer_call(mixer, cp_context, attention_mask, past_key_values, use_cache, cu_seqlens) -> None:
    """What a mixer refuses under context parallelism: a mixer without CP support (its class sets
    `supports_cp = True` once its ops and convolutions take `cp_context`), padding, a cache, or cu_seqlens (the
    piece's boundaries come from the context)."""
    if cp_context is None:
        return
    if not getattr(mixer, "supports_cp", False):
        raise ValueError(f"{type(mixer).__name__} (layer {getattr(mixer, 'layer_idx', '?')}) does not support "
                         f"context parallelism yet (cp_context): train it without CP (context_parallel_degree = 1)")
    if attention_mask is not None or past_key_values is not None or use_cache or cu_seqlens is not None:
        raise ValueError("with cp_context pass neither attention_mask, a cache (use_cache) nor cu_seqlens: the "
                         "piece's document boundaries come from the context (build_cp_context takes the global "
                         "cu_seqlens); pack the documents instead of padding them")


def cp_rotary_args(cp_context, seq_len: int, device) -> tuple[int | torch.Tensor, torch.Tensor | None]:
    """(seqlen_offset, cu_seqlens) for RotaryEmbedding on this rank's piece: positions continue from the earlier
    ranks (varlen: the first document's tokens on them; every later document of the piece starts at 0)."""
    if not cp_context.is_varlen:
        return cp_context.rank * seq_len, None
    key = ("rotary_offsets", device)
    if key not in cp_context._memo:  # host data: no device read
        offsets = torch.zeros(cp_context.num_seqs, dtype=torch.long)
        offsets[0] = cp_context.conv_prefix_tokens(seq_len)
        cp_context._memo[key] = offsets.to(device, non_blocking=True)
    return cp_context._memo[key], cp_context.cu_seqlens


def recurrent_flops_per_token(num_heads: int, head_k_dim: int, head_v_dim: int, chunk_size: int = 64,
                              delta_rule: bool = False) -> float:
    """Forward FLOPs per token of a chunked linear-attention op (outside the projections), per the chunk form:
    intra-chunk scores q k^T and their product with v (2 * C * (K + V)), the inter-chunk read q S (2 * K * V) and the
    state update k^T v (2 * K * V); the delta rule adds the WY form (k k^T, its triangular solve applied to k and v,
    and w S: 2 * C * K + 2 * C * (K + V) + 2 * K * V). C = chunk size, counted without the causal half."""
    flops = 2 * chunk_size * (head_k_dim + head_v_dim) + 4 * head_k_dim * head_v_dim
    if delta_rule:
        flops += 2 * chunk_size * head_k_dim + 2 * chunk_size * (head_k_dim + head_v_dim) + 2 * head_k_dim * head_v_dim
    return float(num_heads * flops)


def split_heads(x: torch.Tensor, num_heads: int, head_dim: int) -> torch.Tensor:
    """[B, T, H * D] -> contiguous [B, T, H, D] (the ops check the layout in memory; convolutions may return a
    transposed view)."""
    return x.reshape(*x.shape[:2], num_heads, head_dim).contiguous()


def repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """[B, T, H_kv, D] -> [B, T, H_kv * groups, D], each head repeated `groups` times in a row (head h serves query
    heads h * groups ... h * groups + groups - 1)."""
    return x if groups == 1 else x.repeat_interleave(groups, dim=2)


def output_norm_name(use_output_gate: bool, gate_fn: str, fuse_norm: bool) -> str:
    """The attribute (and so checkpoint) name of the output norm of GLA and RetNet, as the peer library names it:
    `g_norm_swish_gate` for its fused swish-gated norm, `g_norm` for every other combination. The name depends on
    the config, so a fixed rename of checkpoint keys could not give the peer's names back on save."""
    return "g_norm_swish_gate" if use_output_gate and gate_fn == "swish" and fuse_norm else "g_norm"


def output_norm(dim: int, use_output_gate: bool, gate_fn: str, elementwise_affine: bool, eps: float) -> nn.Module:
    """Per-head RMSNorm of the output, gated (`norm(o, g) = RMSNorm(o) * gate_fn(g)`) when there is an output gate."""
    if use_output_gate:
        return FusedRMSNormGated(dim, elementwise_affine=elementwise_affine, eps=eps, activation=gate_fn)
    return RMSNorm(dim, elementwise_affine=elementwise_affine, eps=eps)


@torch.no_grad()
def init_dt_bias(dt_bias: torch.Tensor, dt_min: float, dt_max: float, dt_floor: float) -> None:
    """Mamba-2's time-step init, shared by every mixer with a softplus(x + dt_bias) gate: dt ~ logU(dt_min, dt_max)
    floored at dt_floor, stored as softplus^-1(dt) so that softplus(dt_bias) = dt at x = 0."""
    log_lo, log_hi = math.log(dt_min), math.log(dt_max)
    dt = torch.exp(torch.rand_like(dt_bias) * (log_hi - log_lo) + log_lo).clamp_min(dt_floor)
    dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
