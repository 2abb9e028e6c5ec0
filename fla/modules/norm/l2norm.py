"""The peer's `fla.modules.norm.l2norm`: `fla.modules.l2norm` under the new path."""
from __future__ import annotations

from fla.modules._peer_internal import peer_internal
from fla.modules.l2norm import L2Norm, l2_norm, l2norm

__all__ = ["L2Norm", "l2_norm", "l2norm", "l2norm_bwd", "l2norm_fwd"]


def l2norm_fwd(x, eps=1e-6, output_dtype=None):
    """Not provided: the peer's forward launcher."""
    peer_internal("l2norm_fwd", "l2_norm from fla.modules.l2norm")


def l2norm_bwd(y, rstd, dy, eps=1e-6):
    """Not provided: the peer's backward launcher (autograd runs ours through l2_norm)."""
    peer_internal("l2norm_bwd", "l2_norm from fla.modules.l2norm (autograd)")
