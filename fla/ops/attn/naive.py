"""The reference: causal softmax attention with an explicit mask, float32, one sequence at a time.

For query i and key j of the same sequence (j <= i, and i - j < W with a sliding window W):
    s_ij = scale * q_i . k_j + (G_i - G_j),    G_t = sum_{u <= t} g_u   (Forgetting Attention's log forget gate)
    o_i  = sum_j softmax_j(s_ij) v_j
Query head h uses key/value head h // (HQ / H).
"""
from __future__ import annotations

import torch


def naive_attn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None = None,
    scale: float | None = None,
    window_size: int | None = None,
    cu_seqlens: torch.Tensor | None = None,
) -> torch.Tensor:
    """
    Args:
        q: [B, T, HQ, K]; k: [B, T, H, K]; v: [B, T, H, V]
        g: [B, T, HQ] log forget gates, optional
        window_size: W, query i sees keys i - W + 1 .. i
        cu_seqlens: [N + 1] packed sequences (B == 1)
    Returns:
        o: [B, T, HQ, V] in q's dtype
    """
    B, T, HQ, K = q.shape
    group = HQ // k.shape[2]
    scale = K ** -0.5 if scale is None else scale
    bounds = [0, T] if cu_seqlens is None else cu_seqlens.tolist()
    o = torch.zeros(*q.shape[:3], v.shape[-1], dtype=torch.float32, device=q.device)
    for b in range(B):
        for bos, eos in zip(bounds[:-1], bounds[1:]):
            qs = q[b, bos:eos].float()
            ks = k[b, bos:eos].float().repeat_interleave(group, dim=1)
            vs = v[b, bos:eos].float().repeat_interleave(group, dim=1)
            s = scale * torch.einsum("ihk,jhk->hij", qs, ks)
            if g is not None:
                G = g[b, bos:eos].float().cumsum(0).t()  # [HQ, L]
                s = s + G[:, :, None] - G[:, None, :]
            i = torch.arange(eos - bos, device=q.device)
            mask = i[:, None] >= i[None, :]
            if window_size is not None:
                mask &= i[:, None] - i[None, :] < window_size
            p = s.masked_fill(~mask, float("-inf")).softmax(-1)
            o[b, bos:eos] = torch.einsum("hij,jhv->ihv", p, vs)
    return o.to(q.dtype)


def naive_parallel_attn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    window_size: int | None = None,
    causal: bool = True,
    *,
    g: torch.Tensor | None = None,
    sink_bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The peer library's reference of that name: one sequence per row, the scores of `naive_attn` (optionally not
    causal), and `sink_bias` [HQ], a per-head logit added to every softmax's denominator only (an attention sink).
    q: [B, T, HQ, K]; k: [B, T, H, K]; v: [B, T, H, V]; g: [B, T, HQ] ->
    (o [B, T, HQ, V] in q's dtype, max_logits [B, T, HQ] float32: the largest score of each query)."""
    B, T, HQ, K = q.shape
    if k.shape[2] == 0 or HQ % k.shape[2]:
        raise ValueError(f"the query heads ({HQ}) must be a multiple of the key/value heads ({k.shape[2]})")
    group = HQ // k.shape[2]
    scale = K ** -0.5 if scale is None else scale
    ks, vs = k.float().repeat_interleave(group, dim=2), v.float().repeat_interleave(group, dim=2)
    s = scale * torch.einsum("bihk,bjhk->bhij", q.float(), ks)
    if g is not None:
        G = g.float().cumsum(1).transpose(1, 2)  # [B, HQ, T]
        s = s + G[..., :, None] - G[..., None, :]
    i = torch.arange(T, device=q.device)
    if causal:
        mask = i[:, None] >= i[None, :]
        if window_size is not None:
            mask &= i[:, None] - i[None, :] < window_size
        s = s.masked_fill(~mask, float("-inf"))
    max_logits = s.amax(-1)
    if sink_bias is not None:
        sink = sink_bias.float()[None, :, None, None].expand(B, HQ, T, 1)
        p = torch.cat([s, sink], -1).softmax(-1)[..., :T]
    else:
        p = s.softmax(-1)
    o = torch.einsum("bhij,bjhv->bihv", p, vs)
    return o.to(q.dtype), max_logits.transpose(1, 2)
