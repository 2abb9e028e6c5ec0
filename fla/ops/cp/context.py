"""Which piece of the sequence this rank holds, for context parallelism (CP).

The global sequence (packed documents `[1, T, ...]` with global `cu_seqlens`, or fixed-length rows `[B, T, ...]`)
is cut into `world_size` equal consecutive pieces of `part_len = T / world_size` tokens; rank r holds tokens
[r * part_len, (r + 1) * part_len). A document may end inside a piece, start inside one, or span several. The
context records what the ops need to know about this rank's piece, all of it host data computed once per batch:
the piece's own boundaries (local `cu_seqlens`, first document clipped at the piece start, last one at its end)
and whether the first document began on an earlier rank (then its state, or its conv halo, comes from there).

The field names follow the peer library's `FLACPContext` (fla-core 0.6.0) where they mean the same thing.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from fla.ops.utils.index import varlen_index


@dataclass
class FLACPContext:
    """One rank's piece of a context-parallel sequence (build it with `build_cp_context`).

    group: the CP process group (ranks in sequence order); rank / world_size: this rank's place in it
    cu_seqlens / cu_seqlens_cpu: [N_local + 1] boundaries of the documents inside this piece (device / host),
        None for fixed-length rows (every row then spans all ranks)
    is_first_rank: the piece's first document starts in this piece (no state or halo comes from earlier ranks)
    is_last_rank: the piece's last document ends in this piece (at its end or before)
    pre_num_ranks / post_num_ranks: how many earlier / later ranks the first / last document spans
    pre_num_conv_tokens: tokens of the first document before this piece (None for fixed-length rows: rank * T_local)
    conv1d_kernel_size: the short convolution's window, if the caller wants it recorded (not needed by our ops)
    part_len: tokens per rank (None for fixed-length rows until an op sees T_local)
    """
    group: dist.ProcessGroup | None = None
    cu_seqlens: torch.Tensor | None = None
    cu_seqlens_cpu: torch.Tensor | None = None
    is_last_rank: bool | None = None
    pre_num_ranks: int | None = None
    is_first_rank: bool | None = None
    post_num_ranks: int | None = None
    conv1d_kernel_size: int | None = None
    pre_num_conv_tokens: int | None = None
    rank: int = 0
    world_size: int = 1
    part_len: int | None = None
    cu_seqlens_global_cpu: torch.Tensor | None = None
    _memo: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def num_seqs(self) -> int:
        """Documents (or clipped documents) in this piece; 0 for fixed-length rows (one per row)."""
        return 0 if self.cu_seqlens_cpu is None else len(self.cu_seqlens_cpu) - 1

    @property
    def is_cp_enabled(self) -> bool:
        return self.group is not None

    @property
    def is_varlen(self) -> bool:
        return self.cu_seqlens is not None

    @property
    def receives_state(self) -> bool:
        """The first document of the piece began on an earlier rank: its state (or halo) comes from there."""
        return not self.is_first_rank

    @property
    def passes_state_through(self) -> bool:
        """The whole piece lies inside one document that began earlier: the state leaving the piece depends on the
        state entering it (otherwise a document starts inside the piece and cuts that dependence)."""
        return self.receives_state and (not self.is_varlen or self.num_seqs == 1)

    def conv_prefix_tokens(self, T_local: int) -> int:
        """Tokens of the first document before this piece (fixed-length rows: everything before it)."""
        return self.rank * T_local if self.pre_num_conv_tokens is None else self.pre_num_conv_tokens


def split_cu_seqlens(cu_seqlens_cpu: torch.Tensor | None, world_size: int, rank: int) -> dict:
    """The host fields of rank `rank`'s piece (see FLACPContext); `cu_seqlens_cpu` is the global [N + 1] host
    tensor, or None for fixed-length rows. Pure function of its arguments (tested without processes)."""
    if not isinstance(world_size, int) or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size) with world_size >= 1 (got rank {rank}, world {world_size})")
    if cu_seqlens_cpu is None:
        return dict(cu_seqlens_cpu=None, is_first_rank=rank == 0, is_last_rank=rank == world_size - 1,
                    pre_num_ranks=rank, post_num_ranks=world_size - 1 - rank, pre_num_conv_tokens=None,
                    part_len=None)
    bounds = [int(b) for b in cu_seqlens_cpu.tolist()]
    total = bounds[-1]
    if bounds[0] != 0 or any(b < a for a, b in zip(bounds[:-1], bounds[1:])):
        raise ValueError(f"cu_seqlens must start at 0 and be non-decreasing (got {bounds})")
    if total < world_size or total % world_size != 0:
        raise ValueError(f"context parallelism splits the {total} tokens into {world_size} equal pieces: the token "
                         f"count must be a positive multiple of the CP world size (pad the batch to "
                         f"{-(-max(total, 1) // world_size) * world_size} tokens)")
    part_len = total // world_size
    start, end = rank * part_len, (rank + 1) * part_len
    cu = torch.tensor(bounds, dtype=torch.long)
    first = int(torch.searchsorted(cu[1:], start, side="right"))  # the first document with tokens in the piece
    last = int(torch.searchsorted(cu[:-1], end, side="left")) - 1  # the last such document
    local = (cu[first:last + 2].clamp(start, end) - start).unique_consecutive().to(torch.int32)
    doc_start, doc_end = bounds[first], bounds[last + 1]
    first_owner, last_owner = doc_start // part_len, (doc_end - 1) // part_len
    return dict(cu_seqlens_cpu=local, is_first_rank=first_owner == rank, is_last_rank=last_owner == rank,
                pre_num_ranks=rank - first_owner, post_num_ranks=last_owner - rank,
                pre_num_conv_tokens=start - doc_start, part_len=part_len)


def build_cp_context(
    cu_seqlens: torch.Tensor | None,
    group: dist.ProcessGroup | None,
    conv1d_kernel_size: int | None = None,
    cu_seqlens_cpu: torch.Tensor | None = None,
) -> FLACPContext:
    """The CP context of this rank in `group` for a sequence with global boundaries `cu_seqlens` (before the
    split; B must be 1), or `cu_seqlens=None` for fixed-length rows [B, T] split along T.

    Args:
        cu_seqlens: [N + 1] int global boundaries (any device; its host copy is read once), or None
        group: the CP process group, ranks in sequence order (None: the default group)
        conv1d_kernel_size: recorded for the caller (the peer library's field); the ops read the window themselves
        cu_seqlens_cpu: the same boundaries on the host (optional: spares the device->host read)
    Returns:
        FLACPContext; pass it to the ops as `cp_context=` with this rank's piece of every input.
    """
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("build_cp_context needs an initialized torch.distributed process group "
                         "(torch.distributed.init_process_group)")
    group = group if group is not None else dist.group.WORLD
    world_size, rank = dist.get_world_size(group), dist.get_rank(group)
    host = None
    if cu_seqlens is not None:
        if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
            raise ValueError("cu_seqlens must be a 1-D integer tensor [N + 1] of global boundaries, or None")
        host = (cu_seqlens_cpu if cu_seqlens_cpu is not None else cu_seqlens).detach().cpu()
    fields = split_cu_seqlens(host, world_size, rank)
    local_cpu = fields.pop("cu_seqlens_cpu")
    local = None
    if local_cpu is not None:
        local = local_cpu.to(cu_seqlens.device, non_blocking=True)
        varlen_index(local, local_cpu)  # every op on this piece reads its index from the host, no sync
    return FLACPContext(group=group, cu_seqlens=local, cu_seqlens_cpu=local_cpu, conv1d_kernel_size=conv1d_kernel_size,
                        rank=rank, world_size=world_size, cu_seqlens_global_cpu=host, **fields)
