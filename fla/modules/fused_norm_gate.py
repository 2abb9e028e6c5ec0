"""The peer library's gated-norm entry points (`fla.modules.fused_norm_gate`): LayerNorm or RMSNorm of x (after an
optional residual add), times weight plus bias, times act(g) with act = swish (alias silu) or sigmoid, and the
`*SwishGateLinear` forms that feed that into `F.linear` (saving the input, not the normed rows, which their
backward recomputes). All run the one norm kernel pair of `fla.modules.norm_kernels` (its gate switch on) through
`fla.modules.layernorm`; the functions take the peer's argument order and its eps default (1e-6), the modules its
eps 1e-5.
"""
from __future__ import annotations

import torch

from fla.modules.layernorm import FusedRMSNormGated, _GatedNorm, _GatedNormLinear, _group_norm, _NoBiasArgs

__all__ = [
    "FusedLayerNormGated", "FusedLayerNormGatedLinear", "FusedLayerNormSwishGate", "FusedLayerNormSwishGateLinear",
    "FusedRMSNormGated", "FusedRMSNormGatedLinear", "FusedRMSNormSwishGate", "FusedRMSNormSwishGateLinear",
    "layer_norm_gated", "layer_norm_swish_gate_linear", "rms_norm_gated", "rms_norm_swish_gate_linear",
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
    return _group_norm(x, g, residual, norm_weight, norm_bias, eps, prenorm, residual_in_fp32, "swish", False, 1,
                       linear_weight, linear_bias)


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
    return _group_norm(x, g, residual, norm_weight, norm_bias, eps, prenorm, residual_in_fp32, "swish", True, 1,
                       linear_weight, linear_bias)


class FusedLayerNormGated(_GatedNorm):
    """(LayerNorm(x + residual) * weight + bias) * act(g), act = "swish" (alias "silu") or "sigmoid"."""

    def __init__(self, hidden_size: int, elementwise_affine: bool = True, bias: bool = False,
                 activation: str = "swish", eps: float = 1e-5, device=None, dtype=None):
        self.activation = activation
        super().__init__(hidden_size, elementwise_affine, bias, eps, device, dtype)


class FusedLayerNormSwishGate(_GatedNorm):
    """`FusedLayerNormGated` with the swish gate (the peer's older name and constructor)."""


class FusedRMSNormSwishGate(_NoBiasArgs, _GatedNorm):
    """RMSNorm(x + residual) * weight * swish(g) (the peer's older name for `FusedRMSNormGated`)."""

    is_rms_norm = True


class FusedLayerNormSwishGateLinear(_NoBiasArgs, _GatedNormLinear):
    """`forward(x, g, weight [O, N] = None, bias [O] = None, residual=None, prenorm=False)`: the swish-gated
    LayerNorm, then F.linear with the passed weights."""


class FusedRMSNormSwishGateLinear(_NoBiasArgs, _GatedNormLinear):
    """`FusedLayerNormSwishGateLinear` with RMSNorm."""

    is_rms_norm = True


# the peer's base names of the two swish-gated linear forms (same constructor and forward)
FusedLayerNormGatedLinear = FusedLayerNormSwishGateLinear
FusedRMSNormGatedLinear = FusedRMSNormSwishGateLinear
