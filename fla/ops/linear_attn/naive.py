"""Reference: causal linear attention one token at a time, float32 inside, public layout.

Per head, state S [K, V] (no decay):
    S_t = S_{t-1} + k_t^T v_t,    o_t = scale * q_t S_t
With `normalize`, a normalizer z_t = z_{t-1} + k_t (a [K] vector) is carried too and
    o_t = scale * q_t S_t / (scale * q_t z_t + eps)
The normalizer travels in the state as one extra value column: the state is [K, V + 1] = [S | z], so initial and final
states have shape [N, H, K, V + 1] when normalizing.
"""
from __future__ import annotations

import torch

from fla.ops.utils.checks import broadcast_initial_state
from fla.ops.utils.index import sequence_spans

NORMALIZE_EPS = 1e-10


def naive_recurrent_linear_attn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    normalize: bool = False,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """
    Args:
        q, k: [B, T, H, K]; v: [B, T, H, V]
        initial_state: [N, H, K, V] ([N, H, K, V + 1] with normalize, or the peer's (S, z [N, 1, H, K]) tuple), or
            one [H, K, V(+1)] for every sequence;
            cu_seqlens: [N + 1] (B == 1)
    Returns:
        o: [B, T, H, V] in v's dtype; final_state: [N, H, K, V] ([N, H, K, V + 1]) float32 or None. Differentiable.
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    scale = K ** -0.5 if scale is None else scale
    dtype = v.dtype
    q, k, v = q.float(), k.float(), v.float()
    outs, finals = [], []
    if isinstance(initial_state, tuple):  # the peer's form with normalize: (S [N, H, K, V], z [N, 1, H, K])
        if not normalize or len(initial_state) != 2:
            raise ValueError("a tuple initial_state is (S [N, H, K, V], z [N, 1, H, K]) and needs normalize=True")
        S0, z0 = initial_state
        initial_state = torch.cat([S0.float(), z0.float().reshape(S0.shape[0], H, K, 1)], -1)
    # a 3-D [H, K, V] state is every sequence's, as the peer's references take it
    initial_state = broadcast_initial_state(initial_state, B if cu_seqlens is None else len(cu_seqlens) - 1)
    for i, (b, bos, eos) in enumerate(sequence_spans(cu_seqlens, B, T)):
        h0 = initial_state[i].float() if initial_state is not None else None
        S = h0[..., :V] if h0 is not None else q.new_zeros(H, K, V)
        z = (h0[..., V] if h0 is not None else q.new_zeros(H, K)) if normalize else None
        o_seq = []
        for t in range(bos, eos):
            S = S + k[b, t][:, :, None] * v[b, t][:, None, :]
            o_t = scale * torch.einsum("hk,hkv->hv", q[b, t], S)
            if normalize:
                z = z + k[b, t]
                o_t = o_t / (scale * (q[b, t] * z).sum(-1, keepdim=True) + NORMALIZE_EPS)
            o_seq.append(o_t)
        outs.append(torch.stack(o_seq) if o_seq else q.new_zeros(0, H, V))
        finals.append(torch.cat([S, z[..., None]], -1) if normalize else S)
    o = torch.stack(outs) if cu_seqlens is None else torch.cat(outs)[None]
    return o.to(dtype), (torch.stack(finals) if output_final_state else None)


def naive_chunk_linear_attn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    normalize: bool = False,
) -> torch.Tensor:
    """The peer library's reference of that name (its output only): o_i = sum_{j <= i} scale q_i.k_j v_j, divided by
    scale q_i . sum_{j <= i} k_j + NORMALIZE_EPS with normalize. q, k: [B, T, H, K]; v: [B, T, H, V] -> o, float32."""
    from fla.ops.simple_gla.parallel import decayed_scores  # the attention form without decay

    scale = q.shape[-1] ** -0.5 if scale is None else scale
    o = torch.einsum("bhij,bjhv->bihv", decayed_scores(q, k, None, scale), v.float())
    if normalize:
        o = o / ((scale * q.float() * k.float().cumsum(1)).sum(-1, keepdim=True) + NORMALIZE_EPS)
    return o
