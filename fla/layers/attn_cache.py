"""The key/value cache of the softmax-attention mixers (`Attention`, `ForgettingAttention`): one reading of it.

A layer's `attn_state` is (keys, values[, extra...]) of the last S input columns, keys and values as
[B, S, H_kv * D] (the peer library's layout), padding stored as zeros; with a sliding window the cache keeps only
the last `window_size` columns. Prefill packs the padded batch and runs the flash kernel; once the cache holds
keys, new queries attend to cached + new keys through `visible_keys`' mask.
"""
from __future__ import annotations

import torch

from fla.layers.utils import current_token_mask, unpad


def pack_tokens(attention_mask: torch.Tensor | None, cu_seqlens: torch.Tensor | None,
                *xs: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor | None, torch.Tensor | None]:
    """The real tokens of each [B, T, ...] tensor packed as [1, T_real, ...] (see `unpad`), the `cu_seqlens` of the
    packed batch (or the given one) and the positions to `pad` back with (None when nothing is padded)."""
    mask = current_token_mask(attention_mask, xs[0].shape[1])
    packed, cu, indices = [], cu_seqlens, None
    for x in xs:
        y, cu, indices = unpad(x, mask, cu_seqlens)
        packed.append(y)
    return packed, cu, indices


def with_cached(state, *new: torch.Tensor) -> list[torch.Tensor]:
    """The cached tensors of `state.attn_state` followed by this call's: [B, S, ...] + [B, T, ...] ->
    [B, S + T, ...], each cached one viewed in its new tensor's layout (keys [B, S, H_kv * D] -> [B, S, H_kv, D])."""
    return [torch.cat([old.view(x.shape[0], -1, *x.shape[2:]), x], dim=1) for old, x in zip(state.attn_state, new)]


def visible_keys(attention_mask: torch.Tensor | None, batch_size: int, seq_len: int, num_keys: int, past_len: int,
                 window_size: int | None, device: torch.device) -> torch.Tensor:
    """Which keys each new query may see: queries at columns past_len .. past_len + T - 1, keys the last S columns
    up to past_len + T (all of them, or the window the cache kept). Causal, within the window, not padding; a padded
    query (its output is discarded) still sees itself, so no row is empty.

    Args:
        attention_mask: [B, past_len + T] 0/1 mask of the whole sequence so far, or None
    Returns:
        [B, T, S] bool
    """
    T, S = seq_len, num_keys
    i = torch.arange(T, device=device)[:, None] + past_len
    j = torch.arange(S, device=device)[None, :] + (past_len + T - S)
    allowed = j <= i
    if window_size is not None:
        allowed = allowed & (i - j < window_size)
    allowed = allowed[None].expand(batch_size, T, S)
    if attention_mask is not None:
        if attention_mask.shape[-1] != past_len + T:
            raise ValueError(
                f"attention_mask covers {attention_mask.shape[-1]} positions but the cache plus the new tokens "
                f"hold {past_len + T}: pass the mask of the whole sequence so far"
            )
        allowed = (allowed & attention_mask[:, None, -S:].bool()) | (i == j)[None]
    return allowed


def store_kv(mixer, past_key_values, use_cache: bool, seq_len: int, k: torch.Tensor, v: torch.Tensor,
             *extra: torch.Tensor) -> None:
    """Append this call's keys and values [B, T, H_kv, D] (stored as [B, T, H_kv * D]) and any extra per-column
    state (ForgettingAttention's log gates [B, T, H]) to the mixer's cache, trimmed to its window, when caching."""
    if use_cache and past_key_values is not None:
        past_key_values.update(attn_state=(k.flatten(-2), v.flatten(-2), *extra), layer_idx=mixer.layer_idx,
                               offset=seq_len, cache_kwargs={"window_size": mixer.window_size})
