"""The peer's `fla.modules.norm.layernorm`: `fla.modules.layernorm`'s norms under the new path."""
from __future__ import annotations

from fla.modules._peer_internal import peer_internal
from fla.modules.layernorm import (
    GroupNorm, GroupNormLinear, GroupNormRef, LayerNorm, LayerNormLinear, RMSNorm, RMSNormLinear, group_norm,
    group_norm_linear, group_norm_ref, layer_norm, layer_norm_linear, layer_norm_ref, rms_norm, rms_norm_linear,
    rms_norm_ref,
)

__all__ = [
    "GroupNorm", "GroupNormLinear", "GroupNormRef", "LayerNorm", "LayerNormLinear", "NormParallel", "RMSNorm",
    "RMSNormLinear", "group_norm", "group_norm_linear", "group_norm_ref", "layer_norm", "layer_norm_bwd",
    "layer_norm_fwd", "layer_norm_linear", "layer_norm_ref", "rms_norm", "rms_norm_linear", "rms_norm_ref",
]


def layer_norm_fwd(x, weight, bias, eps=1e-5, residual=None, out_dtype=None, residual_dtype=None, is_rms_norm=False,
                   num_groups=1):
    """Not provided: the peer's forward launcher (see fla.modules._peer_internal)."""
    peer_internal("layer_norm_fwd", "layer_norm / rms_norm / group_norm from fla.modules.layernorm")


def layer_norm_bwd(dy, x, weight, bias, mean=None, rstd=None, dres=None, has_residual=False, is_rms_norm=False,
                   x_dtype=None, recompute_output=False, num_groups=1):
    """Not provided: the peer's backward launcher (autograd runs ours through layer_norm)."""
    peer_internal("layer_norm_bwd", "layer_norm / rms_norm / group_norm from fla.modules.layernorm (autograd)")


class NormParallel:
    """The peer's tensor-parallel style for its norms (torch.distributed.tensor.parallel): not provided."""

    def __init__(self, *, sequence_dim: int = 1, use_local_output: bool = False):
        peer_internal("NormParallel", "torch.distributed.tensor.parallel.SequenceParallel for the norm layers")
