"""Reference: retention (RetNet) one token at a time, float32 inside, public layout.

Per head h, a fixed decay gamma_h = 1 - 2^(-5 - h), state S [K, V]:
    S_t = gamma_h S_{t-1} + k_t^T v_t
    o_t = scale * q_t S_t
(RetNet's recurrent form; its group norm and gating live in the layer, not here.)
"""
from __future__ import annotations

import math

import torch

from fla.ops.utils.checks import broadcast_initial_state
from fla.ops.utils.index import sequence_spans


def retention_log_decays(num_heads: int, device=None) -> torch.Tensor:
    """[H] float32 log(1 - 2^(-5 - h)): RetNet's per-head decays in natural-log space (computed on the host in
    float64 and copied once: the op calls this every time, and on a GPU each device op is a launch)."""
    decays = [math.log1p(-2.0 ** (-5 - h)) for h in range(num_heads)]
    return torch.tensor(decays, dtype=torch.float32).to(device if device is not None else "cpu", non_blocking=True)


def naive_recurrent_retention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    reverse: bool = False,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """
    Args:
        q, k: [B, T, H, K]; v: [B, T, H, V]
        initial_state: [N, H, K, V]; cu_seqlens: [N + 1] packed sequences (B == 1)
        reverse: walk each sequence from its end
    Returns:
        o: [B, T, H, V] in v's dtype; final_state: [N, H, K, V] float32 or None. Differentiable.
    """
    B, T, H, K = q.shape
    initial_state = broadcast_initial_state(initial_state, B if cu_seqlens is None else len(cu_seqlens) - 1)
    V = v.shape[-1]
    scale = K ** -0.5 if scale is None else scale
    gamma = 1 - torch.pow(2.0, -5.0 - torch.arange(H, dtype=torch.float32, device=q.device))
    dtype = v.dtype
    q, k, v = q.float(), k.float(), v.float()
    outs, finals = [], []
    for i, (b, bos, eos) in enumerate(sequence_spans(cu_seqlens, B, T)):
        S = initial_state[i].float() if initial_state is not None else q.new_zeros(H, K, V)
        o_seq = [None] * (eos - bos)
        for t in (range(eos - 1, bos - 1, -1) if reverse else range(bos, eos)):
            S = gamma[:, None, None] * S + k[b, t][:, :, None] * v[b, t][:, None, :]
            o_seq[t - bos] = scale * torch.einsum("hk,hkv->hv", q[b, t], S)
        outs.append(torch.stack(o_seq) if o_seq else q.new_zeros(0, H, V))
        finals.append(S)
    o = torch.stack(outs) if cu_seqlens is None else torch.cat(outs)[None]
    return o.to(dtype), (torch.stack(finals) if output_final_state else None)


def naive_retention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The peer library's reference of that name, in its head-first layout: q, k [B, H, T, K], v [B, H, T, V] ->
    o [B, H, T, V] in q's dtype (scale K ** -0.5, the fixed per-head decays)."""
    o, _ = naive_recurrent_retention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return o.transpose(1, 2).to(q.dtype)
