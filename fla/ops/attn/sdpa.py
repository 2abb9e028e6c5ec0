"""The PyTorch path of `parallel_attn` (a CPU without the Triton interpreter): SDPA with an explicit mask per
sequence and query block, in float32, autograd for the backward; and the per-sequence cumulative gate both paths use.

Queries may be the last Lq positions of a longer key sequence (Lk >= Lq, per sequence under `cu_seqlens_k`), as in
the Triton kernels' Q_OFFSET (context parallelism): query i stands at key position Lk - Lq + i.

An attention sink (`sink_bias` [HQ]) is one more key per query head whose score is sink_bias[h] and whose value is
zero: SDPA gets a zero key and value in front and the sink logit as that column of its (float) mask, so the sink
only adds exp(sink_bias[h]) to every softmax denominator, and its gradient comes from autograd through the mask.
"""
from __future__ import annotations

import torch

from fla.ops.utils.index import prepare_token_indices, varlen_bounds

TORCH_QUERY_BLOCK = 1024


def segment_cumsum(x: torch.Tensor, cu_seqlens: torch.Tensor | None, reverse: bool = False) -> torch.Tensor:
    """Cumulative sum of x [B, T, ...] along time, restarting at every sequence, float32 out. Under cu_seqlens one
    float64 sum over the packed axis, minus its value at each sequence's boundary (exact enough in float64, one
    launch for any number of sequences). Differentiable (the torch path's gate runs through it)."""
    if cu_seqlens is None:
        x = x.float()
        return x.flip(1).cumsum(1).flip(1) if reverse else x.cumsum(1)
    x = x.double()
    zero = x.new_zeros(x.shape[0], 1, *x.shape[2:])
    seq = prepare_token_indices(cu_seqlens)[:, 0].long()
    if reverse:
        c = torch.cat([x.flip(1).cumsum(1).flip(1), zero], 1)
        out = c[:, :-1] - c[:, cu_seqlens[1:].long()[seq]]
    else:
        c = torch.cat([zero, x.cumsum(1)], 1)
        out = c[:, 1:] - c[:, cu_seqlens[:-1].long()[seq]]
    return out.float()


def _sdpa(q, k, v, G, scale, window_size, sink=None):
    """q [B, Lq, HQ, K] (float32), k/v [B, Lk, H, *] with Lk >= Lq (the queries are the last Lq key positions),
    G [B, Lk, HQ] on the keys' axis or None, sink [HQ] float32 or None -> o [B, Lq, HQ, V]. Queries go in blocks of
    TORCH_QUERY_BLOCK rows against the keys they can see, so a mask (and the gate bias) is at most block x Lk."""
    B, L, HQ = q.shape[:3]
    off = k.shape[1] - L
    block = TORCH_QUERY_BLOCK
    Gt = G.transpose(1, 2) if G is not None else None
    pieces = []
    for i0 in range(0, L, block):
        i1 = min(i0 + block, L)
        p0, p1 = off + i0, off + i1  # the block's queries' key positions
        j0 = 0 if window_size is None else max(0, p0 - window_size + 1)
        i = torch.arange(p0, p1, device=q.device)[:, None]
        j = torch.arange(j0, p1, device=q.device)[None, :]
        mask = j <= i
        if window_size is not None:
            mask &= i - j < window_size
        if Gt is not None:
            mask = (Gt[..., p0:p1, None] - Gt[..., None, j0:p1]).masked_fill(~mask, float("-inf"))
        ks, vs = k[:, j0:p1], v[:, j0:p1]
        if sink is not None:  # the sink slot: a zero key and value in front, its logit as the mask's first column
            if mask.dtype == torch.bool:
                mask = torch.zeros(mask.shape, device=q.device).masked_fill(~mask, float("-inf"))
            mask = mask.expand(B, HQ, i1 - i0, p1 - j0)
            mask = torch.cat([sink[None, :, None, None].expand(B, HQ, i1 - i0, 1), mask], -1)
            ks = torch.cat([ks.new_zeros(B, 1, *ks.shape[2:]), ks], 1)
            vs = torch.cat([vs.new_zeros(B, 1, *vs.shape[2:]), vs], 1)
        o = torch.nn.functional.scaled_dot_product_attention(
            q[:, i0:i1].transpose(1, 2), ks.transpose(1, 2), vs.transpose(1, 2), attn_mask=mask,
            scale=scale, enable_gqa=q.shape[2] != k.shape[2],
        )
        pieces.append(o.transpose(1, 2))
    return torch.cat(pieces, 1)


def parallel_attn_torch(q, k, v, g, scale, window_size, cu_seqlens, sink_bias=None, cu_seqlens_k=None):
    """The twin of the Triton `parallel_attn` (and, with k longer than q or `cu_seqlens_k`, of its Q_OFFSET form:
    g then lies on the keys' axis)."""
    G = segment_cumsum(g, cu_seqlens if cu_seqlens_k is None else cu_seqlens_k) if g is not None else None
    qf, kf, vf = q.float(), k.float(), v.float()
    sink = sink_bias.float() if sink_bias is not None else None
    if cu_seqlens is None:
        return _sdpa(qf, kf, vf, G, scale, window_size, sink).to(q.dtype)
    bounds = varlen_bounds(cu_seqlens)
    bounds_k = bounds if cu_seqlens_k is None else varlen_bounds(cu_seqlens_k)
    pieces = [
        _sdpa(qf[:, bos:eos], kf[:, kbos:keos], vf[:, kbos:keos], G[:, kbos:keos] if G is not None else None, scale,
              window_size, sink)
        for bos, eos, kbos, keos in zip(bounds[:-1], bounds[1:], bounds_k[:-1], bounds_k[1:]) if eos > bos
    ]
    if not pieces:
        return q.new_zeros(*q.shape[:3], v.shape[-1])
    return torch.cat(pieces, 1).to(q.dtype)
