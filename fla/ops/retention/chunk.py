"""Retention (RetNet), chunk-parallel: simple gated linear attention with RetNet's fixed per-head decays
g_gamma[h] = log(1 - 2^(-5 - h)) (see `naive.py`)."""
from __future__ import annotations

import torch

from fla.ops.cp.context import FLACPContext
from fla.ops.retention.naive import retention_log_decays
from fla.ops.simple_gla.chunk import chunk_simple_gla
from fla.ops.utils.checks import check_tensor, normalize_inputs


@normalize_inputs
def chunk_retention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    *,
    cu_seqlens_cpu: torch.Tensor | None = None,
    cp_context: FLACPContext | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Retention, chunk-parallel; differentiable in q, k, v and initial_state.

    Args:
        q, k: [B, T, H, K]; v: [B, T, H, V] (same dtype: float32, float16 or bfloat16)
        scale: defaults to K ** -0.5
        initial_state: [N, H, K, V] float32 (N = B, or the number of sequences under cu_seqlens)
        output_final_state: also return the state after the last token
        cu_seqlens: [N + 1] int32/int64, packed sequences, B must be 1; cu_seqlens_cpu: the same on the host
            (optional: then no device->host sync at all)
        cp_context: this rank's piece under context parallelism (see chunk_simple_gla)
    Returns:
        o: [B, T, H, V] in v's dtype; final_state: [N, H, K, V] float32 or None
    """
    check_tensor("q", q, "[B, T, H, K]", (None, None, None, None))
    g_gamma = retention_log_decays(q.shape[2], q.device)
    return chunk_simple_gla(q, k, v, g_gamma=g_gamma, scale=scale, initial_state=initial_state,
                            output_final_state=output_final_state, cu_seqlens=cu_seqlens, cp_context=cp_context)


@normalize_inputs
def fused_chunk_retention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The peer library's name for a one-kernel chunked forward of the same function: here `chunk_retention`."""
    return chunk_retention(q, k, v, scale, initial_state, output_final_state, cu_seqlens)
