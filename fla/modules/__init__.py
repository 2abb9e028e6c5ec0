"""Fused building blocks shared by the layers and models: norms, losses, short convolution, rotary, MLP."""
from fla.modules.layernorm import FusedRMSNormGated, RMSNorm, rms_norm, rms_norm_gated

__all__ = ["FusedRMSNormGated", "RMSNorm", "rms_norm", "rms_norm_gated"]
