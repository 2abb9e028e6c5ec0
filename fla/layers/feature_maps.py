"""Feature maps phi applied to queries and keys, under the peer library's names (so its configs mean the same here).

- `ACTIVATIONS`: elementwise maps by name, what GLA and RetNet take as `feature_map`.
- `LINEAR_ATTN_FEATURE_MAPS`: what LinearAttention takes, `name -> builder(head_dim) -> module or function`; the
  learned ones hold their parameters under the peer's names (`layer`, `layer1`, `layer2`), so checkpoints match.
  Some change the feature width: hedgehog [.., D] -> [.., 2D], dpfp -> [.., 8D].
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from fla.modules.activations import ACT2FN, elu_p1  # elu_p1: the "elu" map, here for its users
# the modules live in fla.modules.feature_map (the peer's path); imported here for the registry and old imports
from fla.modules.feature_map import DPFPFeatureMap, HadamardFeatureMap, HedgehogFeatureMap, T2RFeatureMap


def sum_norm(x: torch.Tensor) -> torch.Tensor:
    """x / sum |x| over the last dim (eps 1e-6): the "sum" query/key norm of DeltaNet."""
    return F.normalize(x, p=1, dim=-1, eps=1e-6)


# the peer's ACT2FN (fused kernels, float32 inside) without bias_gelu, which takes a bias too
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    name: fn for name, fn in ACT2FN.items() if name != "bias_gelu"
}


LINEAR_ATTN_FEATURE_MAPS: dict[str, Callable[[int], Callable[[torch.Tensor], torch.Tensor]]] = {
    "elementwise_product": HadamardFeatureMap,
    "hedgehog": HedgehogFeatureMap,
    "t2r": T2RFeatureMap,
    "dpfp": DPFPFeatureMap,
    "elu": lambda head_dim: elu_p1,
    "relu": lambda head_dim: nn.ReLU(),
    "silu": lambda head_dim: nn.SiLU(),
    "identity": lambda head_dim: nn.Identity(),
}
LEARNED_FEATURE_MAPS = ("elementwise_product", "hedgehog", "t2r")


def feature_dim(feature_map: str, head_dim: int) -> int:
    """The width phi gives a head of width `head_dim`."""
    return {"hedgehog": 2 * head_dim, "dpfp": 8 * head_dim}.get(feature_map, head_dim)
