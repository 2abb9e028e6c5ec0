"""Gated linear attention, recurrent form: one program per (sequence, head, value block) walks the tokens with the
state in registers (decoding, short prompts). Gates per key channel (gk) and/or per value channel (gv).

Backward without storing states: a first walk in the recurrence's direction rebuilds S_t and gives
dq_t = scale * S_t do_t; a second walk against it carries dS (the gradient of S_t) and gives dk_t = dS_t v_t,
dv_t = dS_t^T k_t. The gate gradients need S_{t-1}, which the second walk no longer has, but
    sum_v dS_t * exp(gk_t, gv_t) * S_{t-1} = sum_v dS_t * (S_t - k_t^T v_t)
    and sum_v dS_t * S_t = q_t * dq_t + (the same sum one step later),
so dgk_t = sum_{tau >= t} (q_tau dq_tau - k_tau dk_tau) + sum_v dht * S_T (steps in walk order), and likewise
dgv_t = sum_{tau >= t} (o_tau do_tau - v_tau dv_tau) + sum_k dht * S_T: running sums, no division by a decay.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fla.ops.gla.chunk import check_gla_inputs
from fla.ops.gla.naive import naive_recurrent_gla
from fla.ops.utils.checks import normalize_inputs
from fla.ops.utils.dispatch import autotune, dispatch
from fla.ops.utils.index import sequence_bounds

_CONFIGS = [triton.Config({}, num_warps=w) for w in (2, 1, 4, 8)]


def _blocks(K: int, V: int) -> tuple[int, int]:
    # the whole key dim in one block (the output sums over it); the value dim split to bound the state's registers
    BK = triton.next_power_of_2(K)
    return BK, min(triton.next_power_of_2(V), max(8, 4096 // BK))


@triton.heuristics({
    "USE_GK": lambda args: args["gk"] is not None,
    "USE_GV": lambda args: args["gv"] is not None,
    "USE_INITIAL_STATE": lambda args: args["h0"] is not None,
    "STORE_FINAL_STATE": lambda args: args["ht"] is not None,
    "IS_VARLEN": lambda args: args["cu_seqlens"] is not None,
})
@autotune(_CONFIGS, key=["H", "K", "V", "BK", "BV"])
@triton.jit
def fused_recurrent_gla_fwd_kernel(
    q, k, v, gk, gv, o, h0, ht, cu_seqlens, scale, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, REVERSE: tl.constexpr,
    USE_GK: tl.constexpr, USE_GV: tl.constexpr, USE_INITIAL_STATE: tl.constexpr, STORE_FINAL_STATE: tl.constexpr,
    IS_VARLEN: tl.constexpr,
):
    # grid: (N * H, V blocks); q, k, gk are [B, T, H, K] (row stride H * K), v, gv, o [B, T, H, V]; states [N, H, K, V].
    i_nh, i_v = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, T = sequence_bounds(i_n, cu_seqlens, T, IS_VARLEN)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_h = m_k[:, None] & m_v[None, :]
    p_state = i_nh.to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :]
    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_INITIAL_STATE:
        b_h += tl.load(h0 + p_state, mask=m_h, other=0.).to(tl.float32)
    for i in range(0, T):
        if REVERSE:
            t = T - 1 - i
        else:
            t = i
        p_k = (bos + t) * H * K + i_h * K + o_k
        p_v = (bos + t) * H * V + i_h * V + o_v
        b_q = tl.load(q + p_k, mask=m_k, other=0.).to(tl.float32)
        b_k = tl.load(k + p_k, mask=m_k, other=0.).to(tl.float32)
        b_v = tl.load(v + p_v, mask=m_v, other=0.).to(tl.float32)
        if USE_GK:
            b_h *= tl.exp(tl.load(gk + p_k, mask=m_k, other=0.).to(tl.float32))[:, None]
        if USE_GV:
            b_h *= tl.exp(tl.load(gv + p_v, mask=m_v, other=0.).to(tl.float32))[None, :]
        b_h += b_k[:, None] * b_v[None, :]
        b_o = tl.sum(b_h * b_q[:, None], axis=0) * scale
        tl.store(o + p_v, b_o.to(o.dtype.element_ty), mask=m_v)
    if STORE_FINAL_STATE:
        tl.store(ht + p_state, b_h, mask=m_h)


@triton.heuristics({
    "USE_GK": lambda args: args["gk"] is not None,
    "USE_GV": lambda args: args["gv"] is not None,
    "USE_INITIAL_STATE": lambda args: args["h0"] is not None,
    "USE_FINAL_STATE_GRADIENT": lambda args: args["dht"] is not None,
    "IS_VARLEN": lambda args: args["cu_seqlens"] is not None,
})
@autotune(_CONFIGS, key=["H", "K", "V", "BK", "BV"])
@triton.jit
def fused_recurrent_gla_bwd_kernel(
    q, k, v, gk, gv, do, dht, h0, dq, dk, dv, dgk, dgv, odo, dh0, cu_seqlens, scale, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, REVERSE: tl.constexpr,
    USE_GK: tl.constexpr, USE_GV: tl.constexpr, USE_INITIAL_STATE: tl.constexpr,
    USE_FINAL_STATE_GRADIENT: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    # grid: (N * H, V blocks). dq, dk, dgk are float32 [NV, B, T, H, K] partial sums over this program's value block
    # (summed on the host); dv, dgv [B, T, H, V] are complete here. odo (float32 [B, T, H, V]) holds walk 1's
    # o * do for dgv: a separate buffer, since reading and rewriting one address inside walk 2 could race between
    # threads that hold replicated copies of a value-block vector.
    i_nh, i_v = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    if IS_VARLEN:
        T_all = tl.load(cu_seqlens + tl.num_programs(0) // H).to(tl.int64)
    else:
        T_all = (tl.num_programs(0) // H * T).to(tl.int64)
    bos, T = sequence_bounds(i_n, cu_seqlens, T, IS_VARLEN)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_h = m_k[:, None] & m_v[None, :]
    p_state = i_nh.to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :]
    p_part = i_v * T_all * H * K  # this value block's slice of the partial sums

    # walk 1, in the recurrence's direction: S_t, dq_t = scale * S_t do_t, and o_t * do_t for dgv
    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_INITIAL_STATE:
        b_h += tl.load(h0 + p_state, mask=m_h, other=0.).to(tl.float32)
    for i in range(0, T):
        if REVERSE:
            t = T - 1 - i
        else:
            t = i
        p_k = (bos + t) * H * K + i_h * K + o_k
        p_v = (bos + t) * H * V + i_h * V + o_v
        b_k = tl.load(k + p_k, mask=m_k, other=0.).to(tl.float32)
        b_v = tl.load(v + p_v, mask=m_v, other=0.).to(tl.float32)
        b_do = tl.load(do + p_v, mask=m_v, other=0.).to(tl.float32)
        if USE_GK:
            b_h *= tl.exp(tl.load(gk + p_k, mask=m_k, other=0.).to(tl.float32))[:, None]
        if USE_GV:
            b_h *= tl.exp(tl.load(gv + p_v, mask=m_v, other=0.).to(tl.float32))[None, :]
        b_h += b_k[:, None] * b_v[None, :]
        tl.store(dq + p_part + p_k, tl.sum(b_h * b_do[None, :], axis=1) * scale, mask=m_k)
        if USE_GV:
            b_q = tl.load(q + p_k, mask=m_k, other=0.).to(tl.float32)
            b_o = tl.sum(b_h * b_q[:, None], axis=0) * scale
            tl.store(odo + p_v, b_o * b_do, mask=m_v)

    # walk 2, against it: dS_t = scale * q_t^T do_t + decay_{t+1} * dS_{t+1}, starting from dht
    b_dh = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_FINAL_STATE_GRADIENT:
        b_dh += tl.load(dht + p_state, mask=m_h, other=0.).to(tl.float32)
    b_dgk = tl.sum(b_dh * b_h, axis=1)
    b_dgv = tl.sum(b_dh * b_h, axis=0)
    tl.debug_barrier()  # walk 1's stores (dq, o * do) are read back below, possibly by other threads of this program
    for i in range(0, T):
        if REVERSE:
            t = i
        else:
            t = T - 1 - i
        p_k = (bos + t) * H * K + i_h * K + o_k
        p_v = (bos + t) * H * V + i_h * V + o_v
        b_q = tl.load(q + p_k, mask=m_k, other=0.).to(tl.float32)
        b_k = tl.load(k + p_k, mask=m_k, other=0.).to(tl.float32)
        b_v = tl.load(v + p_v, mask=m_v, other=0.).to(tl.float32)
        b_do = tl.load(do + p_v, mask=m_v, other=0.).to(tl.float32)
        b_dh += (b_q * scale)[:, None] * b_do[None, :]
        b_dk = tl.sum(b_dh * b_v[None, :], axis=1)
        b_dv = tl.sum(b_dh * b_k[:, None], axis=0)
        tl.store(dk + p_part + p_k, b_dk, mask=m_k)
        tl.store(dv + p_v, b_dv.to(dv.dtype.element_ty), mask=m_v)
        if USE_GK:
            b_dq = tl.load(dq + p_part + p_k, mask=m_k, other=0.)
            b_dgk += b_q * b_dq - b_k * b_dk
            tl.store(dgk + p_part + p_k, b_dgk, mask=m_k)
            b_dh *= tl.exp(tl.load(gk + p_k, mask=m_k, other=0.).to(tl.float32))[:, None]
        if USE_GV:
            b_dgv += tl.load(odo + p_v, mask=m_v, other=0.) - b_v * b_dv
            tl.store(dgv + p_v, b_dgv.to(dgv.dtype.element_ty), mask=m_v)
            b_dh *= tl.exp(tl.load(gv + p_v, mask=m_v, other=0.).to(tl.float32))[None, :]
    if USE_INITIAL_STATE:
        tl.store(dh0 + p_state, b_dh, mask=m_h)


def _fwd_triton(q, k, v, gk, gv, scale, h0, output_final_state, reverse, cu_seqlens):
    B, T, H, K = q.shape
    V = v.shape[-1]
    N = B if cu_seqlens is None else len(cu_seqlens) - 1
    BK, BV = _blocks(K, V)
    o = torch.empty_like(v)
    ht = q.new_empty(N, H, K, V, dtype=torch.float32) if output_final_state else None
    fused_recurrent_gla_fwd_kernel[(N * H, triton.cdiv(V, BV))](
        q, k, v, gk, gv, o, h0, ht, cu_seqlens, scale, T, H=H, K=K, V=V, BK=BK, BV=BV, REVERSE=reverse)
    return o, ht


def _bwd_triton(q, k, v, gk, gv, do, dht, scale, h0, reverse, cu_seqlens):
    B, T, H, K = q.shape
    V = v.shape[-1]
    N = B if cu_seqlens is None else len(cu_seqlens) - 1
    BK, BV = _blocks(K, V)
    NV = triton.cdiv(V, BV)
    dq = q.new_empty(NV, B, T, H, K, dtype=torch.float32)
    dk = torch.empty_like(dq)
    dgk = torch.empty_like(dq) if gk is not None else None
    dv = torch.empty_like(v)
    dgv = torch.empty_like(gv) if gv is not None else None
    odo = torch.empty_like(gv, dtype=torch.float32) if gv is not None else None
    dh0 = torch.empty_like(h0, dtype=torch.float32) if h0 is not None else None
    fused_recurrent_gla_bwd_kernel[(N * H, NV)](
        q, k, v, gk, gv, do, dht, h0, dq, dk, dv, dgk, dgv, odo, dh0, cu_seqlens, scale, T,
        H=H, K=K, V=V, BK=BK, BV=BV, REVERSE=reverse)
    dq, dk = dq.sum(0).to(q.dtype), dk.sum(0).to(k.dtype)
    dgk = dgk.sum(0).to(gk.dtype) if gk is not None else None
    return dq, dk, dv, dgk, dgv, dh0


def _fwd_torch(q, k, v, gk, gv, scale, h0, output_final_state, reverse, cu_seqlens):
    with torch.no_grad():
        return naive_recurrent_gla(q, k, v, gk, h0, output_final_state, gv=gv, scale=scale, reverse=reverse,
                                   cu_seqlens=cu_seqlens)


def _bwd_torch(q, k, v, gk, gv, do, dht, scale, h0, reverse, cu_seqlens):
    # the recurrence again, differentiated by autograd (the recurrent form has no cheaper chunked twin)
    inputs = [x.detach().requires_grad_() if x is not None else None for x in (q, k, v, gk, gv, h0)]
    with torch.enable_grad():
        q_, k_, v_, gk_, gv_, h0_ = inputs
        o, ht = naive_recurrent_gla(q_, k_, v_, gk_, h0_, dht is not None, gv=gv_, scale=scale, reverse=reverse,
                                    cu_seqlens=cu_seqlens)
        outputs, grads = [o], [do]
        if dht is not None:
            outputs.append(ht)
            grads.append(dht)
        wanted = [x for x in inputs if x is not None]
        got = iter(torch.autograd.grad(outputs, wanted, grads, allow_unused=True))
        result = [next(got) if x is not None else None for x in inputs]
    return tuple(torch.zeros_like(x) if r is None and x is not None else r for r, x in zip(result, inputs))


_fused_recurrent_gla_fwd = dispatch(_fwd_triton, _fwd_torch)
_fused_recurrent_gla_bwd = dispatch(_bwd_triton, _bwd_torch)


class FusedRecurrentGLAFunction(torch.autograd.Function):

    @staticmethod
    def forward(ctx, q, k, v, gk, gv, scale, initial_state, output_final_state, reverse, cu_seqlens):
        o, ht = _fused_recurrent_gla_fwd(q, k, v, gk, gv, scale, initial_state, output_final_state, reverse,
                                         cu_seqlens)
        ctx.save_for_backward(q, k, v, gk, gv, initial_state, cu_seqlens)
        ctx.scale, ctx.reverse = scale, reverse
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, gk, gv, initial_state, cu_seqlens = ctx.saved_tensors
        dq, dk, dv, dgk, dgv, dh0 = _fused_recurrent_gla_bwd(
            q, k, v, gk, gv, do.contiguous(), dht.contiguous() if dht is not None else None, ctx.scale,
            initial_state, ctx.reverse, cu_seqlens)
        return dq, dk, dv, dgk, dgv, None, dh0, None, None, None


@normalize_inputs
def fused_recurrent_gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gk: torch.Tensor | None = None,
    gv: torch.Tensor | None = None,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    reverse: bool = False,
    state_v_first: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    g: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gated linear attention, token by token with the state in registers (decoding, short prompts).

    S_t = diag(exp(gk_t)) S_{t-1} diag(exp(gv_t)) + k_t^T v_t,  o_t = scale * q_t S_t.

    Args:
        q, k: [B, T, H, K]; v: [B, T, H, V]
        gk: [B, T, H, K] log forget gates per key channel (<= 0), optional; `g` is accepted as its name too
        gv: [B, T, H, V] log forget gates per value channel (<= 0), optional
        scale: default K ** -0.5
        initial_state: [N, H, K, V] float32, optional
        output_final_state: also return the state after the last step
        reverse: walk each sequence from its last token to its first
        cu_seqlens: [N + 1] int, packed sequences, B must be 1
    Returns:
        o: [B, T, H, V] (q's dtype); final_state: [N, H, K, V] float32 or None
    """
    if g is not None:
        if gk is not None:
            raise ValueError("pass the key-channel gate as gk or as g, not both (g is an alias of gk)")
        gk = g
    check_gla_inputs(q, k, v, {"gk": (gk, q.shape[-1]), "gv": (gv, v.shape[-1])}, scale, initial_state, cu_seqlens)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if initial_state is not None:
        initial_state = initial_state.contiguous()
    return FusedRecurrentGLAFunction.apply(q, k, v, gk, gv, scale, initial_state, output_final_state, reverse,
                                           cu_seqlens)
