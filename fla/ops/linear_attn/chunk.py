"""Causal linear attention, chunk-parallel: simple gated linear attention with no decay (see `naive.py`).

`normalize=True` appends a column of ones to v, so the last state column accumulates z_t = sum_s k_s and the last output
column is scale * q_t z_t; dividing by it gives the normalized output. The state is then [N, H, K, V + 1] = [S | z].
"""
from __future__ import annotations

import torch

from fla.ops.linear_attn.naive import NORMALIZE_EPS
from fla.ops.simple_gla.chunk import ChunkSimpleGLAFunction, check_simple_gla_inputs
from fla.ops.cp.chunk import check_cp_call, chunk_cp
from fla.ops.cp.context import FLACPContext
from fla.ops.utils.checks import normalize_inputs


def linear_attn_with_normalizer(run, q, k, v, scale, initial_state, output_final_state, normalize, cu_seqlens):
    """Check the inputs, then `run(q, k, v, scale, initial_state, output_final_state, cu_seqlens)` (a simple-GLA
    path without decay), with the normalizer column when `normalize`."""
    V = v.shape[-1] if isinstance(v, torch.Tensor) else None
    check_simple_gla_inputs(q, k, v, None, None, scale, initial_state, cu_seqlens,
                            state_value_dim=V + 1 if normalize and V is not None else None)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    h0 = initial_state.contiguous() if initial_state is not None else None
    if not normalize:
        return run(q, k, v, scale, h0, output_final_state, cu_seqlens)
    v_ones = torch.cat([v, v.new_ones(*v.shape[:-1], 1)], -1)
    o, ht = run(q, k, v_ones, scale, h0, output_final_state, cu_seqlens)
    # In float32: the normalizer grows with the sequence length.
    o = o[..., :V].float() / (o[..., V:].float() + NORMALIZE_EPS)
    return o.to(v.dtype), ht


@normalize_inputs
def chunk_linear_attn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    normalize: bool = True,
    cu_seqlens: torch.Tensor | None = None,
    *,
    cu_seqlens_cpu: torch.Tensor | None = None,
    cp_context: FLACPContext | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Causal linear attention, chunk-parallel; differentiable in q, k, v and initial_state.

    Args:
        q, k: [B, T, H, K]; v: [B, T, H, V] (same dtype: float32, float16 or bfloat16); apply any feature map to q and
            k before (with `normalize` they should be positive, so that q_t . z_t stays away from 0)
        scale: defaults to K ** -0.5
        initial_state: [N, H, K, V] float32, or [N, H, K, V + 1] with normalize (last column: the normalizer z)
        output_final_state: also return the state after the last token (same shape as initial_state)
        normalize: o_t = q_t S_t / (q_t z_t + eps) with z_t = sum_{s <= t} k_s (scale on both sides). The default
            (True) is the peer library's for this op (its fused_recurrent_linear_attn defaults to False): pass it
            by keyword when it matters
        cu_seqlens: [N + 1] int32/int64, packed sequences, B must be 1; cu_seqlens_cpu: the same on the host
            (optional: then no device->host sync at all)
        cp_context: this rank's piece under context parallelism (see chunk_simple_gla)
    Returns:
        o: [B, T, H, V] in v's dtype; final_state: [N, H, K, V] ([N, H, K, V + 1] with normalize) float32 or None
    """

    def run(q, k, v, scale, h0, output_final_state, cu_seqlens):
        if cp_context is not None:  # no decay: M = I (fla/ops/cp/chunk.py)
            def piece(v, h0):
                return ChunkSimpleGLAFunction.apply(q, k, v, None, None, scale, h0, True, cu_seqlens)
            return chunk_cp(piece, q, v, None, scale, cp_context), None
        return ChunkSimpleGLAFunction.apply(q, k, v, None, None, scale, h0, output_final_state, cu_seqlens)

    if cp_context is not None:
        check_cp_call(cp_context, initial_state, output_final_state, cu_seqlens)
        cu_seqlens = cp_context.cu_seqlens

    return linear_attn_with_normalizer(run, q, k, v, scale, initial_state, output_final_state, normalize, cu_seqlens)


@normalize_inputs
def fused_chunk_linear_attn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    normalize: bool = True,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The peer library's name for a one-kernel chunked forward of the same function: here `chunk_linear_attn`."""
    return chunk_linear_attn(q, k, v, scale, initial_state, output_final_state, normalize, cu_seqlens)
