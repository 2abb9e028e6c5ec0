"""Reference: the gated delta rule one token at a time, float32 inside, public layout.

Per value head, state S [K, V], gate g_t (log decay, <= 0), writing strength beta_t in (0, 1):
    S'_t = exp(g_t) S_{t-1}
    S_t  = S'_t + k_t^T (beta_t * (v_t - k_t S'_t))
    o_t  = scale * q_t S_t
Grouped values: v has HV heads, q and k have H (HV a multiple of H); value head j reads q/k head j // (HV // H).
"""
from __future__ import annotations

import torch

from fla.ops.utils.checks import broadcast_initial_state
from fla.ops.utils.index import sequence_spans


def naive_l2_norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + eps)


def naive_recurrent_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    g: torch.Tensor | None,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    *,
    use_qk_l2norm_in_kernel: bool = False,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Note the order (beta before g): it is the peer library's for this reference, unlike its ops (g, beta).

    Args:
        q, k: [B, T, H, K]; v: [B, T, HV, V]
        g: [B, T, HV] log decays, or None (the plain delta rule)
        beta: [B, T, HV] or [B, T, HV, V] (one strength per value channel)
        initial_state: [N, HV, K, V], or [HV, K, V] for every sequence; cu_seqlens: [N + 1] packed sequences (B == 1)
    Returns:
        o: [B, T, HV, V] in v's dtype; final_state: [N, HV, K, V] float32 or None
    """
    B, T, H, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    # a 3-D [H, K, V] state is every sequence's, as the peer's references take it
    initial_state = broadcast_initial_state(initial_state, B if cu_seqlens is None else len(cu_seqlens) - 1)
    scale = K ** -0.5 if scale is None else scale
    dtype = v.dtype
    q, k, v, beta = q.float(), k.float(), v.float(), beta.float()
    if use_qk_l2norm_in_kernel:
        q, k = naive_l2_norm(q), naive_l2_norm(k)
    q, k = q.repeat_interleave(HV // H, dim=2), k.repeat_interleave(HV // H, dim=2)
    if beta.dim() == 3:
        beta = beta[..., None]
    outs, finals = [], []
    for i, (b, bos, eos) in enumerate(sequence_spans(cu_seqlens, B, T)):
        S = initial_state[i].float() if initial_state is not None else q.new_zeros(HV, K, V)
        o_seq = []
        for t in range(bos, eos):
            if g is not None:
                S = S * g[b, t].float().exp()[:, None, None]
            u = v[b, t] - torch.einsum("hk,hkv->hv", k[b, t], S)
            S = S + k[b, t][:, :, None] * (beta[b, t] * u)[:, None, :]
            o_seq.append(scale * torch.einsum("hk,hkv->hv", q[b, t], S))
        outs.append(torch.stack(o_seq) if o_seq else q.new_zeros(0, HV, V))
        finals.append(S)
    if cu_seqlens is None:
        o = torch.stack(outs)
    else:
        o = torch.cat(outs)[None]
    final_state = torch.stack(finals) if output_final_state else None
    return o.to(dtype), final_state


def naive_chunk_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    chunk_size: int = 64,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The peer library's chunked reference, by its name and arguments (g before beta here, unlike the recurrent
    reference): the same function as the token-by-token recurrence, which is what it computes here."""
    return naive_recurrent_gated_delta_rule(q, k, v, beta, g, scale, initial_state, output_final_state)
