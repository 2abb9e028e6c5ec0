"""RWKV's token shift: x_{t-1} - x_t within each sequence (the time mix and the channel mix of RWKV-7 use it).

The previous token of a sequence's first token is its row of `cache` (the last token of the previous call, for
decoding) or zero; under context parallelism the first document of a piece that began on an earlier rank takes the
previous rank's last token, through the short convolution's halo exchange (`fla.ops.cp.halo_before` with a window
of 2; its gradient goes back to that rank). Plain PyTorch (a shifted copy and a subtraction: memory-bound, one
kernel's worth of traffic either way), differentiable in x and in the cache.
"""
from __future__ import annotations

import torch

from fla.ops.cp.comm import halo_before
from fla.ops.cp.context import FLACPContext
from fla.ops.utils.index import sequence_spans


def _shift(x: torch.Tensor, cu_seqlens: torch.Tensor | None, cache: torch.Tensor | None
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """(delta [B, T, D], the last token of every sequence [N, D]; a sequence without tokens keeps its cache row)."""
    B, T, D = x.shape
    if cu_seqlens is None:
        first = cache.to(x.dtype)[:, None] if cache is not None else x.new_zeros(B, 1, D)
        shifted = torch.cat([first, x[:, :-1]], 1)
        last = x[:, -1] if T > 0 else (cache if cache is not None else x.new_zeros(B, D))
        return shifted - x, last
    spans = sequence_spans(cu_seqlens, 1, T)
    starts = torch.tensor([bos for _, bos, eos in spans if eos > bos], dtype=torch.long, device=x.device)
    shifted = torch.cat([x.new_zeros(1, 1, D), x[:, :-1]], 1)
    keep = torch.ones(T, 1, dtype=x.dtype, device=x.device)
    keep[starts] = 0  # a sequence's first token sees no token of the sequence before it
    shifted = shifted * keep
    if cache is not None:
        rows = torch.tensor([i for i, (_, bos, eos) in enumerate(spans) if eos > bos], dtype=torch.long,
                            device=x.device)
        shifted = shifted.index_add(1, starts, cache.to(x.dtype)[rows][None])
    ends = torch.tensor([max(eos - 1, 0) for _, _, eos in spans], dtype=torch.long, device=x.device)
    empty = torch.tensor([eos == bos for _, bos, eos in spans], device=x.device)[:, None]
    before = cache.to(x.dtype) if cache is not None else x.new_zeros(len(spans), D)
    lasts = torch.where(empty, before, x[0].index_select(0, ends)) if T > 0 else before
    return shifted - x, lasts


def _cp_cache(x: torch.Tensor, context: FLACPContext) -> torch.Tensor:
    """The cache rows [N, D] of this rank's piece: the previous rank's last token for the first document when it
    began earlier, zeros otherwise. Every rank joins the exchange (the collectives are matched by order)."""
    T, D = x.shape[1:]
    n = 1 if context.receives_state else 0
    # [B, n, D]; summed over n (zeros when n = 0) so the exchange stays in the graph on every rank and its
    # backward (a reduce-scatter) runs everywhere too
    first = halo_before(x, n, min(T, 1), context).sum(1)
    if not context.is_varlen:
        return first  # every row continues from the previous rank
    return torch.cat([first, x.new_zeros(context.num_seqs - 1, D)], 0)


def token_shift(
    x: torch.Tensor,
    cu_seqlens: torch.Tensor | None = None,
    cache: torch.Tensor | None = None,
    output_cache: bool = False,
    chunk_indices: torch.Tensor | None = None,
    *,
    cp_context: FLACPContext | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """delta_t = x_{t-1} - x_t per sequence, x_{-1} being the sequence's cache row or zero.

    Args:
        x: [B, T, D] (B = 1 with cu_seqlens)
        cu_seqlens: [N + 1] int, packed sequences
        cache: [N, D] the last token of each sequence from the previous call (N = B without cu_seqlens), or None
        output_cache: also return the last token of each sequence (the next call's cache)
        chunk_indices: taken for the peer library's call form and not needed
        cp_context: this rank's piece of a sequence split across ranks (fla.ops.cp.build_cp_context): the first
            document's previous token comes from the previous rank; then no cu_seqlens and no cache
    Returns:
        delta [B, T, D], and with output_cache the cache [N, D]
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise ValueError(f"x must be a [B, T, D] tensor (got {getattr(x, 'shape', type(x).__name__)})")
    if cp_context is not None:
        if not isinstance(cp_context, FLACPContext):
            raise ValueError(f"cp_context must be an FLACPContext from fla.ops.cp.build_cp_context (got "
                             f"{type(cp_context).__name__})")
        if cu_seqlens is not None or cache is not None:
            raise ValueError("with cp_context pass neither cu_seqlens nor cache: the boundaries and the token "
                             "before this piece come from the context")
        cu_seqlens = cp_context.cu_seqlens
        cache = _cp_cache(x, cp_context)
    if cu_seqlens is not None and x.shape[0] != 1:
        raise ValueError(f"with cu_seqlens x must be packed as [1, T, D] (got batch size {x.shape[0]})")
    N = x.shape[0] if cu_seqlens is None else len(cu_seqlens) - 1
    if cache is not None and (not isinstance(cache, torch.Tensor) or tuple(cache.shape) != (N, x.shape[-1])):
        raise ValueError(f"cache must be [N, D] = [{N}, {x.shape[-1]}] (got {getattr(cache, 'shape', cache)})")
    delta, last = _shift(x, cu_seqlens, cache)
    return (delta, last) if output_cache else delta


class TokenShift(torch.autograd.Function):
    """The peer library's autograd form of `token_shift`:
    `TokenShift.apply(x, cu_seqlens=None, cache=None, output_cache=False, chunk_indices=None)` -> (delta, cache_out),
    cache_out [N, D] with output_cache, else None. The math is `token_shift`'s; backward recomputes it (a shifted
    copy, cheap) and differentiates that, so there is one implementation and x and the cache get their gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, cu_seqlens: torch.Tensor | None = None, cache: torch.Tensor | None = None,
                output_cache: bool = False, chunk_indices: torch.Tensor | None = None):
        delta, last = token_shift(x, cu_seqlens, cache, output_cache=True)
        ctx.save_for_backward(x, cache)
        ctx.cu_seqlens = cu_seqlens
        return delta, (last if output_cache else None)

    @staticmethod
    def backward(ctx, ddelta: torch.Tensor, dcache: torch.Tensor | None = None):
        x, cache = ctx.saved_tensors
        leaves = [x.detach().requires_grad_()]
        if cache is not None:
            leaves.append(cache.detach().requires_grad_())
        with torch.enable_grad():
            delta, last = token_shift(leaves[0], ctx.cu_seqlens, leaves[1] if cache is not None else None,
                                      output_cache=True)
            outputs, grads_out = [delta], [ddelta]
            if dcache is not None:
                outputs.append(last)
                grads_out.append(dcache)
            grads = torch.autograd.grad(outputs, leaves, grads_out, allow_unused=True)
        dcache_in = grads[1] if cache is not None else None
        if dcache_in is None and cache is not None:  # every sequence had tokens and no cache_out gradient came
            dcache_in = torch.zeros_like(cache)
        return grads[0], None, dcache_in, None, None


def token_shift_ref(x: torch.Tensor, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
    """The peer library's reference (no cache): a plain per-sequence loop, x [B, T, D] (B = 1 with cu_seqlens)."""
    bounds = [0, x.shape[1]] if cu_seqlens is None else cu_seqlens.tolist()
    delta = torch.empty_like(x)
    for bos, eos in zip(bounds[:-1], bounds[1:]):
        seq = x[:, bos:eos]
        delta[:, bos:eos] = torch.cat([torch.zeros_like(seq[:, :1]), seq[:, :-1]], 1)[:, :eos - bos] - seq
    return delta


def token_shift_fwd(x, cu_seqlens=None, cache=None, output_cache=False, chunk_indices=None):
    """Not provided: the peer's forward launcher."""
    from fla.modules._peer_internal import peer_internal
    peer_internal("token_shift_fwd", "token_shift (or TokenShift.apply) from fla.modules.token_shift")


def token_shift_bwd(dy, N, T, dcache=None, cu_seqlens=None, use_short_kernel=True, has_init_cache=False,
                    chunk_indices=None):
    """Not provided: the peer's backward launcher (autograd runs ours through token_shift)."""
    from fla.modules._peer_internal import peer_internal
    peer_internal("token_shift_bwd", "token_shift (or TokenShift.apply) from fla.modules.token_shift (autograd)")
