"""Gated linear attention (a log forget gate per key channel), chunk-parallel: the training path.

Composition: chunk-local cumsum of the gate -> states entering every chunk (`chunk_fwd_h`, shared) -> intra-chunk
output (`chunk_gk_fwd_o`, shared with other per-key-gate families). The backward recomputes the cumsum and the states
(cheaper than storing them), runs the shared state backward (`chunk_bwd_dh`), then dv and (dq, dk, dg).
"""
from __future__ import annotations

import torch

from fla.ops.cp.chunk import check_cp_call, chunk_cp
from fla.ops.cp.context import FLACPContext
from fla.ops.utils.checks import (check_cu_seqlens, check_head_dim, check_initial_state, check_scale, check_tensor,
                                  normalize_inputs)
from fla.ops.utils.chunk_gk import chunk_gk_bwd_dqkg, chunk_gk_bwd_dv, chunk_gk_fwd_o
from fla.ops.utils.chunk_h import chunk_bwd_dh, chunk_fwd_h
from fla.ops.utils.cumsum import chunk_local_cumsum

CHUNK_SIZE = 64


def chunk_gla_fwd(q, k, v, g, scale, initial_state, output_final_state, cu_seqlens, chunk_size=CHUNK_SIZE):
    gc = chunk_local_cumsum(g, chunk_size, cu_seqlens=cu_seqlens)
    h, ht = chunk_fwd_h(k, v, gk=gc, h0=initial_state, output_final_state=output_final_state,
                        cu_seqlens=cu_seqlens, chunk_size=chunk_size)
    o = chunk_gk_fwd_o(q, k, v, gc, h, scale, cu_seqlens, chunk_size)
    return o, ht


def chunk_gla_bwd(q, k, v, g, do, dht, scale, initial_state, cu_seqlens, chunk_size=CHUNK_SIZE):
    # The cumsum is recomputed, not saved: saving it would spare a read of g and a write of gc here (at B = 4,
    # T = 4096, H = 16, K = 128: 67 + 134 MB, ~0.06 ms of an H100's bandwidth) but hold a float32 [B, T, H, K]
    # activation (134 MB per layer, 3 GB for 24 layers) from forward to backward. Memory is what limits the batch.
    gc = chunk_local_cumsum(g, chunk_size, cu_seqlens=cu_seqlens)
    h, _ = chunk_fwd_h(k, v, gk=gc, h0=initial_state, cu_seqlens=cu_seqlens, chunk_size=chunk_size)
    dh, dh0 = chunk_bwd_dh(q, do, gk=gc, h0=initial_state, dht=dht, scale=scale, cu_seqlens=cu_seqlens,
                           chunk_size=chunk_size)
    dv = chunk_gk_bwd_dv(q, k, gc, do, dh, scale, cu_seqlens, chunk_size)
    dq, dk, dg = chunk_gk_bwd_dqkg(q, k, v, gc, h, do, dh, scale, cu_seqlens, chunk_size, g_dtype=g.dtype)
    return dq, dk, dv, dg, dh0


class ChunkGLAFunction(torch.autograd.Function):

    @staticmethod
    def forward(ctx, q, k, v, g, scale, initial_state, output_final_state, cu_seqlens):
        o, ht = chunk_gla_fwd(q, k, v, g, scale, initial_state, output_final_state, cu_seqlens)
        ctx.save_for_backward(q, k, v, g, initial_state, cu_seqlens)
        ctx.scale = scale
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, g, initial_state, cu_seqlens = ctx.saved_tensors
        dq, dk, dv, dg, dh0 = chunk_gla_bwd(q, k, v, g, do.contiguous(), dht, ctx.scale, initial_state, cu_seqlens)
        return dq, dk, dv, dg, None, dh0, None, None


def check_gla_inputs(q, k, v, gates, scale, initial_state, cu_seqlens):
    """Shared argument checks of the GLA entry points; `gates` maps a name to (tensor or None, its last dim).
    Returns the number of states N."""
    check_tensor("q", q, "[B, T, H, K]", (None, None, None, None))
    B, T, H, K = q.shape
    check_head_dim("q", K)
    check_tensor("k", k, "[B, T, H, K]", (B, T, H, K), (q.dtype,), q.device)
    check_tensor("v", v, "[B, T, H, V]", (B, T, H, None), (q.dtype,), q.device)
    check_head_dim("v", v.shape[-1])
    for name, (x, size) in gates.items():
        if x is not None:
            layout = "[B, T, H, K]" if size == K else "[B, T, H, V]"
            check_tensor(name, x, layout, (B, T, H, size), device=q.device)
    check_scale(scale)
    if isinstance(cu_seqlens, torch.Tensor) and cu_seqlens.device != q.device:
        raise ValueError(f"cu_seqlens is on {cu_seqlens.device} but q is on {q.device}; move it with .to(q.device)")
    N = B if cu_seqlens is None else check_cu_seqlens(cu_seqlens, B, T)
    check_initial_state(initial_state, N, (H, K, v.shape[-1]), "[N, H, K, V]", q.device)
    return N


@normalize_inputs
def chunk_gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    state_v_first: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    cu_seqlens_cpu: torch.Tensor | None = None,
    *,
    cp_context: FLACPContext | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gated linear attention, chunk-parallel (training and prefill).

    S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t,  o_t = scale * q_t S_t  (per head, S of shape [K, V]).

    Args:
        q: [B, T, H, K]   queries
        k: [B, T, H, K]   keys
        v: [B, T, H, V]   values
        g: [B, T, H, K]   log forget gates (<= 0), one per key channel
        scale: default K ** -0.5
        initial_state: [N, H, K, V] float32, optional
        output_final_state: also return the state after the last token
        cu_seqlens: [N + 1] int, packed sequences, B must be 1
        cp_context: this rank's piece of a sequence split across ranks (fla.ops.cp.build_cp_context); the inputs
            are then this rank's tokens, and cu_seqlens / initial_state / output_final_state are not taken
    Returns:
        o: [B, T, H, V] (q's dtype); final_state: [N, H, K, V] float32 or None
    """
    if cp_context is not None:
        check_cp_call(cp_context, initial_state, output_final_state, cu_seqlens)
        cu_seqlens = cp_context.cu_seqlens
    check_gla_inputs(q, k, v, {"g": (g, q.shape[-1])}, scale, initial_state, cu_seqlens)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if cp_context is not None:  # one run from a zero state, plus the incoming state's share (fla/ops/cp/chunk.py)
        def run(v, h0):
            return ChunkGLAFunction.apply(q, k, v, g, scale, h0, True, cu_seqlens)
        return chunk_cp(run, q, v, g, scale, cp_context), None
    if initial_state is not None:
        initial_state = initial_state.contiguous()
    return ChunkGLAFunction.apply(q, k, v, g, scale, initial_state, output_final_state, cu_seqlens)


def fused_chunk_gla(**kwargs):
    """Deprecated in the peer library, which raises; so do we."""
    raise NotImplementedError("fused_chunk_gla is deprecated (as in the peer library): use chunk_gla, same arguments")
