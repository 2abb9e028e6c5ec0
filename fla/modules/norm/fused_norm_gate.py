"""The peer's `fla.modules.norm.fused_norm_gate`: `fla.modules.fused_norm_gate` under the new path."""
from __future__ import annotations

from fla.modules._peer_internal import peer_internal
from fla.modules.fused_norm_gate import (
    FusedLayerNormGated, FusedLayerNormGatedLinear, FusedLayerNormSwishGate, FusedLayerNormSwishGateLinear,
    FusedRMSNormGated, FusedRMSNormGatedLinear, FusedRMSNormSwishGate, FusedRMSNormSwishGateLinear, layer_norm_gated,
    layer_norm_swish_gate_linear, rms_norm_gated, rms_norm_swish_gate_linear,
)

__all__ = [
    "FusedLayerNormGated", "FusedLayerNormGatedLinear", "FusedLayerNormSwishGate", "FusedLayerNormSwishGateLinear",
    "FusedRMSNormGated", "FusedRMSNormGatedLinear", "FusedRMSNormSwishGate", "FusedRMSNormSwishGateLinear",
    "layer_norm_gated", "layer_norm_gated_bwd", "layer_norm_gated_fwd", "layer_norm_swish_gate_linear",
    "rms_norm_gated", "rms_norm_swish_gate_linear",
]


def layer_norm_gated_fwd(x, g, weight, bias, activation="swish", eps=1e-5, residual=None, out_dtype=None,
                         residual_dtype=None, is_rms_norm=False):
    """Not provided: the peer's forward launcher."""
    peer_internal("layer_norm_gated_fwd", "layer_norm_gated / rms_norm_gated from fla.modules.fused_norm_gate")


def layer_norm_gated_bwd(dy, x, g, weight, bias, activation="swish", eps=1e-5, mean=None, rstd=None, dresidual=None,
                         has_residual=False, is_rms_norm=False, x_dtype=None, recompute_output=False):
    """Not provided: the peer's backward launcher (autograd runs ours)."""
    peer_internal("layer_norm_gated_bwd", "layer_norm_gated / rms_norm_gated from fla.modules.fused_norm_gate")
