"""Reference: the diagonal-plus-low-rank (DPLR) delta rule one token at a time, float32 inside, public layout.

Per head, state S [K, V], row vectors q_t, k_t, a_t, b_t [K] and v_t [V], log decay gk_t [K] (<= 0):
    S_t = diag(exp(gk_t)) S_{t-1} + b_t^T (a_t S_{t-1}) + k_t^T v_t      (= (D_t + b_t^T a_t) S_{t-1} + k_t^T v_t)
    o_t = scale * q_t S_t
a_t reads the state before this token's decay. In the peer library's value-first wording (S^T [V, K]) this is
S_t = S_{t-1} (D_t + a_t b_t^T) + v_t k_t^T. RWKV-7 is the case a = -kk, b = kk * iclr (see `fla.ops.rwkv7`).
"""
from __future__ import annotations

import torch

from fla.ops.utils.index import sequence_spans


def dplr_recurrence(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    alpha: torch.Tensor,
    beta: torch.Tensor,
    gk: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = True,
    *,
    scale: float | None = None,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The peer library's reference name and argument order (alpha = a, beta = b), in our [B, T, H, *] layout.

    Args:
        q, k, alpha, beta: [B, T, H, K]; v: [B, T, H, V]; gk: [B, T, H, K] log decays
        initial_state: [N, H, K, V]; scale: defaults to K ** -0.5 (the peer's reference always uses that)
        cu_seqlens: [N + 1] packed sequences (B == 1)
    Returns:
        o: [B, T, H, V] in v's dtype; final_state: [N, H, K, V] float32 or None
    """
    B, T, H, K = q.shape
    scale = K ** -0.5 if scale is None else scale
    dtype = v.dtype
    q, k, v, a, b, gk = (x.float() for x in (q, k, v, alpha, beta, gk))
    o = torch.zeros_like(v)
    finals = []
    for i, (n, bos, eos) in enumerate(sequence_spans(cu_seqlens, B, T)):
        S = initial_state[i].float().clone() if initial_state is not None else q.new_zeros(H, K, v.shape[-1])
        for t in range(bos, eos):
            read = torch.einsum("hk,hkv->hv", a[n, t], S)  # a_t S_{t-1}
            S = S * gk[n, t].exp()[..., None] + b[n, t][..., None] * read[:, None, :] \
                + k[n, t][..., None] * v[n, t][:, None, :]
            o[n, t] = torch.einsum("hk,hkv->hv", q[n, t] * scale, S)
        finals.append(S)
    return o.to(dtype), (torch.stack(finals) if output_final_state else None)
