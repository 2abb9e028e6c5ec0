"""Gated linear attention, one token at a time (the reference the kernels are tested against).

Per head, with state S of shape [K, V]:
    S_t = diag(exp(gk_t)) S_{t-1} diag(exp(gv_t)) + k_t^T v_t,    o_t = scale * q_t S_t
(gk a log forget gate per key channel, gv one per value channel, each optional). `reverse` walks the sequence from its
end to its start (the state then flows from later tokens to earlier ones).
"""
from __future__ import annotations

import torch

from fla.ops.utils.checks import broadcast_initial_state
from fla.ops.utils.index import sequence_spans


def naive_recurrent_gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gk: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    *,
    gv: torch.Tensor | None = None,
    scale: float | None = None,
    reverse: bool = False,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """q, k, gk: [B, T, H, K]; v, gv: [B, T, H, V]; initial_state: [N, H, K, V], or [H, K, V] for the same state in
    every sequence. The positional part is the peer library's (q, k, v, gk, initial_state, output_final_state);
    the rest is keyword-only. Returns o [B, T, H, V] (q's dtype) and the final state [N, H, K, V] float32 (or None).
    Differentiable."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    initial_state = broadcast_initial_state(initial_state, B if cu_seqlens is None else len(cu_seqlens) - 1)
    scale = K ** -0.5 if scale is None else scale
    outputs = [[None] * T for _ in range(B)]
    finals = []
    for i, (b, bos, eos) in enumerate(sequence_spans(cu_seqlens, B, T)):
        S = initial_state[i].float() if initial_state is not None else q.new_zeros(H, K, V, dtype=torch.float32)
        for t in (range(eos - 1, bos - 1, -1) if reverse else range(bos, eos)):
            if gk is not None:
                S = S * gk[b, t].float().exp()[:, :, None]
            if gv is not None:
                S = S * gv[b, t].float().exp()[:, None, :]
            S = S + k[b, t].float()[:, :, None] * v[b, t].float()[:, None, :]
            outputs[b][t] = scale * torch.einsum("hk,hkv->hv", q[b, t].float(), S)
        finals.append(S)
    zero = q.new_zeros(H, V, dtype=torch.float32)  # outputs of empty sequences never exist
    o = torch.stack([torch.stack([x if x is not None else zero for x in row]) for row in outputs]).to(q.dtype)
    return o, (torch.stack(finals) if output_final_state else None)


def ceildiv(a: int, b: int) -> int:
    """ceil(a / b) for ints (the peer's helper at this path)."""
    return -(a // -b)
