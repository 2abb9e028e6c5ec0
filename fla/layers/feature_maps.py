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


def sum_norm(x: torch.Tensor) -> torch.Tensor:
    """x / sum |x| over the last dim (eps 1e-6): the "sum" query/key norm of DeltaNet."""
    return F.normalize(x, p=1, dim=-1, eps=1e-6)


# the peer's ACT2FN (fused kernels, float32 inside) without bias_gelu, which takes a bias too
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    name: fn for name, fn in ACT2FN.items() if name != "bias_gelu"
}


class HedgehogFeatureMap(nn.Module):
    """Hedgehog (Zhang et al., 2024): softmax over [2 W x, -2 W x], a learned linear W + bias; [.., D] -> [.., 2D]."""

    def __init__(self, head_dim: int):
        super().__init__()
        self.layer = nn.Linear(head_dim, head_dim)
        with torch.no_grad():  # identity first (the model's init redraws it as it does every linear layer)
            nn.init.eye_(self.layer.weight)
            nn.init.zeros_(self.layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = 2 * self.layer(x)
        return torch.cat([y, -y], dim=-1).softmax(-1)


class T2RFeatureMap(nn.Module):
    """T2R (Kasai et al., 2021): relu(W x), a learned linear map without bias."""

    def __init__(self, head_dim: int):
        super().__init__()
        self.layer = nn.Linear(head_dim, head_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x).relu()


class HadamardFeatureMap(nn.Module):
    """The elementwise product (W1 x + b1) * (W2 x + b2) of two learned linear maps."""

    def __init__(self, head_dim: int):
        super().__init__()
        self.layer1 = nn.Linear(head_dim, head_dim)
        self.layer2 = nn.Linear(head_dim, head_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer1(x) * self.layer2(x)


class DPFPFeatureMap(nn.Module):
    """DPFP (Schlag et al., 2021), nu = 4: r = [relu(x), relu(-x)] times its rolls by 1..nu; [.., D] -> [.., 2 nu D]."""

    def __init__(self, head_dim: int, nu: int = 4):
        super().__init__()
        self.nu = nu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = torch.cat([x.relu(), (-x).relu()], dim=-1)
        rolled = torch.cat([r.roll(shifts=j, dims=-1) for j in range(1, self.nu + 1)], dim=-1)
        return torch.cat([r] * self.nu, dim=-1) * rolled


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
