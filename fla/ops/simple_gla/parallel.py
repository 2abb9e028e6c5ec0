"""The parallel (attention) form of simple GLA, the peer library's `parallel_simple_gla`:

    A_ij = scale * q_i . k_j * exp(G_i - G_j)  for j <= i (G_t = sum_{s <= t} g_s),   o_i = sum_j A_ij v_j

The output is the same function as `chunk_simple_gla` without a state, so it is computed by the chunked kernels
(exactly, with their backward); the [B, H, T, T] matrix A, asked for with `output_attentions`, is formed in float32
PyTorch (quadratic in T: for inspection on short inputs).
"""
from __future__ import annotations

import torch

from fla.ops.simple_gla.chunk import chunk_simple_gla
from fla.ops.utils.checks import normalize_inputs


def decayed_scores(q: torch.Tensor, k: torch.Tensor, g: torch.Tensor | None, scale: float) -> torch.Tensor:
    """[B, T, H, K] q, k, [B, T, H] log decays (or None) -> A [B, H, T, T] float32, zero above the diagonal."""
    A = torch.einsum("bihk,bjhk->bhij", q.float(), k.float()) * scale
    T = q.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    if g is not None:
        G = g.float().cumsum(1).transpose(1, 2)  # [B, H, T]
        A = A * (G[..., :, None] - G[..., None, :]).masked_fill(~causal, float("-inf")).exp()
    return A.masked_fill(~causal, 0.0)


@normalize_inputs
def parallel_simple_gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None = None,
    scale: float | None = None,
    output_attentions: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    cu_seqlens_cpu: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """
    Args:
        q, k: [B, T, H, K]; v: [B, T, H, V]; g: [B, T, H] log decays or None
        output_attentions: also return A [B, H, T, T] float32 (not with cu_seqlens, as in the peer)
        cu_seqlens: [N + 1] packed sequences (B == 1); cu_seqlens_cpu: the same on the host (optional)
    Returns:
        o: [B, T, H, V] in v's dtype; A or None
    """
    if output_attentions and cu_seqlens is not None:
        raise ValueError("output_attentions=True is not supported with cu_seqlens (as in the peer library): "
                         "run each sequence on its own to see its attention matrix")
    o, _ = chunk_simple_gla(q, k, v, g, scale=scale, cu_seqlens=cu_seqlens)
    if not output_attentions:
        return o, None
    return o, decayed_scores(q, k, g, q.shape[-1] ** -0.5 if scale is None else float(scale))
