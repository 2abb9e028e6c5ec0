"""Chunk-local cumulative sum of log gates.

Within each chunk of `chunk_size` tokens (chunks restart at every sequence start under `cu_seqlens`),
`out[t] = sum_{s in chunk, s <= t} g[s]` (forward) or `sum_{s in chunk, s >= t} g[s]` (reverse). Works for a scalar
gate per head `[B, T, H]` and a gate per key channel `[B, T, H, K]`. Output is float32 (decays are exponentiated
later; summing in half precision loses them).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fla.ops.utils.dispatch import dispatch
from fla.ops.utils.index import prepare_chunk_indices, sequence_bounds, sequence_spans


@triton.heuristics({"IS_VARLEN": lambda args: args["cu_seqlens"] is not None})
@triton.jit
def chunk_local_cumsum_kernel(
    g, out, cu_seqlens, chunk_indices, scale,
    T, H: tl.constexpr, S: tl.constexpr, BT: tl.constexpr, BS: tl.constexpr,
    REVERSE: tl.constexpr, HAS_SCALE: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    # grid: (chunks, B * H); g/out are [B, T, H, S] (S = 1 for a scalar gate), row stride H * S.
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    if IS_VARLEN:
        i_n, i_t = tl.load(chunk_indices + i_t * 2).to(tl.int32), tl.load(chunk_indices + i_t * 2 + 1).to(tl.int32)
    else:
        i_n = i_b
    bos, T = sequence_bounds(i_n, cu_seqlens, T, IS_VARLEN)
    # Plain pointers and masks, not block pointers: triton 3.9 removed tl.make_block_ptr.
    o_t = i_t * BT + tl.arange(0, BT)
    o_s = tl.arange(0, BS)
    m = (o_t < T)[:, None] & (o_s < S)[None, :]
    offs = (bos + o_t)[:, None] * (H * S) + i_h * S + o_s[None, :]
    b_g = tl.load(g + offs, mask=m, other=0.).to(tl.float32)
    b_o = tl.cumsum(b_g, axis=0)
    if REVERSE:
        b_o = tl.sum(b_g, axis=0)[None, :] - b_o + b_g
    if HAS_SCALE:
        b_o *= scale
    tl.store(out + offs, b_o.to(out.dtype.element_ty), mask=m)


def _cumsum_triton(g, chunk_size, reverse=False, scale=None, cu_seqlens=None, output_dtype=torch.float32):
    B, T, H = g.shape[:3]
    S = g.shape[3] if g.dim() == 4 else 1
    out = torch.full_like(g, float("nan"), dtype=output_dtype or g.dtype)
    if cu_seqlens is not None:
        chunk_indices = prepare_chunk_indices(cu_seqlens, chunk_size)
        num_chunks = len(chunk_indices)
    else:
        chunk_indices, num_chunks = None, triton.cdiv(T, chunk_size)
    if num_chunks == 0:
        return out
    chunk_local_cumsum_kernel[(num_chunks, B * H)](
        g, out, cu_seqlens, chunk_indices, scale if scale is not None else 1.0,
        T=T, H=H, S=S, BT=chunk_size, BS=triton.next_power_of_2(S),
        REVERSE=reverse, HAS_SCALE=scale is not None,
    )
    return out


def _cumsum_torch(g, chunk_size, reverse=False, scale=None, cu_seqlens=None, output_dtype=torch.float32):
    out = torch.empty_like(g, dtype=output_dtype or g.dtype)
    for b, bos, eos in sequence_spans(cu_seqlens, g.shape[0], g.shape[1]):
        for start in range(bos, eos, chunk_size):
            x = g[b, start:min(start + chunk_size, eos)].float()
            y = x.flip(0).cumsum(0).flip(0) if reverse else x.cumsum(0)
            out[b, start:start + len(x)] = y * scale if scale is not None else y
    return out


_chunk_local_cumsum = dispatch(_cumsum_triton, _cumsum_torch)


def chunk_local_cumsum(
    g: torch.Tensor,
    chunk_size: int,
    reverse: bool = False,
    scale: float | None = None,
    cu_seqlens: torch.Tensor | None = None,
    output_dtype: torch.dtype | None = torch.float32,
) -> torch.Tensor:
    """Cumulative sum of `g` within each chunk.

    Args:
        g: [B, T, H] or [B, T, H, K]   log gates
        chunk_size: tokens per chunk (a power of two)
        reverse: sum from the end of the chunk instead
        scale: optional factor applied after the sum
        cu_seqlens: [N + 1] packed sequences (B == 1); chunks restart at every sequence
    Returns:
        [same shape as g] in `output_dtype` (float32 by default; None keeps g's dtype)
    """
    if g.dim() not in (3, 4):
        raise ValueError(f"g must be [B, T, H] or [B, T, H, K] (got shape {list(g.shape)})")
    return _chunk_local_cumsum(g.contiguous(), chunk_size, reverse, scale, cu_seqlens, output_dtype)
