"""Fused building blocks shared by the layers and models: norms, losses, short convolution, rotary, MLP.

Each has a Triton kernel (forward and backward) and a PyTorch twin behind `fla.ops.utils.dispatch`, so it runs
compiled on a GPU, interpreted on CPU under TRITON_INTERPRET=1, and as plain PyTorch on a bare CPU.
"""
from fla.modules.convolution import ShortConvolution
# the functions fused_cross_entropy / fused_linear_cross_entropy stay in their modules: here those names are the
# submodules, as in the peer (`import fla.modules.fused_cross_entropy.ops` must find a package, not a function)
from fla.modules.fused_cross_entropy import FusedCrossEntropyLoss
from fla.modules.fused_linear_cross_entropy import FusedLinearCrossEntropyLoss
from fla.modules.l2norm import L2Norm, l2_norm
from fla.modules.fused_norm_gate import (
    FusedLayerNormGated, FusedLayerNormSwishGate, FusedLayerNormSwishGateLinear, FusedRMSNormSwishGate,
    FusedRMSNormSwishGateLinear,
)
from fla.modules.layernorm import (
    FusedRMSNormGated, GroupNorm, GroupNormLinear, LayerNorm, LayerNormLinear, RMSNorm, RMSNormLinear, group_norm,
    layer_norm, rms_norm, rms_norm_gated,
)
from fla.modules.mlp import GatedMLP, swiglu
from fla.modules.rotary import RotaryEmbedding

__all__ = [
    "FusedCrossEntropyLoss", "FusedLinearCrossEntropyLoss", "FusedRMSNormGated", "GatedMLP", "L2Norm", "RMSNorm",
    "RotaryEmbedding", "ShortConvolution", "l2_norm",
    "rms_norm", "rms_norm_gated", "swiglu",
    "FusedLayerNormGated", "FusedLayerNormSwishGate", "FusedLayerNormSwishGateLinear", "FusedRMSNormSwishGate",
    "FusedRMSNormSwishGateLinear", "GroupNorm", "GroupNormLinear", "LayerNorm", "LayerNormLinear", "RMSNormLinear",
    "group_norm", "layer_norm",
]

# issue 19: the peer's long convolutions, distillation loss and BitLinear layers
from fla.modules.long_conv import ImplicitLongConvolution, LongConvolution  # noqa: E402
__all__ += ["ImplicitLongConvolution", "LongConvolution"]
from fla.modules.fused_kl_div import FusedKLDivLoss, fused_kl_div_loss  # noqa: E402
__all__ += ["FusedKLDivLoss", "fused_kl_div_loss"]
from fla.modules.fused_bitlinear import BitLinear, FusedBitLinear  # noqa: E402
__all__ += ["BitLinear", "FusedBitLinear"]

# issue 19: the peer's TokenShift, and its other import paths for these modules (norm/, causal_conv1d/, .ops, ...)
from fla.modules.token_shift import TokenShift  # noqa: E402
__all__ += ["TokenShift"]
from fla.modules._peer_layout import _install  # noqa: E402
_install(__name__)
