"""The generation cache: per layer a recurrent state, short-convolution states and (softmax attention layers) keys
and values.

It subclasses transformers' `Cache` so that `generate()` keeps it between steps, but its layers are our own:
a linear-attention layer holds a fixed-size state, not a growing key/value list, and a hybrid model mixes both kinds.

The API and the layout are the peer library's (its `fla.models.utils.Cache` / `FLACache`), so code written for it
reads and writes the same tensors here:
- `cache.update(recurrent_state=, attn_state=, conv_state=, ffn_state=, layer_idx=, offset=, cache_kwargs=)`
- `cache[i]`: layer i's states as a dict-like view {"recurrent_state", "attn_state", "conv_state", "ffn_state"}
  (writing into it writes the cache); `len(cache)`, iteration, `to_legacy_cache()` / `from_legacy_cache(...)`
- `recurrent_state`: float32 [B, H, K, V] (GLA and Gated DeltaNet: [B, H, V, K]; a pair for normalized linear
  attention; the layer's docstring says which)
- `conv_state`: tuple of [B, D, W] short-convolution windows (one per convolved projection; Mamba-2: one tensor
  [B, conv_dim, W] for its single x/B/C convolution, as the peer stores it)
- `attn_state`: (keys, values) [B, S, H_kv * D_head] (Forgetting Attention adds its log forget gates [B, S, H]
  float32 as a third), in the padded layout of the inputs (the attention mask says which positions are real); with
  a sliding window only the last `window_size` columns are kept
- `seen_tokens`: how many input columns (padding included) this layer has consumed, which is what `generate()` asks
  `get_seq_length()` for.
"""
from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any, Iterator

import torch
from transformers.cache_utils import Cache

STATE_NAMES = ("recurrent_state", "attn_state", "conv_state", "ffn_state")


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
        self.ffn_state: Any = None
        self.seen_tokens = 0

    def __repr__(self) -> str:
        return f"FLALayerCache(seen_tokens={self.seen_tokens})"

    def _apply(self, fn) -> None:
        for name in STATE_NAMES:
            setattr(self, name, _map_tensors(getattr(self, name), fn))

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


class LayerStates(MutableMapping):
    """`cache[i]`: one layer's states under the peer library's dict keys, read from and written to the layer."""

    def __init__(self, layer: FLALayerCache):
        self._layer = layer

    def __getitem__(self, name: str) -> Any:
        if name not in STATE_NAMES:
            raise KeyError(f"{name!r}: a layer's states are {STATE_NAMES}")
        return getattr(self._layer, name)

    def __setitem__(self, name: str, value: Any) -> None:
        if name not in STATE_NAMES:
            raise KeyError(f"{name!r}: a layer's states are {STATE_NAMES}")
        setattr(self._layer, name, value)

    def __delitem__(self, name: str) -> None:
        self[name] = None

    def __iter__(self) -> Iterator[str]:
        return iter(STATE_NAMES)

    def __len__(self) -> int:
        return len(STATE_NAMES)

    def __repr__(self) -> str:
        return repr(dict(self))


class FLACache(Cache):
    """Cache for `fla.models`: `FLACache()` starts empty; layers are created as the mixers first write to them."""

    def __init__(self, num_layers: int | None = None, **kwargs) -> None:
        super().__init__(layers=[FLALayerCache() for _ in range(num_layers or 0)])

    # --- what the mixers use -------------------------------------------------------------------------------------
    def layer_state(self, layer_idx: int) -> FLALayerCache | None:
        """The state layer `layer_idx` left at its last call, or None if it has not written one yet."""
        if layer_idx < len(self.layers):
            layer = self.layers[layer_idx]
            if layer.seen_tokens > 0 or any(getattr(layer, name) is not None for name in STATE_NAMES):
                return layer
        return None

    def update(
        self,
        recurrent_state: Any = None,
        attn_state: tuple[torch.Tensor, torch.Tensor] | None = None,
        conv_state: Any = None,
        ffn_state: Any = None,
        layer_idx: int = 0,
        offset: int | None = 1,
        cache_kwargs: dict[str, Any] | None = None,
    ) -> LayerStates:
        """Record what layer `layer_idx` produced after consuming `offset` more input columns (the peer library's
        signature). A recurrent, conv or ffn state replaces the old one; keys and values are appended along time,
        keeping only the last `cache_kwargs["window_size"]` columns when that is set. Returns `cache[layer_idx]`."""
        while len(self.layers) <= layer_idx:
            self.layers.append(FLALayerCache())
        layer = self.layers[layer_idx]
        for name, value in (("recurrent_state", recurrent_state), ("conv_state", conv_state),
                            ("ffn_state", ffn_state)):
            if value is not None:
                setattr(layer, name, value)
        if attn_state is not None:
            if layer.attn_state is not None:
                attn_state = tuple(torch.cat([old, new], dim=1) for old, new in zip(layer.attn_state, attn_state))
            window = (cache_kwargs or {}).get("window_size")
            if window is not None and attn_state[0].shape[1] > window:
                attn_state = tuple(t[:, -window:].contiguous() for t in attn_state)
            layer.attn_state = tuple(attn_state)
        layer.seen_tokens += 1 if offset is None else offset
        return LayerStates(layer)

    # --- the peer library's per-layer access ---------------------------------------------------------------------
    def __getitem__(self, layer_idx: int) -> LayerStates:
        if not -len(self.layers) <= layer_idx < len(self.layers):
            raise KeyError(f"the cache has {len(self.layers)} layers; layer {layer_idx} is out of range")
        return LayerStates(self.layers[layer_idx])

    def __iter__(self) -> Iterator[LayerStates]:
        return (LayerStates(layer) for layer in self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def to_legacy_cache(self) -> tuple[dict[str, Any], ...]:
        """One plain dict of states per layer."""
        return tuple(dict(states) for states in self)

    @classmethod
    def from_legacy_cache(cls, past_key_values: tuple[dict[str, Any], ...] | None = None,
                          seen_tokens: int = 0, **kwargs) -> "FLACache":
        """The inverse of `to_legacy_cache`; a cache passes through. The dicts do not say how many tokens they hold,
        which positions (rotary, attention windows) need: every layer is taken to have seen `seen_tokens` (given,
        else the longest attention key list among them, else 0)."""
        if isinstance(past_key_values, cls):
            return past_key_values
        states = [dict(s or {}) for s in past_key_values or ()]
        if not seen_tokens:
            seen_tokens = max((s["attn_state"][0].shape[1] for s in states if s.get("attn_state")), default=0)
        cache = cls()
        for layer_states in states:
            layer = FLALayerCache()
            for name, value in layer_states.items():
                LayerStates(layer)[name] = value
            layer.seen_tokens = int(seen_tokens)
            cache.layers.append(layer)
        return cache

    # --- what transformers' generate() asks ----------------------------------------------------------------------
    def get_seq_length(self, layer_idx: int | None = 0, cache_position=None) -> int:
        if (layer_idx or 0) >= len(self.layers):
            return 0
        return self.layers[layer_idx or 0].seen_tokens

    def get_max_length(self, layer_idx: int = 0) -> int:
        return -1

    def get_max_cache_shape(self, layer_idx: int = 0) -> int:
        return -1

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
