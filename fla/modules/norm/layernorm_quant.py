"""The peer's `fla.modules.norm.layernorm_quant`: the norm + 8-bit quantization of BitLinear, which is
`fla.modules.fused_bitlinear` here (one kernel for the norm and the quantization, its backward the norm's)."""
from __future__ import annotations

from fla.modules._peer_internal import peer_internal
from fla.modules.fused_bitlinear import LayerNormLinearQuantFunction, weight_quant

__all__ = ["LayerNormLinearQuantFunction", "layer_norm_quant_bwd", "layer_norm_quant_fwd", "weight_quant"]


def layer_norm_quant_fwd(x, weight, bias, eps, residual=None, out_dtype=None, residual_dtype=None,
                         is_rms_norm=False):
    """Not provided: the peer's forward launcher (also its fused_bitlinear.layer_norm_fwd_quant)."""
    peer_internal("layer_norm_quant_fwd", "layer_norm_linear_quant / BitLinear from fla.modules.fused_bitlinear")


def layer_norm_quant_bwd(dy, x, weight, bias, mean, rstd, dres=None, has_residual=False, is_rms_norm=False,
                         x_dtype=None, recompute_output=False):
    """Not provided: the peer's backward launcher (also its fused_bitlinear.layer_norm_bwd)."""
    peer_internal("layer_norm_quant_bwd", "layer_norm_linear_quant / BitLinear from fla.modules.fused_bitlinear")
