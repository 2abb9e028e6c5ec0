"""Simple gated linear attention walked token by token with the state in registers (inference path), with a backward.

Per head (see `naive.py`): S_t = a_t S_{t-1} + k_t^T v_t, o_t = scale * q_t S_t, a_t = exp(g_t) (or exp(g_gamma), or 1).
The value channels of S never mix, so one program owns a [K, BV] column tile of one head's state.

Backward, with D_t = dL/dS_t walked against the direction of the forward:
    D_t = a_{t+1} D_{t+1} + scale * q_t^T do_t,   dk_t = D_t v_t^T,   dv_t = k_t D_t,   dq_t = scale * S_t do_t
The gate gradient dg_t = a_t <D_t, S_{t-1}> = <D_t, S_t> - dv_t . v_t needs no stored state, because
<D_t, S_t> = <D_{t+1}, a_{t+1} S_t> + do_t . o_t = dg_{t+1} + do_t . o_t. So it is the running sum
    dg_t = dg_{t+1} + q_t . dq_t - k_t . dk_t,    dg_{T+1} = <dL/dS_T, S_T> (from the final state's gradient),
using do_t . o_t = q_t . dq_t and dv_t . v_t = k_t . dk_t. Under strong decay its terms nearly cancel, so they must
be float32: dq_t from the kernel, not o_t as stored in float16/bfloat16 (that rounding put dg 1-4% off in float16).
The backward is one sweep along the forward direction rebuilding S for dq, then one against it (D, dk, dv, dg).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fla.ops.simple_gla.chunk import check_simple_gla_inputs
from fla.ops.simple_gla.naive import naive_recurrent_simple_gla
from fla.ops.utils.checks import normalize_inputs
from fla.ops.utils.dispatch import autotune, dispatch
from fla.ops.utils.index import sequence_bounds

# One warp spills a [128, 64] float32 state tile on sm_90 (ptxas); 2-8 warps hold it.
_CONFIGS = [triton.Config({}, num_warps=w, num_stages=s) for w in (4, 2, 8) for s in (2, 3)]
_KEY = ["H", "K", "V", "BV", "USE_G", "USE_G_GAMMA", "REVERSE"]
_HEURISTICS = {
    "USE_G": lambda args: args["g"] is not None,
    "USE_G_GAMMA": lambda args: args["g_gamma"] is not None,
    "IS_VARLEN": lambda args: args["cu_seqlens"] is not None,
}


@triton.heuristics({
    **_HEURISTICS,
    "USE_INITIAL_STATE": lambda args: args["h0"] is not None,
    "STORE_FINAL_STATE": lambda args: args["ht"] is not None,
})
@autotune(_CONFIGS, key=_KEY)
@triton.jit
def fused_recurrent_simple_gla_fwd_kernel(
    q, k, v, g, g_gamma, o, h0, ht, cu_seqlens, scale,
    T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    REVERSE: tl.constexpr, USE_G: tl.constexpr, USE_G_GAMMA: tl.constexpr,
    USE_INITIAL_STATE: tl.constexpr, STORE_FINAL_STATE: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    # grid (NV, N * H). Layouts: q, k [B, T, H, K]; v, o [B, T, H, V]; g [B, T, H]; g_gamma [H]; h0, ht [N, H, K, V].
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, T = sequence_bounds(i_n, cu_seqlens, T, IS_VARLEN)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    o_kv = o_k[:, None] * V + o_v[None, :]

    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_INITIAL_STATE:
        b_h += tl.load(h0 + i_nh * K * V + o_kv, mask=m_kv, other=0.)
    if USE_G_GAMMA:
        b_a = tl.exp(tl.load(g_gamma + i_h).to(tl.float32))
    for i_t in range(T):
        if REVERSE:
            row = bos + T - 1 - i_t
        else:
            row = bos + i_t
        b_q = tl.load(q + (row * H + i_h) * K + o_k, mask=m_k, other=0.).to(tl.float32)
        b_k = tl.load(k + (row * H + i_h) * K + o_k, mask=m_k, other=0.).to(tl.float32)
        b_v = tl.load(v + (row * H + i_h) * V + o_v, mask=m_v, other=0.).to(tl.float32)
        if USE_G:
            b_h *= tl.exp(tl.load(g + row * H + i_h).to(tl.float32))
        if USE_G_GAMMA:
            b_h *= b_a
        b_h += b_k[:, None] * b_v[None, :]
        b_o = scale * tl.sum(b_h * b_q[:, None], axis=0)
        tl.store(o + (row * H + i_h) * V + o_v, b_o.to(o.dtype.element_ty), mask=m_v)
    if STORE_FINAL_STATE:
        tl.store(ht + i_nh * K * V + o_kv, b_h, mask=m_kv)


@triton.heuristics({
    **_HEURISTICS,
    "USE_INITIAL_STATE": lambda args: args["dh0"] is not None,
    "USE_FINAL_STATE_GRADIENT": lambda args: args["dht"] is not None,
})
@autotune(_CONFIGS, key=_KEY)
@triton.jit
def fused_recurrent_simple_gla_bwd_dkvg_kernel(
    q, k, v, g, g_gamma, dq, do, dht, ht, dk, dv, dg, dh0, cu_seqlens, scale,
    T, NROWS, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    REVERSE: tl.constexpr, USE_G: tl.constexpr, USE_G_GAMMA: tl.constexpr,
    USE_INITIAL_STATE: tl.constexpr, USE_FINAL_STATE_GRADIENT: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    # Sweep against the forward direction. Sums over this program's value columns go to per-tile buffers summed on
    # the host: dk [NV, NROWS, H, K], dg [NV, NROWS, H] (NROWS = B * T); dv [B, T, H, V] is complete. dq holds this
    # tile's float32 partial dq (the dq kernel runs first), so q . dq is this tile's do . o.
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, T = sequence_bounds(i_n, cu_seqlens, T, IS_VARLEN)
    tile = (i_v * NROWS).to(tl.int64)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    o_kv = o_k[:, None] * V + o_v[None, :]

    b_dh = tl.zeros([BK, BV], dtype=tl.float32)
    b_dg = tl.zeros([BK], dtype=tl.float32)  # per-key-channel running sum, reduced at each store
    if USE_FINAL_STATE_GRADIENT:
        b_dh += tl.load(dht + i_nh * K * V + o_kv, mask=m_kv, other=0.)
        if USE_G:
            b_dg += tl.sum(b_dh * tl.load(ht + i_nh * K * V + o_kv, mask=m_kv, other=0.), axis=1)
    if USE_G_GAMMA:
        b_a = tl.exp(tl.load(g_gamma + i_h).to(tl.float32))
    for i_r in range(T):
        if REVERSE:
            row = bos + i_r
        else:
            row = bos + T - 1 - i_r
        b_q = tl.load(q + (row * H + i_h) * K + o_k, mask=m_k, other=0.).to(tl.float32)
        b_k = tl.load(k + (row * H + i_h) * K + o_k, mask=m_k, other=0.).to(tl.float32)
        b_v = tl.load(v + (row * H + i_h) * V + o_v, mask=m_v, other=0.).to(tl.float32)
        b_do = tl.load(do + (row * H + i_h) * V + o_v, mask=m_v, other=0.).to(tl.float32)
        b_dh += scale * b_q[:, None] * b_do[None, :]
        b_dk = tl.sum(b_dh * b_v[None, :], axis=1)
        b_dv = tl.sum(b_dh * b_k[:, None], axis=0)
        tl.store(dk + ((tile + row) * H + i_h) * K + o_k, b_dk, mask=m_k)
        tl.store(dv + (row * H + i_h) * V + o_v, b_dv.to(dv.dtype.element_ty), mask=m_v)
        if USE_G:
            b_dq = tl.load(dq + ((tile + row) * H + i_h) * K + o_k, mask=m_k, other=0.)
            b_dg += b_q * b_dq - b_k * b_dk
            tl.store(dg + (tile + row) * H + i_h, tl.sum(b_dg, axis=0))
            b_dh *= tl.exp(tl.load(g + row * H + i_h).to(tl.float32))
        if USE_G_GAMMA:
            b_dh *= b_a
    if USE_INITIAL_STATE:
        tl.store(dh0 + i_nh * K * V + o_kv, b_dh, mask=m_kv)


@triton.heuristics({**_HEURISTICS, "USE_INITIAL_STATE": lambda args: args["h0"] is not None})
@autotune(_CONFIGS, key=_KEY)
@triton.jit
def fused_recurrent_simple_gla_bwd_dq_kernel(
    k, v, g, g_gamma, do, h0, dq, cu_seqlens, scale,
    T, NROWS, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    REVERSE: tl.constexpr, USE_G: tl.constexpr, USE_G_GAMMA: tl.constexpr,
    USE_INITIAL_STATE: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    # Sweep along the forward direction rebuilding S: dq_t = scale * S_t do_t, per value tile ([NV, NROWS, H, K]).
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, T = sequence_bounds(i_n, cu_seqlens, T, IS_VARLEN)
    tile = (i_v * NROWS).to(tl.int64)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]

    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_INITIAL_STATE:
        b_h += tl.load(h0 + i_nh * K * V + o_k[:, None] * V + o_v[None, :], mask=m_kv, other=0.)
    if USE_G_GAMMA:
        b_a = tl.exp(tl.load(g_gamma + i_h).to(tl.float32))
    for i_t in range(T):
        if REVERSE:
            row = bos + T - 1 - i_t
        else:
            row = bos + i_t
        b_k = tl.load(k + (row * H + i_h) * K + o_k, mask=m_k, other=0.).to(tl.float32)
        b_v = tl.load(v + (row * H + i_h) * V + o_v, mask=m_v, other=0.).to(tl.float32)
        b_do = tl.load(do + (row * H + i_h) * V + o_v, mask=m_v, other=0.).to(tl.float32)
        if USE_G:
            b_h *= tl.exp(tl.load(g + row * H + i_h).to(tl.float32))
        if USE_G_GAMMA:
            b_h *= b_a
        b_h += b_k[:, None] * b_v[None, :]
        tl.store(dq + ((tile + row) * H + i_h) * K + o_k, scale * tl.sum(b_h * b_do[None, :], axis=1), mask=m_k)


def _block_sizes(K: int, V: int) -> tuple[int, int]:
    BK = max(16, triton.next_power_of_2(K))
    # The whole key dim is one block (o_t sums over it); keep the [BK, BV] float32 tile <= 8K values.
    BV = min(max(16, triton.next_power_of_2(V)), max(16, 8192 // BK))
    return BK, BV


def _num_states(B: int, cu_seqlens) -> int:
    return B if cu_seqlens is None else len(cu_seqlens) - 1


def fused_recurrent_simple_gla_fwd(q, k, v, g, g_gamma, scale, initial_state, output_final_state, reverse,
                                   cu_seqlens):
    B, T, H, K = q.shape
    V = v.shape[-1]
    N = _num_states(B, cu_seqlens)
    BK, BV = _block_sizes(K, V)
    o = torch.empty_like(v)
    ht = q.new_empty(N, H, K, V, dtype=torch.float32) if output_final_state else None
    fused_recurrent_simple_gla_fwd_kernel[(triton.cdiv(V, BV), N * H)](
        q, k, v, g, g_gamma, o, initial_state, ht, cu_seqlens, scale,
        T=T, H=H, K=K, V=V, BK=BK, BV=BV, REVERSE=reverse,
    )
    return o, ht


def fused_recurrent_simple_gla_bwd(q, k, v, g, g_gamma, ht, do, dht, scale, initial_state, reverse, cu_seqlens):
    B, T, H, K = q.shape
    V = v.shape[-1]
    N = _num_states(B, cu_seqlens)
    BK, BV = _block_sizes(K, V)
    NV = triton.cdiv(V, BV)
    f32 = dict(device=q.device, dtype=torch.float32)
    dq = torch.empty(NV, B, T, H, K, **f32)
    dk = torch.empty(NV, B, T, H, K, **f32)
    dv = torch.empty_like(v)
    dg = torch.empty(NV, B, T, H, **f32) if g is not None else None
    dh0 = torch.empty(N, H, K, V, **f32) if initial_state is not None else None
    grid = (NV, N * H)
    common = dict(T=T, NROWS=B * T, H=H, K=K, V=V, BK=BK, BV=BV, REVERSE=reverse)
    fused_recurrent_simple_gla_bwd_dq_kernel[grid](k, v, g, g_gamma, do, initial_state, dq, cu_seqlens, scale, **common)
    fused_recurrent_simple_gla_bwd_dkvg_kernel[grid](
        q, k, v, g, g_gamma, dq, do, dht, ht, dk, dv, dg, dh0, cu_seqlens, scale, **common)
    dg = dg.sum(0).to(g.dtype) if g is not None else None
    return dq.sum(0).to(q.dtype), dk.sum(0).to(k.dtype), dv, dg, dh0


class FusedRecurrentSimpleGLAFunction(torch.autograd.Function):

    @staticmethod
    def forward(ctx, q, k, v, g, g_gamma, scale, initial_state, output_final_state, reverse, cu_seqlens):
        # The gate gradient starts from <dL/dS_T, S_T>; that term exists only when the final state is an output.
        o, ht = fused_recurrent_simple_gla_fwd(q, k, v, g, g_gamma, scale, initial_state, output_final_state, reverse,
                                               cu_seqlens)
        ctx.save_for_backward(q, k, v, g, g_gamma, ht, initial_state, cu_seqlens)
        ctx.scale, ctx.reverse = scale, reverse
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, g, g_gamma, ht, initial_state, cu_seqlens = ctx.saved_tensors
        dq, dk, dv, dg, dh0 = fused_recurrent_simple_gla_bwd(
            q, k, v, g, g_gamma, ht, do.contiguous(), dht.contiguous() if dht is not None else None, ctx.scale,
            initial_state, ctx.reverse, cu_seqlens)
        return dq, dk, dv, dg, None, None, dh0, None, None, None


def _fused_recurrent_triton(q, k, v, g, g_gamma, scale, initial_state, output_final_state, reverse, cu_seqlens):
    return FusedRecurrentSimpleGLAFunction.apply(q, k, v, g, g_gamma, scale, initial_state, output_final_state,
                                                 reverse, cu_seqlens)


def _fused_recurrent_torch(q, k, v, g, g_gamma, scale, initial_state, output_final_state, reverse, cu_seqlens):
    return naive_recurrent_simple_gla(q, k, v, g, scale, initial_state, output_final_state, g_gamma=g_gamma,
                                      reverse=reverse, cu_seqlens=cu_seqlens)


_fused_recurrent = dispatch(_fused_recurrent_triton, _fused_recurrent_torch)


@normalize_inputs
def fused_recurrent_simple_gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None = None,
    g_gamma: torch.Tensor | None = None,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    reverse: bool = False,
    state_v_first: bool = False,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Simple gated linear attention token by token (decoding, short prompts); differentiable in q, k, v, g and
    initial_state.

    Args:
        q, k: [B, T, H, K]; v: [B, T, H, V] (same dtype: float32, float16 or bfloat16)
        g: [B, T, H] log decays (<= 0); or g_gamma: [H] fixed log decay per head (no gradient); neither = no decay
        scale: defaults to K ** -0.5
        initial_state: [N, H, K, V] float32 (N = B, or the number of sequences under cu_seqlens)
        output_final_state: also return the state after the last token walked
        reverse: walk each sequence from its end (S_t = exp(g_t) S_{t+1} + k_t^T v_t)
        cu_seqlens: [N + 1] int32/int64, packed sequences, B must be 1
    Returns:
        o: [B, T, H, V] in v's dtype; final_state: [N, H, K, V] float32 or None
    """
    check_simple_gla_inputs(q, k, v, g, g_gamma, scale, initial_state, cu_seqlens)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return _fused_recurrent(q, k, v, g, g_gamma.detach() if g_gamma is not None else None, scale,
                            initial_state.contiguous() if initial_state is not None else None, output_final_state,
                            reverse, cu_seqlens)
