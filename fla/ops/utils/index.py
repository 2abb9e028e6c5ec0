"""The `cu_seqlens -> (sequence, chunk)` index for packed variable-length input.

Packed input is `[1, T_total, H, *]` with `cu_seqlens = [0, l_0, l_0 + l_1, ..., T_total]`. A chunk kernel launches one
program per (sequence, chunk) pair; `chunk_indices[i] = (n, c)` says program i handles chunk c of sequence n, and
`chunk_offsets[n]` is the index of sequence n's first chunk in the flat list (where its chunk states live).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


def prepare_lens(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """[N + 1] -> [N] sequence lengths."""
    return cu_seqlens[1:] - cu_seqlens[:-1]


def prepare_num_chunks(cu_seqlens: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """[N + 1] -> [N] number of chunks per sequence (a length-0 sequence has none)."""
    return triton.cdiv(prepare_lens(cu_seqlens), chunk_size)


def prepare_chunk_offsets(cu_seqlens: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """[N + 1] -> [N + 1] int64: index of each sequence's first chunk; the last entry is the total chunk count."""
    num_chunks = prepare_num_chunks(cu_seqlens, chunk_size)
    return torch.cat([num_chunks.new_zeros(1), num_chunks.cumsum(0)]).to(torch.int64)


def prepare_chunk_indices(cu_seqlens: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """[N + 1] -> [NT_total, 2] int32 rows of (sequence index, chunk index within that sequence)."""
    num_chunks = prepare_num_chunks(cu_seqlens, chunk_size)
    seq = torch.repeat_interleave(torch.arange(len(num_chunks), device=cu_seqlens.device), num_chunks)
    first = torch.repeat_interleave(prepare_chunk_offsets(cu_seqlens, chunk_size)[:-1], num_chunks)
    chunk = torch.arange(len(seq), device=cu_seqlens.device) - first
    return torch.stack([seq, chunk], 1).to(torch.int32)


def prepare_token_indices(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """[N + 1] -> [T_total, 2] int32 rows of (sequence index, position within that sequence)."""
    lens = prepare_lens(cu_seqlens)
    seq = torch.repeat_interleave(torch.arange(len(lens), device=cu_seqlens.device), lens)
    pos = torch.arange(len(seq), device=cu_seqlens.device) - cu_seqlens[:-1].long()[seq]
    return torch.stack([seq, pos], 1).to(torch.int32)


def sequence_spans(cu_seqlens: torch.Tensor | None, batch_size: int, seq_len: int) -> list[tuple[int, int, int]]:
    """(batch row, start, end) of every sequence, for the PyTorch twins that loop over sequences on the host."""
    if cu_seqlens is None:
        return [(b, 0, seq_len) for b in range(batch_size)]
    bounds = cu_seqlens.tolist()
    return [(0, bos, eos) for bos, eos in zip(bounds[:-1], bounds[1:])]


def for_each_sequence(fn, cu_seqlens: torch.Tensor | None, tokens, outs, states=(),
                      chunk_size: int | None = None) -> None:
    """For the PyTorch twins: `outs[i][rows] = fn(*tokens[rows], *states[chunks])[i]`, once for the whole batch
    without cu_seqlens, else for each packed sequence (its token rows of the [1, T_total, ...] tensors and its chunk
    rows of the [1, NT_total, ...] states; empty sequences are skipped). Outputs given as None are not written."""
    if cu_seqlens is None:
        for out, r in zip(outs, fn(*tokens, *states)):
            if out is not None:
                out.copy_(r)
        return
    offsets = prepare_chunk_offsets(cu_seqlens, chunk_size).tolist() if states else None
    for i, (_, bos, eos) in enumerate(sequence_spans(cu_seqlens, 1, 0)):
        if eos == bos:
            continue
        results = fn(*[None if x is None else x[:, bos:eos] for x in tokens],
                     *[None if h is None else h[:, offsets[i]:offsets[i + 1]] for h in states])
        for out, r in zip(outs, results):
            if out is not None:
                out[:, bos:eos] = r


@triton.jit
def sequence_bounds(i_n, cu_seqlens, T, IS_VARLEN: tl.constexpr):
    """In a kernel: (first token row, length) of sequence i_n, from cu_seqlens when packed, else row i_n of a
    [B, T, ...] batch. The one place kernels turn a sequence index into rows."""
    if IS_VARLEN:
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        T = (tl.load(cu_seqlens + i_n + 1).to(tl.int64) - bos).to(tl.int32)
    else:
        bos = (i_n * T).to(tl.int64)
    return bos, T


@triton.jit
def chunk_state_bounds(i_n, cu_seqlens, chunk_offsets, T, BT: tl.constexpr, IS_VARLEN: tl.constexpr):
    """`sequence_bounds` plus the sequence's chunk count NT and the index boh of its first chunk state in
    [B, NT, ...] (fixed length) or [1, NT_total, ...] (packed, from `prepare_chunk_offsets`)."""
    bos, T = sequence_bounds(i_n, cu_seqlens, T, IS_VARLEN)
    NT = tl.cdiv(T, BT)
    if IS_VARLEN:
        boh = tl.load(chunk_offsets + i_n).to(tl.int64)
    else:
        boh = (i_n * NT).to(tl.int64)
    return bos, T, NT, boh
