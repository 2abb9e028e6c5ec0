"""The generation cache: per layer a recurrent state, short-convolution states and (softmax attention layers) keys
and values.

It subclasses transformers' `Cache` so that `generate()` keeps it between steps, but its layers are our own:
a linear-attention layer holds a fixed-size state, not a growing key/value list, and a hybrid model mixes both kinds.

Layout (what the mixers in `fla.layers` read and write):
- `recurrent_state`: float32 [B, H, K, V] (or a tuple of such for mixers with several states)
- `conv_state`: tuple of [B, D, W] short-convolution windows (one per convolved projection)
- `attn_state`: (keys, values) [B, S, H_kv, D_head], in the padded layout of the inputs (the attention mask says
  which positions are real)
- `seen_tokens`: how many input columns (padding included) this layer has consumed, which is what `generate()` asks
  `get_seq_length()` for.
"""
from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache


def _map_tensors(value: Any, fn) -> Any:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return fn(value)
    return tuple(_map_tensors(v, fn) for v in value)


class FLALayerCache:
    """The state of one layer. Implements the few per-layer methods `Cache` calls."""

    is_sliding = False
    is_compileable = False
    is_croppable = False
    supports_early_init = False
    is_initialized = True

    def __init__(self) -> None:
        self.recurrent_state: Any = None
        self.conv_state: Any = None
        self.attn_state: tuple[torch.Tensor, torch.Tensor] | None = None
        self.seen_tokens = 0

    def __repr__(self) -> str:
        return f"FLALayerCache(seen_tokens={self.seen_tokens})"

    def _apply(self, fn) -> None:
        self.recurrent_state = _map_tensors(self.recurrent_state, fn)
        self.conv_state = _map_tensors(self.conv_state, fn)
        self.attn_state = _map_tensors(self.attn_state, fn)

    @property
    def batch_size(self) -> int:
        for value in (self.recurrent_state, self.conv_state, self.attn_state):
            while isinstance(value, tuple):
                value = value[0] if value else None
            if isinstance(value, torch.Tensor):
                return value.shape[0]
        return -1

    def get_seq_length(self) -> int:
        return self.seen_tokens

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.__init__()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._apply(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._apply(lambda t: t[indices])

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._apply(lambda t: t.repeat_interleave(repeats, dim=0))

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise NotImplementedError("a recurrent state cannot be rolled back: FLACache does not support crop()")

    def offload(self) -> None:
        self._apply(lambda t: t.to("cpu", non_blocking=True))

    def prefetch(self) -> None:  # states stay where they are
        pass


class FLACache(Cache):
    """Cache for `fla.models`: `FLACache()` starts empty; layers are created as the mixers first write to them."""

    def __init__(self, num_layers: int | None = None) -> None:
        super().__init__(layers=[FLALayerCache() for _ in range(num_layers or 0)])

    # --- what the mixers use -------------------------------------------------------------------------------------
    def layer_state(self, layer_idx: int) -> FLALayerCache | None:
        """The state layer `layer_idx` left at its last call, or None if it has not written one yet."""
        if layer_idx < len(self.layers) and self.layers[layer_idx].seen_tokens > 0:
            return self.layers[layer_idx]
        return None

    def update_state(
        self,
        layer_idx: int,
        offset: int,
        recurrent_state: Any = None,
        conv_state: Any = None,
        attn_state: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> FLALayerCache:
        """Record what layer `layer_idx` produced after consuming `offset` more input columns. A recurrent or conv
        state replaces the old one; keys and values are appended along time. Returns the layer's cache."""
        while len(self.layers) <= layer_idx:
            self.layers.append(FLALayerCache())
        layer = self.layers[layer_idx]
        if recurrent_state is not None:
            layer.recurrent_state = recurrent_state
        if conv_state is not None:
            layer.conv_state = conv_state
        if attn_state is not None:
            if layer.attn_state is None:
                layer.attn_state = tuple(attn_state)
            else:
                layer.attn_state = tuple(torch.cat([old, new], dim=1) for old, new in zip(layer.attn_state, attn_state))
        layer.seen_tokens += offset
        return layer

    # --- what transformers' generate() asks ----------------------------------------------------------------------
    def get_seq_length(self, layer_idx: int = 0) -> int:
        if layer_idx >= len(self.layers):
            return 0
        return self.layers[layer_idx].seen_tokens

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.get_seq_length(layer_idx) + query_length, 0

    def has_previous_state(self, layer_idx: int | None = None, state_idx: int | None = None) -> bool:
        return self.get_seq_length(layer_idx or 0) > 0

    @property
    def is_compileable(self) -> bool:
        return False

    @property
    def is_croppable(self) -> bool:
        return False

    @property
    def is_linear(self) -> list[bool]:
        return [layer.attn_state is None for layer in self.layers]

    @property
    def is_dummy(self) -> list[bool]:
        return [False] * len(self.layers)

    @property
    def batch_size(self) -> int:
        sizes = {layer.batch_size for layer in self.layers} - {-1}
        if len(sizes) > 1:
            raise ValueError(f"the batch size is not consistent across layers: {sorted(sizes)}")
        return sizes.pop() if sizes else -1

    def __repr__(self) -> str:
        return f"FLACache(layers={len(self.layers)}, seen_tokens={self.get_seq_length()})"
