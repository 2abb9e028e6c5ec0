"""Causal linear attention token by token (inference path): the simple-GLA recurrent kernels with no decay; see
`chunk.py` for the normalizer column."""
from __future__ import annotations

import torch

from fla.ops.linear_attn.chunk import linear_attn_with_normalizer
from fla.ops.simple_gla.fused_recurrent import _fused_recurrent
from fla.ops.utils.checks import normalize_inputs


@normalize_inputs
def fused_recurrent_linear_attn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    reverse: bool = False,
    normalize: bool = False,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Causal linear attention token by token (decoding, short prompts); differentiable in q, k, v and initial_state.

    Args:
        q, k: [B, T, H, K]; v: [B, T, H, V] (same dtype: float32, float16 or bfloat16)
        scale: defaults to K ** -0.5
        initial_state: [N, H, K, V] float32, or [N, H, K, V + 1] with normalize (last column: the normalizer z)
        output_final_state: also return the state after the last token walked (same shape as initial_state)
        reverse: walk each sequence from its end
        normalize: o_t = q_t S_t / (q_t z_t + eps) with z_t = sum of the keys walked so far (default False here, True
            for chunk_linear_attn: the peer library's defaults)
        cu_seqlens: [N + 1] int32/int64, packed sequences, B must be 1
    Returns:
        o: [B, T, H, V] in v's dtype; final_state: [N, H, K, V] ([N, H, K, V + 1] with normalize) float32 or None
    """

    def run(q, k, v, scale, h0, output_final_state, cu_seqlens):
        return _fused_recurrent(q, k, v, None, None, scale, h0, output_final_state, reverse, cu_seqlens)

    return linear_attn_with_normalizer(run, q, k, v, scale, initial_state, output_final_state, normalize, cu_seqlens)
