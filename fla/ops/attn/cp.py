"""`parallel_attn` under context parallelism: this rank's queries against the keys of the whole sequence.

Every rank all-gathers K, V (and the gate g) with torch's autograd-aware all-gather (O(T) per rank: softmax
attention needs every earlier key; dK, dV, dg of the gathered copies go back to their owners through the
all-gather's backward, a reduce-scatter), then keeps the keys its queries can see: from the start of its first
document (or the window's reach, if later) to the end of its piece. Each of its documents is then one sequence
whose queries are the last positions of its keys, so the query-offset attention (`parallel_attn_q_offset`'s
dispatch: the Triton kernels on a GPU or under the interpreter, SDPA per document on a plain CPU) computes query i
(global) against key j when both lie in the same document, j <= i, and i - j < window_size. The keys before the
first query (earlier ranks' tokens) get their dk, dv, dg from those kernels, and the reduce-scatter returns them.

torch's own context-parallel SDPA (`torch.distributed.tensor.experimental.context_parallel`) needs DTensor inputs and
has no gate bias or document mask. Speed on a GPU is unmeasured.
"""
from __future__ import annotations

import torch

from fla.ops.attn.parallel import _parallel_attn
from fla.ops.cp.comm import all_gather_pieces
from fla.ops.cp.context import FLACPContext
from fla.ops.utils.index import varlen_index


def _gather_time(x: torch.Tensor, context: FLACPContext) -> torch.Tensor:
    """[B, T_local, ...] on every rank -> [B, world * T_local, ...], the whole sequence (differentiable)."""
    pieces = all_gather_pieces(x, context)
    return pieces.transpose(0, 1).reshape(x.shape[0], -1, *x.shape[2:])


def _key_seqlens(shift: int, device, context: FLACPContext) -> torch.Tensor:
    """The keys' boundaries: the piece's documents, the first one extended by the `shift` keys before the piece.
    Built on the host once per context, shift and device, its varlen index with it (no device read per call)."""
    key = ("attn_key_seqlens", shift, device)
    if key not in context._memo:
        cpu = context.cu_seqlens_cpu.long() + shift
        cpu[0] = 0
        dev = cpu.to(device, non_blocking=True)
        varlen_index(dev, cpu)
        context._memo[key] = dev
    return context._memo[key]


def parallel_attn_cp(q, k, v, g, scale: float, window_size: int | None, cu_seqlens, context: FLACPContext,
                     sink_bias=None):
    """This rank's output of `parallel_attn` (q [B, T_local, HQ, K], k/v [B, T_local, H, *], g [B, T_local, HQ]
    or None: this rank's tokens; sink_bias [HQ] or None) under `context`. Returns o [B, T_local, HQ, V] in q's
    dtype."""
    if not isinstance(context, FLACPContext):
        raise ValueError(f"cp_context must be an FLACPContext (got {type(context).__name__})")
    if cu_seqlens is not None:
        raise ValueError("with cp_context do not pass cu_seqlens: the boundaries come from the context")
    T = q.shape[1]
    start = context.rank * T
    # the first key any query of the piece sees (host values: no device read): its first document's start, or the
    # window's reach from the piece's first query; every rank slices (the same graph on every rank)
    first = start - context.pre_num_conv_tokens if context.is_varlen else 0
    j0 = first if window_size is None else max(first, start - window_size + 1)
    keys = [_gather_time(x, context)[:, j0:start + T].contiguous() if x is not None else None for x in (k, v, g)]
    cu_q = cu_k = None
    if context.is_varlen:
        cu_q, cu_k = context.cu_seqlens, _key_seqlens(start - j0, q.device, context)
    return _parallel_attn(q, *keys, scale, window_size, cu_q, sink_bias, cu_k)
