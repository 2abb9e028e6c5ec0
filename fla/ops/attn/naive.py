"""The reference: causal softmax attention with an explicit mask, float32, one sequence at a time.

For query i and key j of the same sequence (j <= i, and i - j < W with a sliding window W):
    s_ij = scale * q_i . k_j + (G_i - G_j),    G_t = sum_{u <= t} g_u   (Forgetting Attention's log forget gate)
    o_i  = sum_j softmax_j(s_ij) v_j
Query head h uses key/value head h // (HQ / H). An attention sink (sink_bias [HQ]) is one more score of head h in
every softmax, sink_bias[h], whose value is zero: it only adds exp(sink_bias[h]) to the denominators.
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
    *,
    sink_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """
    Args:
        q: [B, T, HQ, K]; k: [B, T, H, K]; v: [B, T, H, V]
        g: [B, T, HQ] log forget gates, optional
        window_size: W, query i sees keys i - W + 1 .. i
        cu_seqlens: [N + 1] packed sequences (B == 1)
        sink_bias: [HQ] an attention sink: one more score per head in each softmax, with a zero value
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
            s = s.masked_fill(~mask, float("-inf"))
            if sink_bias is not None:
                sink = sink_bias.float()[:, None, None].expand(HQ, eos - bos, 1)
                p = torch.cat([s, sink], -1).softmax(-1)[..., :-1]
            else:
                p = s.softmax(-1)
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
    (o [B, T, HQ, V] in q's dtype, max_logits [B, T, HQ] float32: the largest logit of each query, the sink's
    included)."""
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
        max_logits = torch.maximum(max_logits, sink[..., 0])  # the sink is one of the logits
        p = torch.cat([s, sink], -1).softmax(-1)[..., :T]
    else:
        p = s.softmax(-1)
    o = torch.einsum("bhij,bjhv->bihv", p, vs)
    return o.to(q.dtype), max_logits.transpose(1, 2)


def naive_attn_decoding(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None = None,
    scale: float | None = None,
    cu_seqlens: torch.Tensor | None = None,
    do_gate_scale: bool = False,
    *,
    window_size: int | None = None,
    sink_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """The peer library's decoding reference: one query per packed sequence, standing at that sequence's last
    position, attending to the sequence's keys (the last `window_size` of them; 0 gives zeros).

    Args:
        q: [1, N, HQ, K] one query per sequence; k: [1, T, H, K]; v: [1, T, H, V] packed by cu_seqlens [N + 1]
        g: [1, T, HQ] log forget gates, optional (times `scale` first if do_gate_scale): score j gets G_last - G_j
        sink_bias: [HQ] an attention sink, as in `naive_attn`
    Returns:
        o: [1, N, HQ, V] in q's dtype
    """
    if cu_seqlens is None:
        raise ValueError("naive_attn_decoding needs cu_seqlens ([N + 1], one query per sequence in q [1, N, HQ, K])")
    if window_size is not None and window_size < 0:
        raise ValueError(f"window_size must be >= 0 or None (got {window_size})")
    HQ, K = q.shape[-2:]
    if k.shape[2] == 0 or HQ % k.shape[2]:
        raise ValueError(f"the query heads ({HQ}) must be a multiple of the key/value heads ({k.shape[2]})")
    group = HQ // k.shape[2]
    scale = K ** -0.5 if scale is None else scale
    bounds = cu_seqlens.tolist()
    o = torch.zeros(1, len(bounds) - 1, HQ, v.shape[-1], dtype=torch.float32, device=q.device)
    for n, (bos, eos) in enumerate(zip(bounds[:-1], bounds[1:])):
        L = eos - bos
        if L == 0 or window_size == 0:
            continue  # no key to see: zeros (a sink has no value)
        ks = k[0, bos:eos].float().repeat_interleave(group, dim=1)  # [L, HQ, K]
        vs = v[0, bos:eos].float().repeat_interleave(group, dim=1)
        s = scale * torch.einsum("hk,jhk->hj", q[0, n].float(), ks)  # [HQ, L]
        if g is not None:
            G = g[0, bos:eos].float().cumsum(0).t() * (scale if do_gate_scale else 1.0)  # [HQ, L]
            s = s + G[:, -1:] - G
        if window_size is not None:
            s[:, :max(0, L - window_size)] = float("-inf")
        if sink_bias is not None:
            s = torch.cat([s, sink_bias.float()[:, None]], -1)
        o[0, n] = torch.einsum("hj,jhv->hv", s.softmax(-1)[:, :L], vs)
    return o.to(q.dtype)
