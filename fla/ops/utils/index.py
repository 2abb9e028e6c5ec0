"""The `cu_seqlens -> (sequence, chunk)` index for packed variable-length input.

Packed input is `[1, T_total, H, *]` with `cu_seqlens = [0, l_0, l_0 + l_1, ..., T_total]`. A chunk kernel launches one
program per (sequence, chunk) pair; `chunk_indices[i] = (n, c)` says program i handles chunk c of sequence n, and
`chunk_offsets[n]` is the index of sequence n's first chunk in the flat list (where its chunk states live).
All of it is built on the host, once per cu_seqlens tensor (`varlen_index`), so that no block reads the device.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


def _version(t: torch.Tensor) -> int:
    """The in-place write counter of t; -1 for a tensor made under torch.inference_mode, which has none: the memo then
    trusts it unchanged (one written in place inside inference mode after its first use would not be noticed)."""
    return -1 if t.is_inference() else t._version


class VarlenIndex:
    """Everything the kernels need to know about one packed batch, read from the host once.

    A chunk kernel needs the (sequence, chunk) rows of its grid and each sequence's first chunk; the grid size itself
    is a host integer. Computing those from a device `cu_seqlens` costs a device->host sync per quantity (and
    `repeat_interleave` with tensor repeats syncs too), and every block of every layer needs them. So they are
    computed here, on the host, from one host copy of the boundaries (`cu_seqlens_cpu` when the caller has it: no sync
    at all; else one `cu_seqlens.tolist()`), once per chunk size, and moved to the device with non-blocking copies.
    `varlen_index()` memoizes them per `cu_seqlens` tensor, so every block and every layer of a forward and its
    backward share one index (a model or trainer that builds it up front with the host copy makes the whole step
    sync-free).
    """

    def __init__(self, cu_seqlens: torch.Tensor, bounds: list[int]):
        self.cu_seqlens = cu_seqlens
        self.bounds = bounds  # the boundaries as host ints, [N + 1]
        self.version = _version(cu_seqlens)
        self._chunks: dict[int, tuple[int, torch.Tensor, torch.Tensor, list[int]]] = {}
        self._tokens: torch.Tensor | None = None

    @property
    def num_seqs(self) -> int:
        return len(self.bounds) - 1

    def _chunk_index(self, chunk_size: int):
        if chunk_size not in self._chunks:
            counts = [-(-(eos - bos) // chunk_size) for bos, eos in zip(self.bounds[:-1], self.bounds[1:])]
            offsets = [0]
            for n in counts:
                offsets.append(offsets[-1] + n)
            rows = [(seq, c) for seq, n in enumerate(counts) for c in range(n)]
            device = self.cu_seqlens.device
            indices = torch.tensor(rows, dtype=torch.int32).view(-1, 2).to(device, non_blocking=True)
            offsets_t = torch.tensor(offsets, dtype=torch.int64).to(device, non_blocking=True)
            self._chunks[chunk_size] = (offsets[-1], indices, offsets_t, offsets)
        return self._chunks[chunk_size]

    def num_chunks(self, chunk_size: int) -> int:
        """Total chunk count over all sequences (a host int: a grid size or an allocation)."""
        return self._chunk_index(chunk_size)[0]

    def chunk_indices(self, chunk_size: int) -> torch.Tensor:
        """[NT_total, 2] int32 rows of (sequence index, chunk index within that sequence), on the device."""
        return self._chunk_index(chunk_size)[1]

    def chunk_offsets(self, chunk_size: int) -> torch.Tensor:
        """[N + 1] int64 index of each sequence's first chunk (last entry: the total), on the device."""
        return self._chunk_index(chunk_size)[2]

    def chunk_offsets_host(self, chunk_size: int) -> list[int]:
        return self._chunk_index(chunk_size)[3]

    def token_indices(self) -> torch.Tensor:
        """[T_total, 2] int32 rows of (sequence index, position within that sequence), on the device."""
        if self._tokens is None:
            bounds = torch.tensor(self.bounds, dtype=torch.int64)
            lens = bounds[1:] - bounds[:-1]
            seq = torch.repeat_interleave(torch.arange(len(lens)), lens, output_size=self.bounds[-1])
            pos = torch.arange(self.bounds[-1]) - bounds[:-1][seq]
            self._tokens = torch.stack([seq, pos], 1).to(torch.int32).to(self.cu_seqlens.device, non_blocking=True)
        return self._tokens


_CACHE_SIZE = 8  # recent batches; a model's layers all hit the newest entry
_cache: list[VarlenIndex] = []
# Every function that reads the memo runs eagerly under torch.compile (a graph break): traced, the identity lookup
# would be baked into the graph and serve one batch's index to the next (seen: wrong chunk indices on the second
# batch of a compiled block). What they return (device tensors, host ints) enters the graph as inputs.
eager = torch.compiler.disable


@eager
def varlen_index(cu_seqlens: torch.Tensor, cu_seqlens_cpu: torch.Tensor | None = None) -> VarlenIndex:
    """The `VarlenIndex` of this `cu_seqlens` tensor: the memoized one if the same tensor (same object, not written
    since) was seen recently, else a new one built from `cu_seqlens_cpu` (trusted to hold the same values: comparing
    them would cost the sync it spares) or, without it, from one read of `cu_seqlens`. The entry keeps the tensor
    alive, so its identity cannot be reused by another tensor while cached."""
    for entry in _cache:
        if entry.cu_seqlens is cu_seqlens and entry.version == _version(cu_seqlens):
            return entry
    bounds = (cu_seqlens_cpu if cu_seqlens_cpu is not None else cu_seqlens).tolist()
    entry = VarlenIndex(cu_seqlens, bounds)
    _cache.insert(0, entry)
    del _cache[_CACHE_SIZE:]
    return entry


def prepare_lens(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """[N + 1] -> [N] sequence lengths."""
    return cu_seqlens[1:] - cu_seqlens[:-1]


@eager
def prepare_chunk_offsets(cu_seqlens: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """[N + 1] -> [N + 1] int64: index of each sequence's first chunk; the last entry is the total chunk count."""
    return varlen_index(cu_seqlens).chunk_offsets(chunk_size)


@eager
def prepare_chunk_indices(cu_seqlens: torch.Tensor, chunk_size: int,
                          cu_seqlens_cpu: torch.Tensor | None = None) -> torch.Tensor:
    """[N + 1] -> [NT_total, 2] int32 rows of (sequence index, chunk index within that sequence)."""
    return varlen_index(cu_seqlens, cu_seqlens_cpu).chunk_indices(chunk_size)


@eager
def prepare_token_indices(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """[N + 1] -> [T_total, 2] int32 rows of (sequence index, position within that sequence)."""
    return varlen_index(cu_seqlens).token_indices()


@eager
def chunk_offsets_host(cu_seqlens: torch.Tensor, chunk_size: int) -> list[int]:
    """`prepare_chunk_offsets` as host ints (for the PyTorch twins' per-sequence loops)."""
    return varlen_index(cu_seqlens).chunk_offsets_host(chunk_size)


@eager
def varlen_bounds(cu_seqlens: torch.Tensor) -> list[int]:
    """cu_seqlens as host ints, read once per tensor (none if its index was built from cu_seqlens_cpu)."""
    return varlen_index(cu_seqlens).bounds


@eager
def num_chunks(T: int, cu_seqlens: torch.Tensor | None, chunk_size: int) -> int:
    """Chunks per batch row without cu_seqlens, else the total over the packed sequences (a host int)."""
    if cu_seqlens is None:
        return triton.cdiv(T, chunk_size)
    return varlen_index(cu_seqlens).num_chunks(chunk_size)


@eager
def sequence_spans(cu_seqlens: torch.Tensor | None, batch_size: int, seq_len: int) -> list[tuple[int, int, int]]:
    """(batch row, start, end) of every sequence, for the PyTorch twins that loop over sequences on the host."""
    if cu_seqlens is None:
        return [(b, 0, seq_len) for b in range(batch_size)]
    bounds = varlen_bounds(cu_seqlens)
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
    offsets = chunk_offsets_host(cu_seqlens, chunk_size) if states else None
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
