"""Kimi Delta Attention walked token by token with the state in registers (inference path: decoding, short prompts).

Per value head, with the state S [K, V] (see `naive.py`) and the gate computed in the kernel when asked
(gate = -exp(A_log) * softplus(g + dt_bias), else gate = g):
    S'_t = diag(exp(gate_t)) S_{t-1};  u_t = v_t - k_t S'_t;  S_t = S'_t + k_t^T (beta_t u_t);  o_t = scale * q_t S_t
The value channels of S never mix, so one program owns a [K, BV] column tile of one head's state.

Backward: the peer library's fused_recurrent_kda has none. Here it is the chunk form's backward (`chunk.py`; the same
function of the same inputs, so the same gradients), after recomputing the chunk form's A.

Grouped values: q/k have H heads, v/g/beta/state HV; value head j reads q/k head j // (HV // H).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.standard import _sum_combine

from fla.ops.kda.chunk import (CHUNK_SIZE, check_kda_inputs, chunk_kda_bwd, kda_beta, prepare_kda,
                               refuse_unsupported)
from fla.ops.kda.gate import _softplus, kda_gate_chunk_cumsum, naive_kda_gate
from fla.ops.kda.naive import naive_recurrent_kda
from fla.ops.utils.checks import normalize_inputs
from fla.ops.utils.dispatch import autotune, dispatch
from fla.ops.utils.index import sequence_bounds
from fla.ops.utils.l2norm import l2_norm
from fla.ops.utils.wy import solve_tril
from fla.ops.utils.wy_gk import chunk_kkt_gk_fwd

# a [BK, BV] float32 state tile per program and a per-token loop: narrow tiles, few warps first. Not one: at one
# warp a K = 96 (BK = 128) float16 state spilled 152 B on sm_90 (255 registers); two hold it.
_CONFIGS = [triton.Config({}, num_warps=w, num_stages=s) for w in (2, 4, 1) for s in (2, 3, 1)]


@triton.heuristics({
    "HAS_BIAS": lambda args: args["dt_bias"] is not None,
    "USE_INITIAL_STATE": lambda args: args["h0"] is not None,
    "STORE_FINAL_STATE": lambda args: args["ht"] is not None,
    "IS_VARLEN": lambda args: args["cu_seqlens"] is not None,
})
@autotune(_CONFIGS, key=["H", "HV", "K", "V", "BV", "USE_GATE"])
@triton.jit
def fused_recurrent_kda_fwd_kernel(
    q, k, v, g, beta, A_log, dt_bias, o, h0, ht, cu_seqlens, scale, T,
    H: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_GATE: tl.constexpr, HAS_BIAS: tl.constexpr, USE_INITIAL_STATE: tl.constexpr,
    STORE_FINAL_STATE: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    # grid: (V tiles, N * HV). q, k [B, T, H, K]; v, o [B, T, HV, V]; g [B, T, HV, K]; beta [B, T, HV];
    # h0, ht [N, HV, K, V] float32.
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_hv = i_nh // HV, i_nh % HV
    i_h = i_hv // (HV // H)
    bos, T = sequence_bounds(i_n, cu_seqlens, T, IS_VARLEN)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_INITIAL_STATE:
        b_h += tl.load(h0 + i_nh * K * V + o_k[:, None] * V + o_v[None, :], mask=m_kv, other=0.)
    if USE_GATE:
        b_a = tl.exp(tl.load(A_log + i_hv).to(tl.float32))
        b_bias = tl.zeros([BK], dtype=tl.float32)
        if HAS_BIAS:
            b_bias = tl.load(dt_bias + i_hv * K + o_k, mask=m_k, other=0.).to(tl.float32)
    for t in range(0, T):
        row = bos + t
        b_q = tl.load(q + (row * H + i_h) * K + o_k, mask=m_k, other=0.).to(tl.float32)
        b_k = tl.load(k + (row * H + i_h) * K + o_k, mask=m_k, other=0.).to(tl.float32)
        b_v = tl.load(v + (row * HV + i_hv) * V + o_v, mask=m_v, other=0.).to(tl.float32)
        b_g = tl.load(g + (row * HV + i_hv) * K + o_k, mask=m_k, other=0.).to(tl.float32)
        b_beta = tl.load(beta + row * HV + i_hv).to(tl.float32)
        if USE_GATE:
            b_g = -b_a * _softplus(b_g + b_bias)
        b_h *= tl.exp(b_g)[:, None]
        b_u = b_v - tl.reduce(b_h * b_k[:, None], 0, _sum_combine)
        b_h += b_k[:, None] * (b_beta * b_u)[None, :]
        b_o = tl.reduce(b_h * b_q[:, None], 0, _sum_combine) * scale
        tl.store(o + (row * HV + i_hv) * V + o_v, b_o.to(o.dtype.element_ty), mask=m_v)
    if STORE_FINAL_STATE:
        tl.store(ht + i_nh * K * V + o_k[:, None] * V + o_v[None, :], b_h, mask=m_kv)


def fused_recurrent_kda_fwd(q, k, v, g, beta, A_log, dt_bias, scale, initial_state, output_final_state,
                            cu_seqlens):
    B, T, H, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    N = B if cu_seqlens is None else len(cu_seqlens) - 1
    BK = max(16, triton.next_power_of_2(K))
    BV = min(32, max(16, triton.next_power_of_2(V)))
    o = torch.empty_like(v)
    ht = q.new_empty(N, HV, K, V, dtype=torch.float32) if output_final_state else None
    fused_recurrent_kda_fwd_kernel[(triton.cdiv(V, BV), N * HV)](
        q, k, v, g, beta, A_log, dt_bias, o, initial_state, ht, cu_seqlens, scale, T,
        H=H, HV=HV, K=K, V=V, BK=BK, BV=BV, USE_GATE=A_log is not None)
    return o, ht


class FusedRecurrentKDAFunction(torch.autograd.Function):

    @staticmethod
    def forward(ctx, q, k, v, g, beta, A_log, dt_bias, scale, initial_state, output_final_state, cu_seqlens):
        o, ht = fused_recurrent_kda_fwd(q, k, v, g, beta, A_log, dt_bias, scale, initial_state, output_final_state,
                                        cu_seqlens)
        ctx.save_for_backward(q, k, v, g, beta, A_log, dt_bias, initial_state, cu_seqlens)
        ctx.scale = scale
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, g, beta, A_log, dt_bias, initial_state, cu_seqlens = ctx.saved_tensors
        G = kda_gate_chunk_cumsum(g, A_log, dt_bias, CHUNK_SIZE, cu_seqlens)
        A = solve_tril(chunk_kkt_gk_fwd(k, G, beta, cu_seqlens=cu_seqlens, chunk_size=CHUNK_SIZE), cu_seqlens,
                       CHUNK_SIZE, output_dtype=k.dtype)
        dq, dk, dv, dg, dbeta, dA_log, ddt_bias, dh0 = chunk_kda_bwd(
            q, k, v, g, beta, A_log, dt_bias, A, ctx.scale, initial_state, do.contiguous(),
            dht.contiguous() if dht is not None else None, cu_seqlens, CHUNK_SIZE)
        dA_log = dA_log.to(A_log.dtype) if A_log is not None else None
        ddt_bias = ddt_bias.view_as(dt_bias).to(dt_bias.dtype) if dt_bias is not None else None
        return dq.to(q.dtype), dk.to(k.dtype), dv, dg, dbeta.to(beta.dtype), dA_log, ddt_bias, None, dh0, None, None


def _fused_recurrent_triton(q, k, v, g, beta, A_log, dt_bias, scale, initial_state, output_final_state,
                            use_qk_l2norm_in_kernel, cu_seqlens):
    q, k = prepare_kda(q, k, use_qk_l2norm_in_kernel, v.shape[2])
    return FusedRecurrentKDAFunction.apply(q, k, v, g, beta, A_log, dt_bias, scale, initial_state,
                                           output_final_state, cu_seqlens)


def _fused_recurrent_torch(q, k, v, g, beta, A_log, dt_bias, scale, initial_state, output_final_state,
                           use_qk_l2norm_in_kernel, cu_seqlens):
    if use_qk_l2norm_in_kernel:
        q, k = l2_norm(q), l2_norm(k)
    if A_log is not None:
        g = naive_kda_gate(g, A_log, dt_bias)
    return naive_recurrent_kda(q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens=cu_seqlens)


_fused_recurrent = dispatch(_fused_recurrent_triton, _fused_recurrent_torch)


@normalize_inputs
def fused_recurrent_kda(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    A_log: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False,
    use_gate_in_kernel: bool = False,
    use_beta_sigmoid_in_kernel: bool = False,
    allow_neg_eigval: bool = False,
    lower_bound: float | None = None,
    state_v_first: bool = False,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Kimi Delta Attention, token by token (decoding, short prompts); differentiable (the backward is the chunk
    form's). Arguments, in the peer library's order, as in `chunk_kda` (there A_log / dt_bias are keyword-only):

    Args:
        q, k: [B, T, H, K]; v: [B, T, HV, V]; g: [B, T, HV, K] (raw with use_gate_in_kernel); beta: [B, T, HV]
        A_log: [HV]; dt_bias: [HV * K]: the in-kernel gate -exp(A_log) * softplus(g + dt_bias)
        initial_state: [N, HV, K, V] float32; lower_bound: the peer's bounded gate, not supported (an error)
        state_v_first: states as [N, HV, V, K]; cu_seqlens: [N + 1] packed sequences, B must be 1
    Returns:
        o: [B, T, HV, V]; final_state: [N, HV, K, V] float32 or None
    """
    refuse_unsupported(lower_bound=lower_bound)
    check_kda_inputs(q, k, v, g, beta, scale, initial_state, cu_seqlens, use_gate_in_kernel, A_log, dt_bias)
    beta = kda_beta(beta, use_beta_sigmoid_in_kernel, allow_neg_eigval)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return _fused_recurrent(q, k, v, g, beta.contiguous(), A_log if use_gate_in_kernel else None,
                            dt_bias.contiguous() if dt_bias is not None else None, scale, initial_state,
                            output_final_state, use_qk_l2norm_in_kernel, cu_seqlens)
