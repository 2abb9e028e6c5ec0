"""The gated delta rule walked token by token with the state in registers (inference path), forward and backward.

Per value head, with the state S [K, V] (see `naive.py`):
    S'_t = exp(g_t) S_{t-1};   u_t = v_t - k_t S'_t;   S_t = S'_t + k_t^T (beta_t * u_t);   o_t = scale * q_t S_t
The value channels of S never mix, so one program owns a [K, BV] column tile of one head's state.

Backward. With D_t = dL/dS_t (including scale * q_t^T do_t) walked backwards:
    dvn_t = D_t^T k_t (vn_t = beta_t u_t),  du_t = beta_t dvn_t = dv_t,  dbeta_t = dvn_t . u_t,
    dk_t  = D_t vn_t - S'_t du_t,  dq_t = scale * S_t do_t,  D_{t-1} = exp(g_t) (D_t - k_t^T du_t).
The gate gradient dg_t = <dL/dS'_t, S'_t> needs no stored state: expanding it gives the running sum
    dg_t = dg_{t+1} + do_t . o_t - dvn_t . vn_t - (v_t - u_t) . du_t,   dg_{T+1} = <dL/dS_T, S_T> from the final state.
So the backward is a reverse sweep (D, dv, dbeta, dg, the D vn part of dk) followed by a forward sweep that rebuilds
S' and S for dq and the -S' du part of dk. u is saved by the forward, and so is o in float32 when the inputs are
float16/bfloat16: under strong decay the running sum's terms nearly cancel, and do . o from the rounded o put dg ~1%
off in float16 (dq, from which simple_gla takes do . o, comes only after this sweep here).

Grouped values: q/k have H heads, v/g/beta/state HV; value head j reads q/k head j // (HV // H).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
# tl.sum is itself a @jit function: under the interpreter every call re-patches triton.language (~5 ms), which
# dominates a per-token loop. tl.reduce with the standard combine is the same reduction and takes numpy's fast path.
from triton.language.standard import _sum_combine

from fla.ops.gated_delta_rule.gate import gated_delta_rule_inputs
from fla.ops.gated_delta_rule.naive import naive_recurrent_gated_delta_rule
from fla.ops.utils.checks import (FLOAT_DTYPES, check_cu_seqlens, check_head_dim, check_initial_state, check_scale,
                                  check_tensor, normalize_inputs)
from fla.ops.utils.dispatch import autotune, dispatch, is_interpreter
from fla.ops.utils.l2norm import l2_norm
from fla.ops.utils.index import sequence_bounds

# the backward sweeps hold a [BK, BV] float32 dL/dS tile: at 2 warps (128 registers of it at K = 128, V = 64) the
# per-channel-beta reverse sweep spilled, so 4 warps come first
_CONFIGS = [triton.Config({}, num_warps=w, num_stages=s) for w in (4, 2, 8, 1) for s in (2, 3, 1)]
# The forward's tiles are narrow (see `_forward_block_v`): a [128, 16] float32 state tile is 64 registers per thread
# at one warp, so one and two warps come first (wider ones only add idle lanes to a per-token loop).
_FWD_CONFIGS = [triton.Config({}, num_warps=w, num_stages=s) for w in (1, 2, 4) for s in (2, 3, 1)]
_KEY = ["H", "HV", "K", "V", "BV", "USE_G", "BETA_PER_CHANNEL"]
H100_SMS = 132  # the compile check's target, when no GPU can be asked


@triton.heuristics({
    "USE_G": lambda args: args["g"] is not None,
    "USE_INITIAL_STATE": lambda args: args["h0"] is not None,
    "STORE_FINAL_STATE": lambda args: args["ht"] is not None,
    "STORE_U": lambda args: args["u"] is not None,
    "STORE_O32": lambda args: args["o32"] is not None,
    "IS_VARLEN": lambda args: args["cu_seqlens"] is not None,
})
@autotune(_FWD_CONFIGS, key=_KEY)
@triton.jit
def fused_recurrent_gdr_fwd_kernel(
    q, k, v, g, beta, o, o32, u, h0, ht, cu_seqlens, scale,
    T, H: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_G: tl.constexpr, BETA_PER_CHANNEL: tl.constexpr, USE_INITIAL_STATE: tl.constexpr,
    STORE_FINAL_STATE: tl.constexpr, STORE_U: tl.constexpr, STORE_O32: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    # grid (NV, N * HV). Layouts: q, k [B, T, H, K]; v, o, o32, u [B, T, HV, V]; g [B, T, HV]; beta [B, T, HV] or
    # [B, T, HV, V]; h0, ht [N, HV, K, V]. One program: value head i_hv, state columns [i_v*BV, i_v*BV + BV).
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_hv = i_nh // HV, i_nh % HV
    i_h = i_hv // (HV // H)
    bos, T = sequence_bounds(i_n, cu_seqlens, T, IS_VARLEN)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    o_kv = o_k[:, None] * V + o_v[None, :]

    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_INITIAL_STATE:
        b_h += tl.load(h0 + i_nh * K * V + o_kv, mask=m_kv, other=0.)
    for i_t in range(T):
        row = bos + i_t
        b_q = tl.load(q + (row * H + i_h) * K + o_k, mask=m_k, other=0.).to(tl.float32)
        b_k = tl.load(k + (row * H + i_h) * K + o_k, mask=m_k, other=0.).to(tl.float32)
        b_v = tl.load(v + (row * HV + i_hv) * V + o_v, mask=m_v, other=0.).to(tl.float32)
        if BETA_PER_CHANNEL:
            b_beta = tl.load(beta + (row * HV + i_hv) * V + o_v, mask=m_v, other=0.).to(tl.float32)
        else:
            b_beta = tl.load(beta + row * HV + i_hv).to(tl.float32)
        if USE_G:
            b_h *= tl.exp(tl.load(g + row * HV + i_hv).to(tl.float32))
        b_u = b_v - tl.reduce(b_h * b_k[:, None], 0, _sum_combine)
        b_h += b_k[:, None] * (b_beta * b_u)[None, :]
        b_o = scale * tl.reduce(b_h * b_q[:, None], 0, _sum_combine)
        tl.store(o + (row * HV + i_hv) * V + o_v, b_o.to(o.dtype.element_ty), mask=m_v)
        if STORE_O32:
            tl.store(o32 + (row * HV + i_hv) * V + o_v, b_o, mask=m_v)
        if STORE_U:
            tl.store(u + (row * HV + i_hv) * V + o_v, b_u, mask=m_v)
    if STORE_FINAL_STATE:
        tl.store(ht + i_nh * K * V + o_kv, b_h, mask=m_kv)


@triton.heuristics({
    "USE_G": lambda args: args["g"] is not None,
    "USE_INITIAL_STATE": lambda args: args["dh0"] is not None,
    "USE_FINAL_STATE_GRADIENT": lambda args: args["dht"] is not None,
    "IS_VARLEN": lambda args: args["cu_seqlens"] is not None,
})
@autotune(_CONFIGS, key=_KEY)
@triton.jit
def fused_recurrent_gdr_bwd_reverse_kernel(
    q, k, v, g, beta, o, u, do, dht, ht, dk, dv, dbeta, dg, dh0, cu_seqlens, scale,
    T, B: tl.constexpr, H: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr,
    USE_G: tl.constexpr, BETA_PER_CHANNEL: tl.constexpr, USE_INITIAL_STATE: tl.constexpr,
    USE_FINAL_STATE_GRADIENT: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    # Reverse sweep. Partial sums over this program's value columns go to per-tile buffers, summed on the host:
    # dk [NV, B, T, HV, K], dg [NV, B, T, HV], dbeta [NV, B, T, HV] (per-channel beta: [B, T, HV, V] directly).
    # dv [B, T, HV, V] is complete (columns do not mix).
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_hv = i_nh // HV, i_nh % HV
    i_h = i_hv // (HV // H)
    T_all = T
    bos, T = sequence_bounds(i_n, cu_seqlens, T, IS_VARLEN)
    tile = (i_v * B * T_all).to(tl.int64)  # this tile's slice of the [NV, B*T, ...] partial buffers
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    o_kv = o_k[:, None] * V + o_v[None, :]

    b_dh = tl.zeros([BK, BV], dtype=tl.float32)
    b_dg = tl.zeros([BV], dtype=tl.float32)  # per-column running sum; reduced at each store
    if USE_FINAL_STATE_GRADIENT:
        b_dh += tl.load(dht + i_nh * K * V + o_kv, mask=m_kv, other=0.)
        b_dg += tl.reduce(b_dh * tl.load(ht + i_nh * K * V + o_kv, mask=m_kv, other=0.), 0, _sum_combine)
    for i_r in range(T):
        row = bos + T - 1 - i_r
        b_q = tl.load(q + (row * H + i_h) * K + o_k, mask=m_k, other=0.).to(tl.float32)
        b_k = tl.load(k + (row * H + i_h) * K + o_k, mask=m_k, other=0.).to(tl.float32)
        b_v = tl.load(v + (row * HV + i_hv) * V + o_v, mask=m_v, other=0.).to(tl.float32)
        b_o = tl.load(o + (row * HV + i_hv) * V + o_v, mask=m_v, other=0.).to(tl.float32)
        b_do = tl.load(do + (row * HV + i_hv) * V + o_v, mask=m_v, other=0.).to(tl.float32)
        b_u = tl.load(u + (row * HV + i_hv) * V + o_v, mask=m_v, other=0.)
        if BETA_PER_CHANNEL:
            b_beta = tl.load(beta + (row * HV + i_hv) * V + o_v, mask=m_v, other=0.).to(tl.float32)
        else:
            b_beta = tl.load(beta + row * HV + i_hv).to(tl.float32)
        b_dh += scale * b_q[:, None] * b_do[None, :]
        b_vn = b_beta * b_u
        b_dvn = tl.reduce(b_dh * b_k[:, None], 0, _sum_combine)
        b_du = b_beta * b_dvn
        b_dk = tl.reduce(b_dh * b_vn[None, :], 1, _sum_combine)
        tl.store(dk + ((tile + row) * HV + i_hv) * K + o_k, b_dk, mask=m_k)
        tl.store(dv + (row * HV + i_hv) * V + o_v, b_du.to(dv.dtype.element_ty), mask=m_v)
        if BETA_PER_CHANNEL:
            tl.store(dbeta + (row * HV + i_hv) * V + o_v, (b_dvn * b_u).to(dbeta.dtype.element_ty), mask=m_v)
        else:
            tl.store(dbeta + (tile + row) * HV + i_hv, tl.reduce(b_dvn * b_u, 0, _sum_combine))
        if USE_G:
            b_dg += b_do * b_o - b_dvn * b_vn - (b_v - b_u) * b_du
            tl.store(dg + (tile + row) * HV + i_hv, tl.reduce(b_dg, 0, _sum_combine))
        b_dh -= b_k[:, None] * b_du[None, :]
        if USE_G:
            b_dh *= tl.exp(tl.load(g + row * HV + i_hv).to(tl.float32))
    if USE_INITIAL_STATE:
        tl.store(dh0 + i_nh * K * V + o_kv, b_dh, mask=m_kv)


@triton.heuristics({
    "USE_G": lambda args: args["g"] is not None,
    "USE_INITIAL_STATE": lambda args: args["h0"] is not None,
    "IS_VARLEN": lambda args: args["cu_seqlens"] is not None,
})
@autotune(_CONFIGS, key=_KEY)
@triton.jit
def fused_recurrent_gdr_bwd_forward_kernel(
    q, k, v, g, beta, do, dv, h0, dq, dk, cu_seqlens, scale,
    T, B: tl.constexpr, H: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr,
    USE_G: tl.constexpr, BETA_PER_CHANNEL: tl.constexpr, USE_INITIAL_STATE: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    # Forward sweep rebuilding the state: dq = scale * S_t do_t, and dk -= S'_t du_t added to the reverse sweep's
    # partial (same [NV, B, T, HV, K] tile buffers; dv holds du).
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_hv = i_nh // HV, i_nh % HV
    i_h = i_hv // (HV // H)
    T_all = T
    bos, T = sequence_bounds(i_n, cu_seqlens, T, IS_VARLEN)
    tile = (i_v * B * T_all).to(tl.int64)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    o_kv = o_k[:, None] * V + o_v[None, :]

    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_INITIAL_STATE:
        b_h += tl.load(h0 + i_nh * K * V + o_kv, mask=m_kv, other=0.)
    for i_t in range(T):
        row = bos + i_t
        b_k = tl.load(k + (row * H + i_h) * K + o_k, mask=m_k, other=0.).to(tl.float32)
        b_v = tl.load(v + (row * HV + i_hv) * V + o_v, mask=m_v, other=0.).to(tl.float32)
        b_do = tl.load(do + (row * HV + i_hv) * V + o_v, mask=m_v, other=0.).to(tl.float32)
        b_du = tl.load(dv + (row * HV + i_hv) * V + o_v, mask=m_v, other=0.).to(tl.float32)
        if BETA_PER_CHANNEL:
            b_beta = tl.load(beta + (row * HV + i_hv) * V + o_v, mask=m_v, other=0.).to(tl.float32)
        else:
            b_beta = tl.load(beta + row * HV + i_hv).to(tl.float32)
        if USE_G:
            b_h *= tl.exp(tl.load(g + row * HV + i_hv).to(tl.float32))
        p_dk = dk + ((tile + row) * HV + i_hv) * K + o_k
        tl.store(p_dk, tl.load(p_dk, mask=m_k, other=0.) - tl.reduce(b_h * b_du[None, :], 1, _sum_combine), mask=m_k)
        b_u = b_v - tl.reduce(b_h * b_k[:, None], 0, _sum_combine)
        b_h += b_k[:, None] * (b_beta * b_u)[None, :]
        b_dq = scale * tl.reduce(b_h * b_do[None, :], 1, _sum_combine)
        tl.store(dq + ((tile + row) * HV + i_hv) * K + o_k, b_dq, mask=m_k)


def _block_sizes(K: int, V: int) -> tuple[int, int]:
    BK = max(16, triton.next_power_of_2(K))
    # The whole key dim is one block (u_t = v_t - k_t S' sums over it); keep the [BK, BV] float32 tile <= 8K values.
    BV = min(max(16, triton.next_power_of_2(V)), max(16, 8192 // BK))
    return BK, BV


def _forward_block_v(K: int, V: int, programs_per_tile: int, device: torch.device) -> int:
    """The forward's value tile. Each program walks its sequence token by token, so the GPU is kept busy only by
    many programs in flight: at B * HV = 64 heads, K = V = 128, the [128, 64] tile of `_block_sizes` gives 128
    programs for 132 SMs, one warp group each, mostly waiting on loads. Halve the tile until there are >= 4 programs
    per SM (down to 8 columns; the q/k rows each program re-reads are small and stay in L2). Under the interpreter
    (and on the CPU) fewer, wider programs are faster, so the tile stays."""
    BV = _block_sizes(K, V)[1]
    if is_interpreter():
        return BV
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else H100_SMS
    while BV > 8 and triton.cdiv(V, BV) * programs_per_tile < 4 * sms:
        BV //= 2
    return BV


def _num_states(B: int, cu_seqlens) -> int:
    return B if cu_seqlens is None else len(cu_seqlens) - 1


def _group_sum(x: torch.Tensor, H: int) -> torch.Tensor:
    """[B, T, HV, K] gradient of the per-value-head copies -> [B, T, H, K]."""
    B, T, HV, K = x.shape
    return x.view(B, T, H, HV // H, K).sum(3) if HV != H else x


def fused_recurrent_gdr_fwd(q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens, save):
    """-> o (v's dtype), u (float32, if save), o_saved (o in float32 for the backward, if save), final state."""
    B, T, H, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    N = _num_states(B, cu_seqlens)
    BK = _block_sizes(K, V)[0]
    BV = _forward_block_v(K, V, N * HV, v.device)
    o = torch.empty_like(v)
    f32 = dict(device=v.device, dtype=torch.float32)
    u = torch.empty(B, T, HV, V, **f32) if save else None
    o32 = torch.empty(B, T, HV, V, **f32) if save and g is not None and v.dtype != torch.float32 else None
    ht = q.new_empty(N, HV, K, V, dtype=torch.float32) if output_final_state else None
    fused_recurrent_gdr_fwd_kernel[(triton.cdiv(V, BV), N * HV)](
        q, k, v, g, beta, o, o32, u, initial_state, ht, cu_seqlens, scale,
        T=T, H=H, HV=HV, K=K, V=V, BK=BK, BV=BV, BETA_PER_CHANNEL=beta.dim() == 4,
    )
    return o, u, (o32 if o32 is not None else o) if save else None, ht


def fused_recurrent_gdr_bwd(q, k, v, g, beta, o, u, ht, do, dht, scale, initial_state, cu_seqlens):
    B, T, H, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    N = _num_states(B, cu_seqlens)
    BK, BV = _block_sizes(K, V)
    NV = triton.cdiv(V, BV)
    per_channel = beta.dim() == 4
    f32 = dict(device=q.device, dtype=torch.float32)
    dq = torch.empty(NV, B, T, HV, K, **f32)
    dk = torch.empty(NV, B, T, HV, K, **f32)
    dv = torch.empty_like(v)
    dbeta = torch.empty(B, T, HV, V, **f32) if per_channel else torch.empty(NV, B, T, HV, **f32)
    dg = torch.empty(NV, B, T, HV, **f32) if g is not None else None
    dh0 = torch.empty(N, HV, K, V, **f32) if initial_state is not None else None
    grid = (NV, N * HV)
    common = dict(T=T, B=B, H=H, HV=HV, K=K, V=V, BK=BK, BV=BV, BETA_PER_CHANNEL=per_channel)
    fused_recurrent_gdr_bwd_reverse_kernel[grid](
        q, k, v, g, beta, o, u, do, dht, ht, dk, dv, dbeta, dg, dh0, cu_seqlens, scale, **common)
    fused_recurrent_gdr_bwd_forward_kernel[grid](
        q, k, v, g, beta, do, dv, initial_state, dq, dk, cu_seqlens, scale, **common)
    dq, dk = _group_sum(dq.sum(0), H).to(q.dtype), _group_sum(dk.sum(0), H).to(k.dtype)
    dbeta = (dbeta if per_channel else dbeta.sum(0)).to(beta.dtype)
    dg = dg.sum(0).to(g.dtype) if g is not None else None
    return dq, dk, dv, dg, dbeta, dh0


class FusedRecurrentGatedDeltaRuleFunction(torch.autograd.Function):

    @staticmethod
    def forward(ctx, q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens, save):
        # `save`: a backward can follow (decided by the caller: inside forward grad mode is always off, and
        # ctx.needs_input_grad is True under no_grad too). Without it u, o32 and the state are not written.
        o, u, o_saved, ht = fused_recurrent_gdr_fwd(q, k, v, g, beta, scale, initial_state, output_final_state or save,
                                                    cu_seqlens, save)
        ctx.save_for_backward(q, k, v, g, beta, o_saved, u, ht, initial_state, cu_seqlens)
        ctx.scale = scale
        return o, (ht if output_final_state else None)

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, g, beta, o, u, ht, initial_state, cu_seqlens = ctx.saved_tensors
        dq, dk, dv, dg, dbeta, dh0 = fused_recurrent_gdr_bwd(
            q, k, v, g, beta, o, u, ht, do.contiguous(), dht.contiguous() if dht is not None else None, ctx.scale,
            initial_state, cu_seqlens)
        return dq, dk, dv, dg, dbeta, None, dh0, None, None, None


def _fused_recurrent_triton(q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel,
                            cu_seqlens):
    if use_qk_l2norm_in_kernel:
        q, k = l2_norm(q), l2_norm(k)
    save = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, g, beta, initial_state))
    return FusedRecurrentGatedDeltaRuleFunction.apply(q, k, v, g, beta, scale, initial_state, output_final_state,
                                                      cu_seqlens, save)


def _fused_recurrent_torch(q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel,
                           cu_seqlens):
    if use_qk_l2norm_in_kernel:
        q, k = l2_norm(q), l2_norm(k)
    o, ht = naive_recurrent_gated_delta_rule(q, k, v, beta, g, scale, initial_state, output_final_state,
                                             cu_seqlens=cu_seqlens)
    return o, ht


_fused_recurrent = dispatch(_fused_recurrent_triton, _fused_recurrent_torch)


def check_delta_rule_inputs(q, k, v, g, beta, scale, initial_state, cu_seqlens, per_channel_beta: bool,
                            mixed_dtypes: bool = False) -> None:
    """The shared input checks of the delta-rule families (`g` None for the plain rule). `mixed_dtypes`: q, k and
    v may each be float32, float16 or bfloat16 (the fused recurrent kernels read every input into float32);
    otherwise k and v must have q's dtype (the chunk kernels multiply them in one dtype). The value dim V has no
    upper bound (every kernel tiles it across programs); the key dim K is held in one block, so K <= 256."""
    check_tensor("q", q, "[B, T, H, K]", (None, None, None, None))
    B, T, H, K = q.shape
    check_head_dim("q", K)
    same = None if mixed_dtypes else (q.dtype,)
    check_tensor("k", k, "[B, T, H, K]", (B, T, H, K), same or FLOAT_DTYPES, q.device)
    check_tensor("v", v, "[B, T, HV, V]", (B, T, None, None), same or FLOAT_DTYPES, q.device)
    HV, V = v.shape[2], v.shape[3]
    check_head_dim("v", V, max_size=None)
    if HV % H != 0:
        raise ValueError(f"v's head count HV must be a multiple of q/k's H (got HV={HV}, H={H}); "
                         "each group of HV // H value heads shares one q/k head")
    if g is not None:
        check_tensor("g", g, "[B, T, HV]", (B, T, HV), device=q.device)
    if per_channel_beta and isinstance(beta, torch.Tensor) and beta.dim() == 4:
        check_tensor("beta", beta, "[B, T, HV, V]", (B, T, HV, V), device=q.device)
    else:
        layout = "[B, T, HV] or [B, T, HV, V]" if per_channel_beta else "[B, T, HV]"
        check_tensor("beta", beta, layout, (B, T, HV), device=q.device)
    check_scale(scale)
    N = B
    if cu_seqlens is not None:
        N = check_cu_seqlens(cu_seqlens, B, T)
    check_initial_state(initial_state, N, (HV, K, V), "[N, HV, K, V]", q.device)


@normalize_inputs
def fused_recurrent_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None = None,
    gk: torch.Tensor | None = None,
    gv: torch.Tensor | None = None,
    beta: torch.Tensor | None = None,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False,
    use_gate_in_kernel: bool = False,
    A_log: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    use_beta_sigmoid_in_kernel: bool = False,
    allow_neg_eigval: bool = False,
    state_v_first: bool = False,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The gated delta rule, token by token (decoding, short prompts); differentiable. The positional order is the
    peer library's (its fifth and sixth arguments are per-channel gates `gk`, `gv`, which fla does not have yet and
    refuses): pass beta by keyword, `fused_recurrent_gated_delta_rule(q, k, v, g, beta=beta)`.

    Args:
        q, k: [B, T, H, K]; v: [B, T, HV, V] (HV a multiple of H: grouped values; V of any size, K <= 256). Each
            may be float32, float16 or bfloat16 on its own (as in the peer: e.g. float32 q/k with float16 v); the
            recurrence runs in float32, the output takes v's dtype, each gradient its input's dtype
        g: [B, T, HV] log decays (<= 0), or None (no gate: the plain delta rule)
        gk, gv: must be None (per-key / per-value gates are not implemented)
        beta: [B, T, HV] or [B, T, HV, V] writing strengths in (0, 1); None = 1
        scale: defaults to K ** -0.5
        initial_state: [N, HV, K, V] float32 (N = B, or the number of sequences under cu_seqlens)
        use_qk_l2norm_in_kernel: L2-normalize q and k first (differentiated through)
        use_gate_in_kernel: g is the raw gate: use -exp(A_log) * softplus(g + dt_bias) (see `gate.py`)
        use_beta_sigmoid_in_kernel: beta is the raw projection: use sigmoid(beta) (times 2 with allow_neg_eigval)
        state_v_first: initial and final states are [N, HV, V, K] (see fla.ops.utils.checks.normalize_inputs)
        cu_seqlens: [N + 1] int, packed sequences, B must be 1
    Returns:
        o: [B, T, HV, V] in v's dtype; final_state: [N, HV, K, V] float32 or None
    """
    if gk is not None or gv is not None:
        raise ValueError("gk / gv (per-key or per-value-channel gates) are not supported by fla's "
                         "fused_recurrent_gated_delta_rule: pass a scalar gate per head and token as g [B, T, HV]; if "
                         "you meant beta, pass it by keyword (beta=...)")
    if beta is None:
        beta = torch.ones(v.shape[:3], dtype=v.dtype, device=v.device) if isinstance(v, torch.Tensor) else beta
    g, beta = gated_delta_rule_inputs(g, beta, use_gate_in_kernel, A_log, dt_bias, use_beta_sigmoid_in_kernel,
                                      allow_neg_eigval)
    check_delta_rule_inputs(q, k, v, g, beta, scale, initial_state, cu_seqlens, per_channel_beta=True,
                            mixed_dtypes=True)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return _fused_recurrent(q.contiguous(), k.contiguous(), v.contiguous(), g.contiguous() if g is not None else None,
                            beta.contiguous(), scale,
                            initial_state.contiguous() if initial_state is not None else None, output_final_state,
                            use_qk_l2norm_in_kernel, cu_seqlens)


fused_recurrent_gdn = fused_recurrent_gated_delta_rule  # the peer library's short name
