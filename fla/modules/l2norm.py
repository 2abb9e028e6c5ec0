"""L2 normalization over the last dim, `x / sqrt(sum(x^2) + eps)`, as a module.

The kernel (Triton forward and backward, with its PyTorch twin behind the dispatch) lives in `fla.ops.utils.l2norm`,
shared with the delta-rule families that normalize q and k inside their ops; this file only wraps it.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from fla.ops.utils.l2norm import l2_norm

__all__ = ["L2Norm", "l2_norm", "l2norm"]

l2norm = l2_norm  # the peer's other name for it


class L2Norm(nn.Module):
    """`forward(x [..., D]) -> x / sqrt(sum(x^2, -1) + eps)` in `output_dtype` (None: x's dtype), float32 inside."""

    def __init__(self, eps: float = 1e-6, output_dtype: torch.dtype | None = None):
        super().__init__()
        self.eps, self.output_dtype = eps, output_dtype

    def extra_repr(self) -> str:
        return f"eps={self.eps}" + (f", output_dtype={self.output_dtype}" if self.output_dtype is not None else "")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return l2_norm(x, self.eps, self.output_dtype)
