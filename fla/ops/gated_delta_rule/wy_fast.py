"""The peer library's internal WY-representation kernels of the gated delta rule live at this path
(`recompute_w_u_fwd`, `prepare_wy_repr_bwd`); its tests import them. They are not part of the public op API, and
their layouts (a per-chunk [B, T, HV, BT] inverse, base-2 gates) are the peer's kernels' own: here they exist so that
code importing them gets a clear error, not an ImportError. Our WY blocks are in `fla.ops.utils` (K K^T with the
triangular solve, and the w/u recomputation and its backward), composed by the delta-rule families' `chunk.py`."""
from __future__ import annotations


def _internal(name: str):
    raise NotImplementedError(
        f"{name} is an internal kernel of the peer library (flash-linear-attention), not part of fla's API: use "
        "chunk_gated_delta_rule, or the WY blocks in fla.ops.utils")


def recompute_w_u_fwd(k, v, beta, A, g=None, cu_seqlens=None, chunk_indices=None):
    """Not provided: see the module docstring."""
    _internal("recompute_w_u_fwd")


def prepare_wy_repr_bwd(k, v, beta, A, dw, du, g=None, cu_seqlens=None, chunk_indices=None):
    """Not provided: see the module docstring."""
    _internal("prepare_wy_repr_bwd")
