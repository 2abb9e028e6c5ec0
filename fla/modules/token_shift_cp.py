"""The peer library's context-parallel token shift path. Here `token_shift` itself takes `cp_context` (the previous
rank's last token comes through the short convolution's halo exchange), so `token_shift_cp` is a call form of it."""
from __future__ import annotations

import torch

from fla.modules.token_shift import token_shift
from fla.ops.cp import context as _cp  # not re-exported: the peer's FLACPContext here is its own class

__all__ = ["TokenShiftCPFunction", "token_shift_cp"]


def token_shift_cp(
    x: torch.Tensor,
    cp_context: _cp.FLACPContext,
    cu_seqlens: torch.Tensor | None = None,
    chunk_indices: torch.Tensor | None = None,
) -> torch.Tensor:
    """delta_t = x_{t-1} - x_t on this rank's piece [1, T, D] (or [B, T, D] rows split across ranks), the first
    document's previous token coming from the previous rank. The boundaries are the context's (as in the peer,
    which reads cp_context.cu_seqlens); a cu_seqlens passed here must be the same. chunk_indices is not needed."""
    if not isinstance(cp_context, _cp.FLACPContext):
        raise ValueError("cp_context must be an FLACPContext from fla.ops.cp.build_cp_context (got "
                         f"{type(cp_context).__name__})")
    if cu_seqlens is not None and (cp_context.cu_seqlens is None or not torch.equal(
            cu_seqlens.to(cp_context.cu_seqlens.device, torch.long), cp_context.cu_seqlens.long())):
        raise ValueError("cu_seqlens differs from cp_context.cu_seqlens: pass the context's (or none)")
    return token_shift(x, cp_context=cp_context)


class TokenShiftCPFunction:
    """The peer's internal autograd function behind its token_shift_cp: not provided (use token_shift_cp, or
    token_shift(x, cp_context=...))."""

    @staticmethod
    def apply(*args, **kwargs):
        raise NotImplementedError(
            "TokenShiftCPFunction is an internal kernel of the peer library (flash-linear-attention), not part of "
            "fla's API: use fla.modules.token_shift_cp.token_shift_cp, or token_shift(x, cp_context=...)")
