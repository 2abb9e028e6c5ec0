"""Reference: the diagonal-plus-low-rank (DPLR) delta rule one token at a time, float32 inside.

Per head, state S [K, V], row vectors q_t, k_t, a_t, b_t [K] and v_t [V], log decay gk_t [K] (<= 0):
    S_t = diag(exp(gk_t)) S_{t-1} + b_t^T (a_t S_{t-1}) + k_t^T v_t      (= (D_t + b_t^T a_t) S_{t-1} + k_t^T v_t)
    o_t = scale * q_t S_t
a_t reads the state before this token's decay. In the peer library's value-first wording (S^T [V, K]) this is
S_t = S_{t-1} (D_t + a_t b_t^T) + v_t k_t^T. RWKV-7 is the case a = -kk, b = kk * iclr (see `fla.ops.rwkv7`).
"""
from __future__ import annotations

import torch

from fla.ops.utils.index import sequence_spans


def naive_recurrent_dplr_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    gk: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The reference in the public layout (the ops' argument order).

    Args:
        q, k, a, b: [B, T, H, K]; v: [B, T, H, V]; gk: [B, T, H, K] log decays
        scale: defaults to K ** -0.5; initial_state: [N, H, K, V]; cu_seqlens: [N + 1] packed sequences (B == 1)
    Returns:
        o: [B, T, H, V] in v's dtype; final_state: [N, H, K, V] float32 or None
    """
    B, T, H, K = q.shape
    scale = K ** -0.5 if scale is None else scale
    dtype = v.dtype
    q, k, v, a, b, gk = (x.float() for x in (q, k, v, a, b, gk))
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


# The peer library's references under its names, positional order and layout: head-first ([B, H, T, *]), scale
# K ** -0.5, a batched [B, H, K, V] (or one [H, K, V]) initial state, the final state returned by default. The
# chunkwise one computes the same recurrence (the numbers are the same; the recurrence is the one that is obviously
# right); its chunk size is kept for what it demands of T, refused as in the peer.

def dplr_recurrence(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    alpha: torch.Tensor,
    beta: torch.Tensor,
    gk: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """q, k, alpha, beta, gk: [B, H, T, K]; v: [B, H, T, V]; initial_state: [B, H, K, V] ->
    (o [B, H, T, V] in q's dtype, final state [B, H, K, V] float32, or None if output_final_state is False)."""
    hf = lambda x: x.transpose(1, 2)  # noqa: E731 - head-first <-> [B, T, H, *]
    if initial_state is not None and initial_state.dim() == 3:
        initial_state = initial_state.expand(q.shape[0], *initial_state.shape)
    o, S = naive_recurrent_dplr_delta_rule(hf(q), hf(k), hf(v), hf(alpha), hf(beta), hf(gk), None, initial_state,
                                           output_final_state is not False)
    return hf(o).to(q.dtype), S


def dplr_chunkwise(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    alpha: torch.Tensor,
    beta: torch.Tensor,
    gk: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = True,
    chunk_size: int = 32,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """As `dplr_recurrence`, with T a multiple of chunk_size (as the peer's requires)."""
    if not isinstance(chunk_size, int) or chunk_size < 1 or q.shape[2] % chunk_size:
        raise ValueError(f"chunk_size ({chunk_size}) must divide the sequence length ({q.shape[2]}), as in the "
                         "peer's reference")
    return dplr_recurrence(q, k, v, alpha, beta, gk, initial_state, output_final_state)
