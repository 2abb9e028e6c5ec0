"""The peer's `fla.modules.causal_conv1d.ops`: the short causal convolution of `fla.modules.convolution` under the
new path, and `causal_conv1d_update_states` (the last W inputs of each sequence) over its final-state gather."""
from __future__ import annotations

import torch

from fla.modules._peer_internal import peer_internal
from fla.modules.convolution import ShortConvolution, causal_conv1d, causal_conv1d_update, final_conv_state
from fla.ops.utils.checks import check_cu_seqlens

__all__ = ["CausalConv1dFunction", "ShortConvolution", "causal_conv1d", "causal_conv1d_bwd", "causal_conv1d_fwd",
           "causal_conv1d_update", "causal_conv1d_update_states", "compute_dh0_triton"]

_USE = "causal_conv1d / ShortConvolution from fla.modules.convolution"


def causal_conv1d_update_states(
    x: torch.Tensor,
    state_len: int,
    initial_state: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
) -> torch.Tensor:
    """The conv cache after x: the last `state_len` inputs of every sequence [N, D, state_len], positions before a
    sequence's start taken from initial_state [N, D, state_len] (or zero). x: [B, T, D], or [1, T, D] / [T, D]
    packed with cu_seqlens [N + 1]."""
    if not isinstance(state_len, int) or state_len <= 0:
        raise ValueError(f"state_len must be a positive int (got {state_len!r})")
    if cu_seqlens is not None and x.dim() == 2:
        x = x[None]
    if x.dim() != 3:
        raise ValueError(f"x must be [B, T, D] (or [T, D] with cu_seqlens); got {tuple(x.shape)}")
    N = x.shape[0] if cu_seqlens is None else check_cu_seqlens(cu_seqlens, x.shape[0], x.shape[1])
    if initial_state is not None and tuple(initial_state.shape) != (N, x.shape[-1], state_len):
        raise ValueError(f"initial_state must be [N, D, state_len] = [{N}, {x.shape[-1]}, {state_len}] (got "
                         f"{tuple(initial_state.shape)})")
    return final_conv_state(x, initial_state, cu_seqlens, state_len)


def causal_conv1d_fwd(x, weight, bias, residual, initial_state=None, output_final_state=False, activation=None,
                      cu_seqlens=None, cu_seqlens_cpu=None, chunk_indices=None, chunk_size=64, layout_fallback=False):
    """Not provided: the peer's forward launcher."""
    peer_internal("causal_conv1d_fwd", _USE)


def causal_conv1d_bwd(x, dy, dht, weight=None, bias=None, residual=None, initial_state=None, activation=None,
                      cu_seqlens=None, cu_seqlens_cpu=None, chunk_indices=None, chunk_size=64, layout_fallback=False):
    """Not provided: the peer's backward launcher (autograd runs ours through causal_conv1d)."""
    peer_internal("causal_conv1d_bwd", _USE + " (autograd)")


def compute_dh0_triton(dy, y, weight, initial_state, activation, cu_seqlens, dht=None):
    """Not provided: the peer's initial-state gradient launcher (causal_conv1d's autograd gives d initial_state)."""
    peer_internal("compute_dh0_triton", _USE + " (autograd)")


class CausalConv1dFunction:
    """The peer's internal autograd function: not provided."""

    @staticmethod
    def apply(*args, **kwargs):
        peer_internal("CausalConv1dFunction", _USE)
