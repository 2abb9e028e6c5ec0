"""Model outputs and the cache's argument name, on every transformers version we allow.

transformers 5.24 renamed the generation cache from `past_key_values` to `cache`: `generate()` passes it to the
model's forward as `cache=`, reads it back from the output's `cache` field, and warns on the old name (the output
classes keep a `past_key_values` property that warns). Up to 5.23 it is `past_key_values` everywhere. Our models take
both names as arguments and return outputs that answer to both, silently: code written against the peer library
(`past_key_values`) and code written against current transformers (`cache`) work unchanged, and none of our own
calls print transformers' deprecation warning.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

# The name of the cache field of transformers' output classes, and so of the argument `generate()` passes.
CACHE_FIELD = "cache" if "cache" in {f.name for f in fields(CausalLMOutputWithPast)} else "past_key_values"


def resolve_cache(cache, past_key_values):
    """The cache a forward was given, under either name (`cache`: transformers >= 5.24; `past_key_values`: older
    transformers and the peer library)."""
    if past_key_values is None:
        return cache
    if cache is not None and cache is not past_key_values:
        raise ValueError("pass the cache once, as `cache` (transformers >= 5.24) or `past_key_values`, not both")
    return past_key_values


class _BothCacheNames:
    """Both names read the one field, without a warning."""

    if CACHE_FIELD == "cache":
        @property
        def past_key_values(self):
            return self.cache
    else:
        @property
        def cache(self):
            return self.past_key_values


@dataclass
class FLAModelOutput(_BothCacheNames, BaseModelOutputWithPast):
    """transformers' BaseModelOutputWithPast; the cache as `.cache` and as `.past_key_values`."""


@dataclass
class FLACausalLMOutput(_BothCacheNames, CausalLMOutputWithPast):
    """transformers' CausalLMOutputWithPast; the cache as `.cache` and as `.past_key_values`."""


def model_output(cls: type, cache, **values):
    """An output of `cls` with the cache stored under the field this transformers has."""
    return cls(**{CACHE_FIELD: cache}, **values)
