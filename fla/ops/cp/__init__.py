"""Context parallelism for the ops: one sequence split across the ranks of a process group (see
docs/context_parallel.md). `build_cp_context` gives a rank its piece; the chunked ops, the short convolution and
`parallel_attn` take it as `cp_context=`."""
from fla.ops.cp.chunk import chunk_cp
from fla.ops.cp.comm import all_gather_pieces, bytes_sent, halo_before
from fla.ops.cp.context import FLACPContext, build_cp_context, split_cu_seqlens

__all__ = ["FLACPContext", "all_gather_pieces", "build_cp_context", "bytes_sent", "chunk_cp", "halo_before",
           "split_cu_seqlens"]
