"""The peer library's gated-norm entry points (`fla.modules.fused_norm_gate`): LayerNorm or RMSNorm of x (after an
optional residual add), times weight plus bias, times act(g) with act = swish (alias silu) or sigmoid, and the
`*SwishGateLinear` forms that feed that into `F.linear`. All run the one norm kernel of `fla.modules.layernorm`
(its gate switch on); the functions take the peer's argument order and its eps default (1e-6), the modules its
eps 1e-5.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from fla.modules.layernorm import FusedRMSNormGated, _group_norm, _linear

__all__ = [
    "FusedLayerNormGatedLinear", "FusedRMSNormGatedLinear", "FusedLayerNormGated", "FusedLayerNormSwishGate", "FusedLayerNormSwishGateLinear", "FusedRMSNormGated",
    "FusedRMSNormSwishGate", "FusedRMSNormSwishGateLinear", "layer_norm_gated", "layer_norm_swish_gate_linear",
    "rms_norm_gated", "rms_norm_swish_gate_linear",
]


def layer_norm_gated(
    x: torch.Tensor,
    g: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    activation: str = "swish",
    residual: torch.Tensor | None = None,
    prenorm: bool = False,
    residual_in_fp32: bool = False,
    eps: float = 1e-6,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """(layer_norm(x + residual) * weight + bias) * act(g). x, g: [..., N]; weight, bias: [N] or None.
    Returns y [..., N] in x's dtype, or (y, x + residual) when prenorm."""
    return _group_norm(x, g, residual, weight, bias, eps, prenorm, residual_in_fp32, activation, False, 1)


def rms_norm_gated(
    x: torch.Tensor,
    g: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    activation: str = "swish",
    residual: torch.Tensor | None = None,
    prenorm: bool = False,
    residual_in_fp32: bool = False,
    eps: float = 1e-6,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """`layer_norm_gated` without the mean centring (the peer's argument order; `fla.modules.rms_norm_gated` is
    ours, with weight third and no bias)."""
    return _group_norm(x, g, residual, weight, bias, eps, prenorm, residual_in_fp32, activation, True, 1)


def layer_norm_swish_gate_linear(
    x: torch.Tensor,
    g: torch.Tensor,
    norm_weight: torch.Tensor,
    norm_bias: torch.Tensor,
    linear_weight: torch.Tensor,
    linear_bias: torch.Tensor,
    residual: torch.Tensor | None = None,
    prenorm: bool = False,
    residual_in_fp32: bool = False,
    eps: float = 1e-6,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """F.linear(layer_norm_gated(x, g, ..., "swish"), linear_weight [O, N], linear_bias [O] or None) -> [..., O]."""
    out = _group_norm(x, g, residual, norm_weight, norm_bias, eps, prenorm, residual_in_fp32, "swish", False, 1)
    return _linear(out, linear_weight, linear_bias, prenorm)


def rms_norm_swish_gate_linear(
    x,
    g: torch.Tensor,
    norm_weight: torch.Tensor,
    norm_bias: torch.Tensor,
    linear_weight: torch.Tensor,
    linear_bias: torch.Tensor,
    residual: torch.Tensor | None = None,
    prenorm: bool = False,
    residual_in_fp32: bool = False,
    eps: float = 1e-6,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """`layer_norm_swish_gate_linear` with RMSNorm."""
    out = _group_norm(x, g, residual, norm_weight, norm_bias, eps, prenorm, residual_in_fp32, "swish", True, 1)
    return _linear(out, linear_weight, linear_bias, prenorm)


class _GatedNorm(nn.Module):
    """weight [N] (ones) and bias [N] (zeros), each optional; forward(x, g, residual=None, prenorm=False)."""

    is_rms_norm = False

    def __init__(self, hidden_size: int, elementwise_affine: bool = True, bias: bool = False,
                 activation: str = "swish", eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.hidden_size, self.eps, self.activation = hidden_size, eps, activation
        factory = dict(device=device, dtype=dtype)
        self.weight = nn.Parameter(torch.ones(hidden_size, **factory)) if elementwise_affine else None
        self.bias = nn.Parameter(torch.zeros(hidden_size, **factory)) if bias else None
        # checked once here so a bad activation fails at construction
        _group_norm(torch.zeros(1, hidden_size), torch.zeros(1, hidden_size), None, None, None, eps, False, False,
                    activation, self.is_rms_norm, 1)

    def extra_repr(self) -> str:
        return f"{self.hidden_size}, eps={self.eps}, activation={self.activation!r}, bias={self.bias is not None}"

    def forward(self, x, g, residual=None, prenorm=False, residual_in_fp32=False):
        return _group_norm(x, g, residual, self.weight, self.bias, self.eps, prenorm, residual_in_fp32,
                           self.activation, self.is_rms_norm, 1)


class FusedLayerNormGated(_GatedNorm):
    """(LayerNorm(x + residual) * weight + bias) * act(g), act = "swish" (alias "silu") or "sigmoid"."""


class FusedLayerNormSwishGate(_GatedNorm):
    """`FusedLayerNormGated` with the swish gate (the peer's older name and constructor)."""

    def __init__(self, hidden_size: int, elementwise_affine: bool = True, bias: bool = False, eps: float = 1e-5,
                 device=None, dtype=None):
        super().__init__(hidden_size, elementwise_affine, bias, "swish", eps, device, dtype)


class FusedRMSNormSwishGate(_GatedNorm):
    """RMSNorm(x + residual) * weight * swish(g) (the peer's older name for `FusedRMSNormGated`)."""

    is_rms_norm = True

    def __init__(self, hidden_size: int, elementwise_affine: bool = True, eps: float = 1e-5, device=None, dtype=None):
        super().__init__(hidden_size, elementwise_affine, False, "swish", eps, device, dtype)


class FusedLayerNormSwishGateLinear(FusedLayerNormSwishGate):
    """`forward(x, g, weight [O, N] = None, bias [O] = None, residual=None, prenorm=False)`: the swish-gated
    LayerNorm, then F.linear with the passed weights."""

    def __init__(self, hidden_size: int, elementwise_affine: bool = True, eps: float = 1e-5, device=None, dtype=None):
        super().__init__(hidden_size, elementwise_affine, False, eps, device, dtype)

    def forward(self, x, g, weight=None, bias=None, residual=None, prenorm=False, residual_in_fp32=False):
        if weight is None:
            raise ValueError("weight (the linear weight [O, N]) is required: pass the output projection's weight")
        return _linear(super().forward(x, g, residual, prenorm, residual_in_fp32), weight, bias, prenorm)


class FusedRMSNormSwishGateLinear(FusedRMSNormSwishGate):
    """`FusedLayerNormSwishGateLinear` with RMSNorm."""

    def forward(self, x, g, weight=None, bias=None, residual=None, prenorm=False, residual_in_fp32=False):
        if weight is None:
            raise ValueError("weight (the linear weight [O, N]) is required: pass the output projection's weight")
        return _linear(super().forward(x, g, residual, prenorm, residual_in_fp32), weight, bias, prenorm)


# the peer's base names of the two swish-gated linear forms (same constructor and forward)
FusedLayerNormGatedLinear = FusedLayerNormSwishGateLinear
FusedRMSNormGatedLinear = FusedRMSNormSwishGateLinear
