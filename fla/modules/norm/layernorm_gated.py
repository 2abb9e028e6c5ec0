"""The peer's `fla.modules.norm.layernorm_gated` (also `fla.modules.layernorm_gated`): Mamba-2's gated norm over
groups of `group_size` channels, norm(x) * silu(z) (norm_before_gate) or norm(x * silu(z)), LayerNorm or RMSNorm,
a per-channel weight (and bias). It runs on the norm kernels of `fla.modules.layernorm` (groups and the gate are
their `num_groups` and `g`); only the gate-first form multiplies x * silu(z) before the kernel."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from fla.modules._peer_internal import peer_internal
from fla.modules.layernorm import _group_norm

__all__ = ["LayerNormGated", "RMSNormGated", "layer_norm_bwd", "layer_norm_fwd", "layernorm_fn", "rms_norm_ref",
           "rmsnorm_fn"]


def _groups(x: torch.Tensor, group_size: int | None) -> int:
    N = x.shape[-1]
    if group_size is None:
        return 1
    if not isinstance(group_size, int) or group_size <= 0 or N % group_size:
        raise ValueError(f"group_size must divide the last dim {N} (got {group_size})")
    return N // group_size


def layernorm_fn(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    z: torch.Tensor | None = None,
    eps: float = 1e-6,
    group_size: int | None = None,
    norm_before_gate: bool = True,
    is_rms_norm: bool = False,
) -> torch.Tensor:
    """x, z: [..., N]; weight, bias: [N] -> [..., N] in x's dtype. Each group of `group_size` channels (None: all N)
    is normalized on its own; z gates with silu after the norm (norm_before_gate) or before it."""
    G = _groups(x, group_size)
    if z is not None and tuple(z.shape) != tuple(x.shape):
        raise ValueError(f"z must have x's shape {tuple(x.shape)} (got {tuple(z.shape)})")
    if z is not None and not norm_before_gate:
        x, z = (x.float() * F.silu(z.float())).to(x.dtype), None
    return _group_norm(x, z, None, weight, bias, eps, False, False, "silu", is_rms_norm, G)


def rmsnorm_fn(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    z: torch.Tensor | None = None,
    eps: float = 1e-6,
    group_size: int | None = None,
    norm_before_gate: bool = True,
) -> torch.Tensor:
    """`layernorm_fn` with RMSNorm."""
    return layernorm_fn(x, weight, bias, z, eps, group_size, norm_before_gate, True)


def rms_norm_ref(x, weight, bias, z=None, eps=1e-6, group_size=None, norm_before_gate=True, upcast=True):
    """Plain-PyTorch reference of `rmsnorm_fn` (float32 inside when upcast), x's dtype out."""
    dtype = x.dtype
    if upcast:
        x, z = x.float(), (z.float() if z is not None else None)
        weight, bias = weight.float(), (bias.float() if bias is not None else None)
    if z is not None and not norm_before_gate:
        x = x * F.silu(z)
    G = _groups(x, group_size)
    xg = x.reshape(*x.shape[:-1], G, -1)
    y = (xg * torch.rsqrt(xg.pow(2).mean(-1, keepdim=True) + eps)).reshape(x.shape) * weight
    if bias is not None:
        y = y + bias
    if z is not None and norm_before_gate:
        y = y * F.silu(z)
    return y.to(dtype)


def layer_norm_fwd(x, weight, bias, eps, z=None, out=None, group_size=None, norm_before_gate=True,
                   is_rms_norm=False):
    """Not provided: the peer's forward launcher."""
    peer_internal("layer_norm_fwd", "layernorm_fn / rmsnorm_fn from fla.modules.norm.layernorm_gated")


def layer_norm_bwd(dy, x, weight, bias, eps, mean, rstd, z=None, group_size=None, norm_before_gate=True,
                   is_rms_norm=False, recompute_output=False, dz=None, out=None):
    """Not provided: the peer's backward launcher (autograd runs ours through layernorm_fn)."""
    peer_internal("layer_norm_bwd", "layernorm_fn / rmsnorm_fn from fla.modules.norm.layernorm_gated (autograd)")


class _GatedGroupNorm(nn.Module):
    is_rms_norm = False

    def __init__(self, hidden_size: int, eps: float, group_size: int | None, norm_before_gate: bool, bias: bool,
                 device=None, dtype=None):
        super().__init__()
        if group_size is not None and (group_size <= 0 or hidden_size % group_size):
            raise ValueError(f"group_size must divide hidden_size {hidden_size} (got {group_size})")
        self.hidden_size, self.eps, self.group_size, self.norm_before_gate = hidden_size, eps, group_size, \
            norm_before_gate
        self.weight = nn.Parameter(torch.empty(hidden_size, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(hidden_size, device=device, dtype=dtype)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        return f"{self.hidden_size}, eps={self.eps}, group_size={self.group_size}, " \
               f"norm_before_gate={self.norm_before_gate}"

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """x, z: [..., hidden_size] -> [..., hidden_size]."""
        return layernorm_fn(x, self.weight, self.bias, z, self.eps, self.group_size, self.norm_before_gate,
                            self.is_rms_norm)


class LayerNormGated(_GatedGroupNorm):
    """LayerNorm per group of `group_size` channels (None: one group), weight and bias, gated by silu(z)."""

    def __init__(self, hidden_size: int, eps: float = 1e-5, group_size: int | None = None,
                 norm_before_gate: bool = True, device: torch.device | None = None, dtype: torch.dtype | None = None):
        super().__init__(hidden_size, eps, group_size, norm_before_gate, True, device, dtype)


class RMSNormGated(_GatedGroupNorm):
    """RMSNorm per group of `group_size` channels (None: one group), a weight, gated by silu(z)."""

    is_rms_norm = True

    def __init__(self, hidden_size: int, eps: float = 1e-5, group_size: int | None = None,
                 norm_before_gate: bool = False, device: torch.device | None = None, dtype: torch.dtype | None = None):
        super().__init__(hidden_size, eps, group_size, norm_before_gate, False, device, dtype)
