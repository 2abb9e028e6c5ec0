"""Reference: simple gated linear attention (one scalar decay per head and token) one token at a time, float32 inside.

Per head, state S [K, V], log decay g_t (<= 0), either data-dependent (g [B, T, H]) or a fixed per-head constant
(g_gamma [H]), or none:
    S_t = exp(g_t) S_{t-1} + k_t^T v_t
    o_t = scale * q_t S_t
`reverse` walks the sequence from its end: S_t = exp(g_t) S_{t+1} + k_t^T v_t (the initial state enters at the end).
"""
from __future__ import annotations

import torch

from fla.ops.utils.checks import broadcast_initial_state
from fla.ops.utils.index import sequence_spans


def naive_recurrent_simple_gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None = None,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = True,
    *,
    g_gamma: torch.Tensor | None = None,
    reverse: bool = False,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The positional order and `output_final_state=True` are the peer library's for this function (the fused and
    chunk ops default to False); what the peer lacks is keyword-only.

    Args:
        q, k: [B, T, H, K]; v: [B, T, H, V]
        g: [B, T, H] log decays, or g_gamma: [H] fixed log decays, or neither (no decay)
        initial_state: [N, H, K, V], or [H, K, V] for the same state in every sequence
        cu_seqlens: [N + 1] packed sequences (B == 1)
    Returns:
        o: [B, T, H, V] in v's dtype; final_state: [N, H, K, V] float32 or None. Differentiable.
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    initial_state = broadcast_initial_state(initial_state, B if cu_seqlens is None else len(cu_seqlens) - 1)
    scale = K ** -0.5 if scale is None else scale
    dtype = v.dtype
    q, k, v = q.float(), k.float(), v.float()
    outs, finals = [], []
    for i, (b, bos, eos) in enumerate(sequence_spans(cu_seqlens, B, T)):
        S = initial_state[i].float() if initial_state is not None else q.new_zeros(H, K, V)
        o_seq = [None] * (eos - bos)
        steps = range(eos - 1, bos - 1, -1) if reverse else range(bos, eos)
        for t in steps:
            if g is not None:
                S = S * g[b, t].float().exp()[:, None, None]
            elif g_gamma is not None:
                S = S * g_gamma.float().exp()[:, None, None]
            S = S + k[b, t][:, :, None] * v[b, t][:, None, :]
            o_seq[t - bos] = scale * torch.einsum("hk,hkv->hv", q[b, t], S)
        outs.append(torch.stack(o_seq) if o_seq else q.new_zeros(0, H, V))
        finals.append(S)
    o = torch.stack(outs) if cu_seqlens is None else torch.cat(outs)[None]
    return o.to(dtype), (torch.stack(finals) if output_final_state else None)


def naive_parallel_simple_gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The attention form (the peer library's reference of that name): A_ij = scale q_i.k_j exp(G_i - G_j) for
    j <= i, o = A v. q, k: [B, T, H, K]; v: [B, T, H, V]; g: [B, T, H] or None -> (o [B, T, H, V] float32,
    A [B, H, T, T] float32)."""
    from fla.ops.simple_gla.parallel import decayed_scores

    A = decayed_scores(q, k, g, q.shape[-1] ** -0.5 if scale is None else scale)
    return torch.einsum("bhij,bjhv->bihv", A, v.float()), A


def naive_chunk_simple_gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The peer library's chunked reference, by its name and arguments: the same function as the token-by-token
    recurrence, which is what it computes here (chunk_size changes nothing but rounding)."""
    return naive_recurrent_simple_gla(q, k, v, g, scale, initial_state, output_final_state)
