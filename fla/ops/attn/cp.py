"""`parallel_attn` under context parallelism: this rank's queries against the keys of the whole sequence.

Every rank all-gathers K, V (and the gate g) with torch's autograd-aware all-gather (O(T) per rank: softmax
attention needs every earlier key; dK, dV, dg of the gathered copies go back to their owners through the
all-gather's backward), then computes its queries at their global positions: query i (global) sees key j when both
lie in the same document, j <= i, and i - j < window_size. Only keys from the first document of the piece (or the
window) onwards are read.

This runs PyTorch SDPA with an explicit mask, in query blocks, on every device: our Triton kernel takes no query
offset, and torch's own context-parallel SDPA (`torch.distributed.tensor.experimental.context_parallel`) needs
DTensor inputs and has no gate bias or document mask. Speed on a GPU is unmeasured.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fla.ops.cp.comm import all_gather_pieces
from fla.ops.cp.context import FLACPContext

QUERY_BLOCK = 1024


def _gather_time(x: torch.Tensor, context: FLACPContext) -> torch.Tensor:
    """[B, T_local, ...] on every rank -> [B, world * T_local, ...], the whole sequence (differentiable)."""
    pieces = all_gather_pieces(x, context)
    return pieces.transpose(0, 1).reshape(x.shape[0], -1, *x.shape[2:])


def _positions(Tg: int, device, context: FLACPContext):
    """Global positions [Tg], their document index and their document's start, built once per context and device."""
    key = ("attn_positions", Tg, device)
    if key not in context._memo:
        pos = torch.arange(Tg)
        if context.is_varlen:
            bounds = context.cu_seqlens_global_cpu.long()
            doc = torch.bucketize(pos, bounds[1:], right=True)  # document index of every global position
            doc_start = bounds[doc]
        else:
            doc, doc_start = torch.zeros_like(pos), torch.zeros_like(pos)
        context._memo[key] = tuple(x.to(device, non_blocking=True) for x in (pos, doc, doc_start))
    return context._memo[key]


def parallel_attn_cp(q, k, v, g, scale: float, window_size: int | None, cu_seqlens, context: FLACPContext,
                     sink_bias=None):
    """This rank's output of `parallel_attn` (q [B, T_local, HQ, K], k/v [B, T_local, H, *], g [B, T_local, HQ]
    or None: this rank's tokens; sink_bias [HQ] or None) under `context`. Returns o [B, T_local, HQ, V] in q's
    dtype. A sink is one more key per query head, with a zero key, a zero value and the logit sink_bias[h]."""
    if not isinstance(context, FLACPContext):
        raise ValueError(f"cp_context must be an FLACPContext (got {type(context).__name__})")
    if cu_seqlens is not None:
        raise ValueError("with cp_context do not pass cu_seqlens: the boundaries come from the context")
    B, T = q.shape[:2]
    start = context.rank * T
    kf, vf = _gather_time(k.float(), context), _gather_time(v.float(), context)
    pos, doc, doc_start = _positions(kf.shape[1], q.device, context)
    G = None
    if g is not None:  # G_t = sum of g over the document up to t, on the whole sequence
        c = torch.cat([g.new_zeros(B, 1, g.shape[2], dtype=torch.float64),
                       _gather_time(g, context).double().cumsum(1)], 1)
        G = (c[:, 1:] - c[:, doc_start]).float()  # [B, Tg, HQ]
    # keys before the piece's first document are never seen (a host value: no device read)
    first = start - context.pre_num_conv_tokens if context.is_varlen else 0
    qf = q.float()
    pieces = []
    for i0 in range(0, T, QUERY_BLOCK):
        i1 = min(i0 + QUERY_BLOCK, T)
        j0 = first if window_size is None else max(first, start + i0 - window_size + 1)
        i = pos[start + i0:start + i1, None]
        j = pos[None, j0:start + i1]
        mask = (j <= i) & (doc[j] == doc[i])
        if window_size is not None:
            mask &= i - j < window_size
        kb, vb = kf[:, j0:start + i1].transpose(1, 2), vf[:, j0:start + i1].transpose(1, 2)
        if G is not None:
            Gq, Gk = G[:, start + i0:start + i1].transpose(1, 2), G[:, j0:start + i1].transpose(1, 2)
            bias = Gq[..., None] - Gk[:, :, None]
            mask = bias.masked_fill(~mask, float("-inf"))
        if sink_bias is not None:
            if mask.dtype == torch.bool:
                mask = torch.zeros(mask.shape, device=q.device).masked_fill(~mask, float("-inf"))
            sink = sink_bias.float().view(1, -1, 1, 1).expand(B, -1, i1 - i0, 1)
            mask = torch.cat([mask.expand(B, q.shape[2], -1, -1), sink], -1)
            kb, vb = F.pad(kb, (0, 0, 0, 1)), F.pad(vb, (0, 0, 0, 1))  # the sink's zero key and value
        o = F.scaled_dot_product_attention(qf[:, i0:i1].transpose(1, 2), kb, vb, attn_mask=mask, scale=scale,
                                           enable_gqa=q.shape[2] != k.shape[2])
        pieces.append(o.transpose(1, 2))
    return torch.cat(pieces, 1).to(q.dtype)
