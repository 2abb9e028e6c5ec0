"""Reference: Kimi Delta Attention (KDA) one token at a time, float32 inside, public layout.

KDA is the gated delta rule with a log decay per key channel. Per value head, state S [K, V], gate g_t [K]
(log decays, <= 0), writing strength beta_t in (0, 1):
    S'_t = diag(exp(g_t)) S_{t-1}
    S_t  = S'_t + k_t^T (beta_t * (v_t - k_t S'_t))
    o_t  = scale * q_t S_t
Grouped values: v, g, beta have HV heads, q and k have H (HV a multiple of H); value head j reads q/k head
j // (HV // H).
"""
from __future__ import annotations

import torch

from fla.ops.gated_delta_rule.naive import naive_l2_norm
from fla.ops.utils.index import sequence_spans


def naive_recurrent_kda(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    *,
    use_qk_l2norm_in_kernel: bool = False,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The peer library's reference, by its name and argument order (g before beta, as its ops).

    Args:
        q, k: [B, T, H, K]; v: [B, T, HV, V]
        g: [B, T, HV, K] log decays per key channel; beta: [B, T, HV]
        initial_state: [N, HV, K, V]; cu_seqlens: [N + 1] packed sequences (B == 1), keyword-only (fla's extension)
    Returns:
        o: [B, T, HV, V] in v's dtype; final_state: [N, HV, K, V] float32 or None
    """
    B, T, H, K = q.shape
    HV = v.shape[2]
    scale = K ** -0.5 if scale is None else scale
    dtype = v.dtype
    q, k, v, g, beta = q.float(), k.float(), v.float(), g.float(), beta.float()
    if use_qk_l2norm_in_kernel:
        q, k = naive_l2_norm(q), naive_l2_norm(k)
    q, k = q.repeat_interleave(HV // H, dim=2), k.repeat_interleave(HV // H, dim=2)
    outs, finals = [], []
    for i, (b, bos, eos) in enumerate(sequence_spans(cu_seqlens, B, T)):
        S = initial_state[i].float() if initial_state is not None else q.new_zeros(HV, K, v.shape[3])
        o_seq = []
        for t in range(bos, eos):
            S = S * g[b, t].exp()[:, :, None]
            u = v[b, t] - torch.einsum("hk,hkv->hv", k[b, t], S)
            S = S + k[b, t][:, :, None] * (beta[b, t][:, None] * u)[:, None, :]
            o_seq.append(scale * torch.einsum("hk,hkv->hv", q[b, t], S))
        outs.append(torch.stack(o_seq) if o_seq else v.new_zeros(0, HV, v.shape[3]))
        finals.append(S)
    o = torch.stack(outs) if cu_seqlens is None else torch.cat(outs)[None]
    return o.to(dtype), (torch.stack(finals) if output_final_state else None)


def naive_chunk_kda(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The peer library's chunked reference, by its name and arguments: the same function as the token-by-token
    recurrence, which is what it computes here (`chunk_size` changes nothing but is accepted)."""
    return naive_recurrent_kda(q, k, v, g, beta, scale, initial_state, output_final_state)
