"""Fused building blocks shared by the layers and models: norms, losses, short convolution, rotary, MLP."""
from fla.modules.convolution import ShortConvolution
from fla.modules.fused_cross_entropy import FusedCrossEntropyLoss, fused_cross_entropy
from fla.modules.fused_linear_cross_entropy import FusedLinearCrossEntropyLoss, fused_linear_cross_entropy
from fla.modules.layernorm import FusedRMSNormGated, RMSNorm, rms_norm, rms_norm_gated
from fla.modules.rotary import RotaryEmbedding

__all__ = [
    "FusedCrossEntropyLoss", "FusedLinearCrossEntropyLoss", "FusedRMSNormGated", "RMSNorm", "RotaryEmbedding", "ShortConvolution",
    "fused_cross_entropy", "fused_linear_cross_entropy", "rms_norm", "rms_norm_gated",
]
