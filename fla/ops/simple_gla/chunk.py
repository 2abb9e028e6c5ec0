"""Simple gated linear attention, chunk-parallel (the training path), composed from the shared blocks.

Recurrence per head (see `naive.py`): S_t = exp(g_t) S_{t-1} + k_t^T v_t, o_t = scale * q_t S_t, with g_t a scalar log
decay per head and token (g [B, T, H]), a fixed one per head (g_gamma [H]), or none.

Forward:  G = chunk_local_cumsum(g) -> h = chunk_fwd_h(k, v, G) -> o = chunk_fwd_o(q, k, v, h, G).
Backward: G, h recomputed -> dh = chunk_bwd_dh(q, do, G) -> dv = chunk_bwd_dv -> dq, dk, dG = chunk_bwd_dqkwg
          -> dg = reverse chunk-local cumsum of dG (G_t sums g over the chunk up to t).
Only q, k, v, g and the initial state are saved: the chunk states are recomputed in the backward.
"""
from __future__ import annotations

import torch

from fla.ops.cp.chunk import check_cp_call, chunk_cp
from fla.ops.cp.context import FLACPContext
from fla.ops.utils.checks import (check_cu_seqlens, check_head_dim, check_initial_state, check_scale, check_tensor,
                                  normalize_inputs)
from fla.ops.utils.chunk_h import chunk_bwd_dh, chunk_fwd_h
from fla.ops.utils.chunk_o import chunk_bwd_dqkwg, chunk_bwd_dv, chunk_fwd_o
from fla.ops.utils.cumsum import chunk_local_cumsum

CHUNK_SIZE = 64


def _gate_cumsum(q, g, g_gamma, cu_seqlens, chunk_size):
    """Chunk-local cumsum of the log decays (float32 [B, T, H]), or None without decay."""
    if g is None and g_gamma is None:
        return None
    if g is None:
        B, T, H = q.shape[:3]
        g = g_gamma.float().view(1, 1, H).expand(B, T, H).contiguous()
    return chunk_local_cumsum(g, chunk_size, cu_seqlens=cu_seqlens)


def chunk_simple_gla_fwd(q, k, v, g, g_gamma, scale, initial_state, output_final_state, cu_seqlens,
                         chunk_size=CHUNK_SIZE):
    G = _gate_cumsum(q, g, g_gamma, cu_seqlens, chunk_size)
    h, ht = chunk_fwd_h(k, v, g=G, h0=initial_state, output_final_state=output_final_state, cu_seqlens=cu_seqlens,
                        chunk_size=chunk_size)
    o = chunk_fwd_o(q, k, v, h, G, scale, cu_seqlens, chunk_size)
    return o, ht


def chunk_simple_gla_bwd(q, k, v, g, g_gamma, do, dht, scale, initial_state, cu_seqlens, chunk_size=CHUNK_SIZE):
    G = _gate_cumsum(q, g, g_gamma, cu_seqlens, chunk_size)
    h, _ = chunk_fwd_h(k, v, g=G, h0=initial_state, cu_seqlens=cu_seqlens, chunk_size=chunk_size)
    dh, dh0 = chunk_bwd_dh(q, do, g=G, h0=initial_state, dht=dht, scale=scale, cu_seqlens=cu_seqlens,
                           chunk_size=chunk_size)
    dv = chunk_bwd_dv(q, k, do, dh, G, scale, cu_seqlens, chunk_size)
    dq, dk, _, dG = chunk_bwd_dqkwg(q, k, v, do, h, dh, G, scale=scale, cu_seqlens=cu_seqlens, chunk_size=chunk_size)
    dg = None
    if g is not None:
        dg = chunk_local_cumsum(dG, chunk_size, reverse=True, cu_seqlens=cu_seqlens).to(g.dtype)
    return dq, dk, dv, dg, dh0


class ChunkSimpleGLAFunction(torch.autograd.Function):

    @staticmethod
    def forward(ctx, q, k, v, g, g_gamma, scale, initial_state, output_final_state, cu_seqlens):
        o, ht = chunk_simple_gla_fwd(q, k, v, g, g_gamma, scale, initial_state, output_final_state, cu_seqlens)
        ctx.save_for_backward(q, k, v, g, g_gamma, initial_state, cu_seqlens)
        ctx.scale = scale
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, g, g_gamma, initial_state, cu_seqlens = ctx.saved_tensors
        dq, dk, dv, dg, dh0 = chunk_simple_gla_bwd(
            q, k, v, g, g_gamma, do.contiguous(), dht.contiguous() if dht is not None else None, ctx.scale,
            initial_state, cu_seqlens)
        return dq, dk, dv, dg, None, None, dh0, None, None


def chunk_simple_gla_cp(q, k, v, g, g_gamma, scale, cp_context):
    """This rank's output under context parallelism (see fla/ops/cp/chunk.py): one run from a zero state, plus
    the incoming state's share."""

    def run(v, h0):
        return ChunkSimpleGLAFunction.apply(q, k, v, g, g_gamma, scale, h0, True, cp_context.cu_seqlens)

    log_decay = g if g is not None or g_gamma is None else g_gamma.float().view(1, 1, -1).expand(*q.shape[:3])
    return chunk_cp(run, q, v, log_decay, scale, cp_context)


def check_simple_gla_inputs(q, k, v, g, g_gamma, scale, initial_state, cu_seqlens, state_value_dim=None) -> None:
    """The input checks shared by simple_gla, retention and linear_attn (`state_value_dim` overrides V in the state
    shape: linear_attn's normalizer column)."""
    check_tensor("q", q, "[B, T, H, K]", (None, None, None, None))
    B, T, H, K = q.shape
    check_head_dim("q", K)
    check_tensor("k", k, "[B, T, H, K]", (B, T, H, K), (q.dtype,), q.device)
    check_tensor("v", v, "[B, T, H, V]", (B, T, H, None), (q.dtype,), q.device)
    V = v.shape[-1]
    check_head_dim("v", V)
    if g is not None and g_gamma is not None:
        raise ValueError("give either g (data-dependent decays [B, T, H]) or g_gamma (fixed decays [H]), not both")
    if g is not None:
        check_tensor("g", g, "[B, T, H]", (B, T, H), device=q.device)
    if g_gamma is not None:
        check_tensor("g_gamma", g_gamma, "[H]", (H,), device=q.device)
    check_scale(scale)
    N = B
    if cu_seqlens is not None:
        check_tensor("cu_seqlens", cu_seqlens, "[N + 1]", None, (torch.int32, torch.int64), q.device)
        N = check_cu_seqlens(cu_seqlens, B, T)
    Vs = V if state_value_dim is None else state_value_dim
    check_initial_state(initial_state, N, (H, K, Vs), f"[N, H, K, {'V' if state_value_dim is None else 'V + 1'}]",
                        q.device)


@normalize_inputs
def chunk_simple_gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None = None,
    g_gamma: torch.Tensor | None = None,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    state_v_first: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    cu_seqlens_cpu: torch.Tensor | None = None,
    *,
    cp_context: FLACPContext | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Simple gated linear attention, chunk-parallel; differentiable in q, k, v, g and initial_state.

    Args:
        q, k: [B, T, H, K]; v: [B, T, H, V] (same dtype: float32, float16 or bfloat16)
        g: [B, T, H] log decays (<= 0), data-dependent; or
        g_gamma: [H] fixed log decay per head (a constant: no gradient); neither = no decay
        scale: defaults to K ** -0.5
        initial_state: [N, H, K, V] float32 (N = B, or the number of sequences under cu_seqlens)
        output_final_state: also return the state after the last token
        cu_seqlens: [N + 1] int32/int64, packed sequences, B must be 1
        cp_context: this rank's piece of a sequence split across ranks (fla.ops.cp.build_cp_context); q, k, v, g
            are then this rank's tokens, and cu_seqlens / initial_state / output_final_state are not taken
    Returns:
        o: [B, T, H, V] in v's dtype; final_state: [N, H, K, V] float32 or None
    """
    if cp_context is not None:
        check_cp_call(cp_context, initial_state, output_final_state, cu_seqlens)
        cu_seqlens = cp_context.cu_seqlens
    check_simple_gla_inputs(q, k, v, g, g_gamma, scale, initial_state, cu_seqlens)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if cp_context is not None:
        return chunk_simple_gla_cp(q, k, v, g.contiguous() if g is not None else None,
                                   g_gamma.detach() if g_gamma is not None else None, scale, cp_context), None
    return ChunkSimpleGLAFunction.apply(
        q, k, v, g.contiguous() if g is not None else None, g_gamma.detach() if g_gamma is not None else None,
        scale, initial_state.contiguous() if initial_state is not None else None, output_final_state, cu_seqlens)


@normalize_inputs
def fused_chunk_simple_gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None = None,
    g_gamma: torch.Tensor | None = None,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The peer library's name for a one-kernel chunked forward of the same function: here `chunk_simple_gla`."""
    return chunk_simple_gla(q, k, v, g, g_gamma, scale, initial_state, output_final_state, cu_seqlens=cu_seqlens)
