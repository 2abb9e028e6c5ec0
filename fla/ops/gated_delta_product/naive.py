"""Reference: gated DeltaProduct one token (and one Householder step) at a time, float32 inside, public layout.

Per value head, state S [K, V]; each token t applies its gate once, then n = num_householder delta-rule steps with
its own keys, values and strengths (k, v, beta carry n rows per token: row t * n + j is step j of token t):
    S = exp(g_t) S_{t-1}
    for j in 0..n-1:  S = S + k_tj^T (beta_tj * (v_tj - k_tj S))       (S (I - beta k^T k) + beta k^T v)
    o_t = scale * q_t S
Grouped values: v/beta/g have HV heads, q and k have H (HV a multiple of H); value head j reads q/k head j // (HV // H).
"""
from __future__ import annotations

import torch

from fla.ops.gated_delta_rule.naive import naive_l2_norm
from fla.ops.utils.index import sequence_spans


def naive_recurrent_gated_delta_product(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None,
    beta: torch.Tensor,
    scale: float | None = None,
    cu_seqlens: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    num_householder: int = 1,
    *,
    use_qk_l2norm_in_kernel: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The peer library's reference, by its name, argument order (cu_seqlens before initial_state) and return: the
    final state comes back whether or not output_final_state asks for it, as there.

    Args:
        q: [B, T, H, K]; k: [B, T * n, H, K]; v: [B, T * n, HV, V]; beta: [B, T * n, HV]
        g: [B, T, HV] log decays (one per token), or None (DeltaProduct without a gate)
        cu_seqlens: [N + 1] token boundaries (B == 1); the Householder rows of sequence i are
            [n * cu_seqlens[i], n * cu_seqlens[i + 1])
        initial_state: [N, HV, K, V]
    Returns:
        o: [B, T, HV, V] in v's dtype; final_state: [N, HV, K, V] float32
    """
    B, T, H, K = q.shape
    HV, V, n = v.shape[2], v.shape[3], num_householder
    scale = K ** -0.5 if scale is None else scale
    dtype = v.dtype
    q, k, v, beta = q.float(), k.float(), v.float(), beta.float()
    if use_qk_l2norm_in_kernel:
        q, k = naive_l2_norm(q), naive_l2_norm(k)
    q, k = q.repeat_interleave(HV // H, dim=2), k.repeat_interleave(HV // H, dim=2)
    outs, finals = [], []
    for i, (b, bos, eos) in enumerate(sequence_spans(cu_seqlens, B, T)):
        S = initial_state[i].float() if initial_state is not None else q.new_zeros(HV, K, V)
        o_seq = []
        for t in range(bos, eos):
            if g is not None:
                S = S * g[b, t].float().exp()[:, None, None]
            for j in range(t * n, t * n + n):
                u = v[b, j] - torch.einsum("hk,hkv->hv", k[b, j], S)
                S = S + k[b, j][:, :, None] * (beta[b, j][:, None] * u)[:, None, :]
            o_seq.append(scale * torch.einsum("hk,hkv->hv", q[b, t], S))
        outs.append(torch.stack(o_seq) if o_seq else q.new_zeros(0, HV, V))
        finals.append(S)
    o = torch.stack(outs) if cu_seqlens is None else torch.cat(outs)[None]
    return o.to(dtype), torch.stack(finals)
