"""The peer's `fla.modules.causal_conv1d.cp`. Context parallelism for the short convolution is ShortConvolution's
`cp_context` here (the halo exchange of `fla.ops.cp`); the peer's functional form is not provided."""
from __future__ import annotations

from fla.modules._peer_internal import peer_internal

__all__ = ["CausalConv1dFunctionCP", "causal_conv1d_cp"]

_USE = "fla.modules.ShortConvolution(...)(x, cp_context=fla.ops.cp.build_cp_context(...))"


def causal_conv1d_cp(x, weight, bias=None, activation=None, chunk_indices=None, cp_context=None, chunk_size=None,
                     backend="triton", residual=None):
    """Not provided: see the module docstring."""
    peer_internal("causal_conv1d_cp", _USE)


class CausalConv1dFunctionCP:
    """The peer's internal autograd function: not provided."""

    @staticmethod
    def apply(*args, **kwargs):
        peer_internal("CausalConv1dFunctionCP", _USE)
