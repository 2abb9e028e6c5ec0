"""The peer's `fla.modules.causal_conv1d.backends.cuda` (its wrapper of the external causal-conv1d CUDA package).
These names run our `causal_conv1d` (the same math on our kernels), in the peer's argument order for them."""
from __future__ import annotations

import torch

from fla.modules._peer_internal import peer_internal
from fla.modules.convolution import causal_conv1d

__all__ = ["FastCausalConv1dFn", "causal_conv1d_cuda", "fast_causal_conv1d_fn"]


def fast_causal_conv1d_fn(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool | None = False,
    activation: str | None = None,
    cu_seqlens: torch.Tensor | None = None,
    cu_seqlens_cpu: torch.Tensor | None = None,
    chunk_indices: torch.Tensor | None = None,
    seq_idx: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`fla.modules.convolution.causal_conv1d` (same arguments; seq_idx is refused there with the fix)."""
    extra = {} if seq_idx is None else {"seq_idx": seq_idx}
    return causal_conv1d(x, weight, bias, residual, initial_state, output_final_state, activation,
                         cu_seqlens=cu_seqlens, cu_seqlens_cpu=cu_seqlens_cpu, chunk_indices=chunk_indices, **extra)


def causal_conv1d_cuda(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool | None = False,
    activation: str | None = None,
    cu_seqlens: torch.Tensor | None = None,
    cu_seqlens_cpu: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`fla.modules.convolution.causal_conv1d`; other keywords go to it (it refuses the ones it does not take)."""
    return causal_conv1d(x, weight, bias, residual, initial_state, output_final_state, activation,
                         cu_seqlens=cu_seqlens, cu_seqlens_cpu=cu_seqlens_cpu, **kwargs)


class FastCausalConv1dFn:
    """The peer's internal autograd function: not provided."""

    @staticmethod
    def apply(*args, **kwargs):
        peer_internal("FastCausalConv1dFn", "fast_causal_conv1d_fn, or causal_conv1d from fla.modules.convolution")
