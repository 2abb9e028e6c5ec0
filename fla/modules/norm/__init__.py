"""The peer library's `fla.modules.norm` package layout: the norms under their new paths. The implementations are
`fla.modules.layernorm`, `fla.modules.fused_norm_gate`, `fla.modules.l2norm`, `fla.modules.fused_bitlinear`; these
modules re-export them (one implementation, two import paths, as the peer keeps its old paths as aliases)."""
from fla.modules.fused_norm_gate import (
    FusedLayerNormGated, FusedLayerNormGatedLinear, FusedLayerNormSwishGate, FusedLayerNormSwishGateLinear,
    FusedRMSNormGated, FusedRMSNormGatedLinear, FusedRMSNormSwishGate, FusedRMSNormSwishGateLinear,
)
from fla.modules.l2norm import L2Norm
from fla.modules.layernorm import GroupNorm, GroupNormLinear, LayerNorm, LayerNormLinear, RMSNorm, RMSNormLinear
from fla.modules.norm.layernorm import NormParallel
from fla.modules.norm.layernorm_gated import LayerNormGated, RMSNormGated

__all__ = [
    "FusedLayerNormGated", "FusedLayerNormGatedLinear", "FusedLayerNormSwishGate", "FusedLayerNormSwishGateLinear",
    "FusedRMSNormGated", "FusedRMSNormGatedLinear", "FusedRMSNormSwishGate", "FusedRMSNormSwishGateLinear",
    "GroupNorm", "GroupNormLinear", "L2Norm", "LayerNorm", "LayerNormGated", "LayerNormLinear", "NormParallel",
    "RMSNorm", "RMSNormGated", "RMSNormLinear",
]
