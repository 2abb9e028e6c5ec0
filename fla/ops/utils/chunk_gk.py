"""Intra-chunk blocks for a log forget gate per key channel (gk), shared by the families that have one (GLA first).

Within a chunk, with G the chunk-local cumsum of the gate (float32, <= 0 and non-increasing along time), h the state
ENTERING the chunk and dh the gradient of the state LEAVING it (see `chunk_h.py`), the output is
    o_t = scale * ((q_t * exp(G_t)) h + sum_{s <= t} A_ts v_s),   A_ts = sum_k q_tk k_sk exp(G_tk - G_sk).
Backward (derived in `chunk_gk_bwd_dqkg`'s docstring):
    dA_ts = do_t . v_s (s <= t)
    dv_s  = scale * sum_{t >= s} A_ts do_t + (k_s * exp(G_L - G_s)) dh
    dq_t  = scale * exp(G_t) * (do_t h^T) + scale * sum_{s <= t} dA_ts k_s exp(G_t - G_s)
    dk_s  = scale * sum_{t >= s} dA_ts q_t exp(G_t - G_s) + exp(G_L - G_s) * (v_s dh^T)
where L is the chunk's last (valid) row.

Numerical stability. G over a 64-token chunk can reach -100s, so exp(G_t) and exp(-G_s) must never be formed
separately over a whole chunk (exp(-G_s) overflows float32 beyond ~88). The chunk is cut into sub-chunks of BC = 16
rows. For a pair of sub-chunks i > j, a reference row n between them (the first row of i, or the last row of j)
splits exp(G_t - G_s) = exp(G_t - G_n) * exp(G_n - G_s), and both factors are <= 1 because G is non-increasing and
s <= n <= t: so the block is one tl.dot of two bounded operands (a factor may underflow to 0, and then the true product
is below float32's range too). On the diagonal sub-chunk no such row exists, so the block is built element-wise as a
[BC, BC, BK] tensor of exp(G_t - G_s), with the t < s half set to -inf BEFORE the exp (so an overflowing entry never
reaches a product). The inter-chunk factors exp(G_t) and exp(G_L - G_s) are <= 1 on their own.

Kernels (each launcher below has a chunked PyTorch twin with the same signature):
    forward   chunk_gk_fwd_o: one program per (V block, 16-row sub-chunk): inter part, diagonal and earlier
              sub-chunks of A recomputed in registers (A is never stored).
    backward  chunk_gk_bwd_dv: per (V block, sub-chunk), A recomputed likewise;
              chunk_gk_bwd_dqkg: dA once per chunk (stored [B, T, H, BT] float32), then the intra-chunk dq/dk per
              (K block, sub-chunk), then per (K block, chunk) the inter parts, dg and its reverse cumsum.

Layouts: q, k, g [B, T, H, K]; v, do [B, T, H, V]; h, dh [B, NT, H, K, V] (under cu_seqlens B == 1 and the chunks of
all sequences are numbered in order, as `prepare_chunk_indices` lists them).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fla.ops.utils.dispatch import autotune, dispatch
from fla.ops.utils.index import chunk_offsets_host, prepare_chunk_indices, sequence_bounds, sequence_spans

BC = 16  # rows per sub-chunk (the smallest tl.dot block)

_CONFIGS = [triton.Config({}, num_warps=w, num_stages=s) for w in (4, 2, 8) for s in (2, 3)]
# chunk_gk_bwd_dqkg_inter keeps dq, dk and the [BT, BK] gate tiles live across its V loop: at 4 warps it reached 255
# registers with 120 B of spills (sm_90, K = V = 128, bf16), so it starts at 8 warps.
_INTER_CONFIGS = [triton.Config({}, num_warps=w, num_stages=s) for w in (8, 4) for s in (2, 3)]


def _block(n: int, cap: int = 64) -> int:
    """Padded block width for a feature dim: a power of two, >= 16 (tl.dot), <= cap (registers)."""
    return min(cap, max(16, triton.next_power_of_2(n)))


def _precision(x: torch.Tensor) -> str:
    # float32 inputs get true float32 products on the GPU (tf32 would cost ~1e-3 relative error).
    return "ieee" if x.dtype == torch.float32 else "tf32"


def _chunks(cu_seqlens, T, chunk_size):
    """(chunk_indices or None, number of chunks per batch row (grid axis 0, the only one allowed past 65535))."""
    if cu_seqlens is None:
        return None, triton.cdiv(T, chunk_size)
    chunk_indices = prepare_chunk_indices(cu_seqlens, chunk_size)
    return chunk_indices, len(chunk_indices)


# ------------------------------------------------------------------------------------------------------------------
# Triton kernels. Every program first maps its chunk to (bos, T, i_t, i_tg): the sequence's first token, its length,
# the chunk index within the sequence, and the global chunk index into h / dh.
# ------------------------------------------------------------------------------------------------------------------

@triton.heuristics({"IS_VARLEN": lambda args: args["cu_seqlens"] is not None})
@autotune(_CONFIGS, key=["H", "K", "V", "BT", "BK", "BV"])
@triton.jit
def chunk_gk_fwd_o_kernel(
    q, k, v, g, h, o, cu_seqlens, chunk_indices, scale, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    # grid: (chunks * sub-chunks, V blocks, B * H); one program writes BC rows x BV columns of o.
    i_tc, i_v, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    NC: tl.constexpr = BT // BC
    i_t, i_i = i_tc // NC, i_tc % NC
    if IS_VARLEN:
        i_tg = i_t.to(tl.int64)
        i_n, i_t = tl.load(chunk_indices + i_t * 2).to(tl.int32), tl.load(chunk_indices + i_t * 2 + 1).to(tl.int32)
    else:
        i_tg = (i_b * tl.cdiv(T, BT) + i_t).to(tl.int64)
        i_n = i_b
    bos, T = sequence_bounds(i_n, cu_seqlens, T, IS_VARLEN)
    s0 = i_t * BT + i_i * BC  # first row of this sub-chunk, sequence-local
    if s0 >= T:
        return
    HK, HV = H * K, H * V
    o_c = tl.arange(0, BC)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V
    rows = s0 + o_c
    m_r = rows < T
    p_h = h + (i_tg * H + i_h) * K * V

    # inter-chunk part and the diagonal sub-chunk, both over K blocks
    b_o = tl.zeros([BC, BV], dtype=tl.float32)
    b_A = tl.zeros([BC, BC], dtype=tl.float32)
    m_tri = (o_c[:, None] >= o_c[None, :]) & m_r[:, None]  # t >= s, row t valid
    for i_k in range(tl.cdiv(K, BK)):
        o_kk = i_k * BK + o_k
        m_k = o_kk < K
        m_rk = m_r[:, None] & m_k[None, :]
        offs = (bos + rows)[:, None] * HK + i_h * K + o_kk[None, :]
        b_q = tl.load(q + offs, mask=m_rk, other=0.).to(tl.float32)
        b_k = tl.load(k + offs, mask=m_rk, other=0.).to(tl.float32)
        b_g = tl.load(g + offs, mask=m_rk, other=0.).to(tl.float32)
        b_h = tl.load(p_h + o_kk[:, None] * V + o_v[None, :], mask=m_k[:, None] & m_v[None, :], other=0.)
        b_o += tl.dot((b_q * tl.exp(b_g)).to(b_h.dtype), b_h, input_precision=PREC)
        # diagonal block as [t, s, k]: -inf above the diagonal before the exp, so nothing there can overflow
        b_d = tl.exp(tl.where(m_tri[:, :, None], b_g[:, None, :] - b_g[None, :, :], float("-inf")))
        b_A += tl.sum(b_q[:, None, :] * b_k[None, :, :] * b_d, axis=2)
    offs_v = (bos + rows)[:, None] * HV + i_h * V + o_v[None, :]
    m_rv = m_r[:, None] & m_v[None, :]
    b_v = tl.load(v + offs_v, mask=m_rv, other=0.)
    b_o += tl.dot(b_A.to(b_v.dtype), b_v, input_precision=PREC)

    # earlier sub-chunks j < i, split at the reference row n = s0
    for j in range(0, i_i):
        rows_j = i_t * BT + j * BC + o_c  # all valid: they precede row s0 < T
        b_A = tl.zeros([BC, BC], dtype=tl.float32)
        for i_k in range(tl.cdiv(K, BK)):
            o_kk = i_k * BK + o_k
            m_k = o_kk < K
            m_rk = m_r[:, None] & m_k[None, :]
            offs = (bos + rows)[:, None] * HK + i_h * K + o_kk[None, :]
            b_q = tl.load(q + offs, mask=m_rk, other=0.).to(tl.float32)
            b_g = tl.load(g + offs, mask=m_rk, other=0.).to(tl.float32)
            b_gn = tl.load(g + (bos + s0) * HK + i_h * K + o_kk, mask=m_k, other=0.).to(tl.float32)
            offs_j = (bos + rows_j)[:, None] * HK + i_h * K + o_kk[None, :]
            b_kj = tl.load(k + offs_j, mask=m_k[None, :], other=0.).to(tl.float32)
            b_gj = tl.load(g + offs_j, mask=m_k[None, :], other=0.).to(tl.float32)
            # masked rows get -inf inside the exp (not a where around it): nothing overflows, no 0 * inf
            b_qn = b_q * tl.exp(tl.where(m_rk, b_g - b_gn[None, :], float("-inf")))
            b_kn = b_kj * tl.exp(b_gn[None, :] - b_gj)
            b_A += tl.dot(b_qn.to(k.dtype.element_ty), tl.trans(b_kn.to(k.dtype.element_ty)), input_precision=PREC)
        b_vj = tl.load(v + (bos + rows_j)[:, None] * HV + i_h * V + o_v[None, :], mask=m_v[None, :], other=0.)
        b_o += tl.dot(b_A.to(b_vj.dtype), b_vj, input_precision=PREC)
    tl.store(o + offs_v, (b_o * scale).to(o.dtype.element_ty), mask=m_rv)


@triton.heuristics({
    "HAS_DH": lambda args: args["dh"] is not None,
    "IS_VARLEN": lambda args: args["cu_seqlens"] is not None,
})
@autotune(_CONFIGS, key=["H", "K", "V", "BT", "BK", "BV", "HAS_DH"])
@triton.jit
def chunk_gk_bwd_dv_kernel(
    q, k, g, do, dh, dv, cu_seqlens, chunk_indices, scale, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr, HAS_DH: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    # grid: (chunks * sub-chunks, V blocks, B * H); rows of sub-chunk i play the key role s:
    # dv_i = (k_i * exp(G_L - G_i)) dh + scale * sum_{j >= i} A_ji^T do_j
    i_tc, i_v, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    NC: tl.constexpr = BT // BC
    i_t, i_i = i_tc // NC, i_tc % NC
    if IS_VARLEN:
        i_tg = i_t.to(tl.int64)
        i_n, i_t = tl.load(chunk_indices + i_t * 2).to(tl.int32), tl.load(chunk_indices + i_t * 2 + 1).to(tl.int32)
    else:
        i_tg = (i_b * tl.cdiv(T, BT) + i_t).to(tl.int64)
        i_n = i_b
    bos, T = sequence_bounds(i_n, cu_seqlens, T, IS_VARLEN)
    s0 = i_t * BT + i_i * BC
    if s0 >= T:
        return
    HK, HV = H * K, H * V
    last = tl.minimum(i_t * BT + BT, T) - 1  # the chunk's last valid row
    e_i = tl.minimum(s0 + BC, T) - 1  # this sub-chunk's last valid row (reference for later sub-chunks)
    n_sub = tl.cdiv(tl.minimum(BT, T - i_t * BT), BC)  # sub-chunks holding valid rows
    o_c = tl.arange(0, BC)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V
    rows = s0 + o_c
    m_r = rows < T

    b_dv = tl.zeros([BC, BV], dtype=tl.float32)
    b_At = tl.zeros([BC, BC], dtype=tl.float32)  # diagonal block, transposed: b_At[s, t] = A_ts
    m_tri = (o_c[:, None] <= o_c[None, :]) & m_r[None, :]  # s <= t, row t valid
    for i_k in range(tl.cdiv(K, BK)):
        o_kk = i_k * BK + o_k
        m_k = o_kk < K
        m_rk = m_r[:, None] & m_k[None, :]
        offs = (bos + rows)[:, None] * HK + i_h * K + o_kk[None, :]
        b_q = tl.load(q + offs, mask=m_rk, other=0.).to(tl.float32)
        b_k = tl.load(k + offs, mask=m_rk, other=0.).to(tl.float32)
        b_g = tl.load(g + offs, mask=m_rk, other=0.).to(tl.float32)
        if HAS_DH:  # without dh (the delta rule's state pass adds that term itself): the intra part only
            b_gl = tl.load(g + (bos + last) * HK + i_h * K + o_kk, mask=m_k, other=0.).to(tl.float32)
            b_dh = tl.load(dh + (i_tg * H + i_h) * K * V + o_kk[:, None] * V + o_v[None, :],
                           mask=m_k[:, None] & m_v[None, :], other=0.)
            b_kl = b_k * tl.exp(tl.where(m_rk, b_gl[None, :] - b_g, float("-inf")))
            b_dv += tl.dot(b_kl.to(b_dh.dtype), b_dh, input_precision=PREC)
        # [s, t, k], -inf where s > t before the exp
        b_d = tl.exp(tl.where(m_tri[:, :, None], b_g[None, :, :] - b_g[:, None, :], float("-inf")))
        b_At += tl.sum(b_k[:, None, :] * b_q[None, :, :] * b_d, axis=2)
    offs_v = (bos + rows)[:, None] * HV + i_h * V + o_v[None, :]
    m_rv = m_r[:, None] & m_v[None, :]
    b_do = tl.load(do + offs_v, mask=m_rv, other=0.)
    b_dA = tl.dot(b_At.to(b_do.dtype), b_do, input_precision=PREC)

    # later sub-chunks j > i, split at the reference row m = e_i (sub-chunk i is full whenever one exists)
    for j in range(i_i + 1, n_sub):
        rows_j = i_t * BT + j * BC + o_c
        m_rj = rows_j < T
        b_At = tl.zeros([BC, BC], dtype=tl.float32)
        for i_k in range(tl.cdiv(K, BK)):
            o_kk = i_k * BK + o_k
            m_k = o_kk < K
            offs = (bos + rows)[:, None] * HK + i_h * K + o_kk[None, :]
            b_k = tl.load(k + offs, mask=m_k[None, :], other=0.).to(tl.float32)
            b_g = tl.load(g + offs, mask=m_k[None, :], other=0.).to(tl.float32)
            b_gm = tl.load(g + (bos + e_i) * HK + i_h * K + o_kk, mask=m_k, other=0.).to(tl.float32)
            offs_j = (bos + rows_j)[:, None] * HK + i_h * K + o_kk[None, :]
            m_jk = m_rj[:, None] & m_k[None, :]
            b_qj = tl.load(q + offs_j, mask=m_jk, other=0.).to(tl.float32)
            b_gj = tl.load(g + offs_j, mask=m_jk, other=0.).to(tl.float32)
            b_km = b_k * tl.exp(b_gm[None, :] - b_g)
            b_qm = b_qj * tl.exp(tl.where(m_jk, b_gj - b_gm[None, :], float("-inf")))
            b_At += tl.dot(b_km.to(q.dtype.element_ty), tl.trans(b_qm.to(q.dtype.element_ty)), input_precision=PREC)
        m_jv = m_rj[:, None] & m_v[None, :]
        b_doj = tl.load(do + (bos + rows_j)[:, None] * HV + i_h * V + o_v[None, :], mask=m_jv, other=0.)
        b_dA += tl.dot(b_At.to(b_doj.dtype), b_doj, input_precision=PREC)
    b_dv += scale * b_dA
    tl.store(dv + offs_v, b_dv.to(dv.dtype.element_ty), mask=m_rv)


@triton.heuristics({"IS_VARLEN": lambda args: args["cu_seqlens"] is not None})
@autotune(_CONFIGS, key=["H", "V", "BT", "BV"])
@triton.jit
def chunk_gk_bwd_dA_kernel(
    v, do, dA, cu_seqlens, chunk_indices, scale, T,
    H: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr,
    IS_VARLEN: tl.constexpr,
):
    # grid: (chunks, B * H); dA [B, T, H, BT] float32: dA[t, s] = scale * do_t . v_s for s <= t in t's chunk (s is
    # chunk-local), 0 above the diagonal. Computed once here so the dq/dk kernel (split over K) does not redo it.
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    if IS_VARLEN:
        i_n, i_t = tl.load(chunk_indices + i_t * 2).to(tl.int32), tl.load(chunk_indices + i_t * 2 + 1).to(tl.int32)
    else:
        i_n = i_b
    bos, T = sequence_bounds(i_n, cu_seqlens, T, IS_VARLEN)
    o_s = tl.arange(0, BT)
    rows = i_t * BT + o_s
    m_r = rows < T
    b_dA = tl.zeros([BT, BT], dtype=tl.float32)
    for i_v in range(tl.cdiv(V, BV)):
        o_vv = i_v * BV + tl.arange(0, BV)
        m_rv = m_r[:, None] & (o_vv < V)[None, :]
        offs_v = (bos + rows)[:, None] * (H * V) + i_h * V + o_vv[None, :]
        b_do = tl.load(do + offs_v, mask=m_rv, other=0.)
        b_v = tl.load(v + offs_v, mask=m_rv, other=0.)
        b_dA += tl.dot(b_do, tl.trans(b_v.to(b_do.dtype)), input_precision=PREC)
    b_dA = tl.where(o_s[:, None] >= o_s[None, :], b_dA * scale, 0.)
    tl.store(dA + (bos + rows)[:, None] * (H * BT) + i_h * BT + o_s[None, :], b_dA, mask=m_r[:, None])


@triton.heuristics({
    "FUSE_KK": lambda args: args["dg"] is not None,
    "IS_VARLEN": lambda args: args["cu_seqlens"] is not None,
})
@autotune(_CONFIGS, key=["H", "K", "BT", "BK", "FUSE_KK"])
@triton.jit
def chunk_gk_bwd_dqk_intra_kernel(
    q, k, g, dA, dq, dk, dg, cu_seqlens, chunk_indices, T,
    H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr,
    PREC: tl.constexpr, FUSE_KK: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    # grid: (chunks * sub-chunks, K blocks, B * H); the intra-chunk parts of dq and dk (float32) for BC rows, from the
    # scaled dA: dq_i = sum_{j <= i} dA_ij (gated k_j),  dk_i = sum_{j >= i} dA_ji^T (gated q_j)
    # FUSE_KK (q is k, a K K^T product): dk += dq_i + dk_i and dg += k (dq_i - dk_i) in place, on the caller's
    # other parts of the two gradients (dq unused)
    i_tc, i_k, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    NC: tl.constexpr = BT // BC
    i_t, i_i = i_tc // NC, i_tc % NC
    if IS_VARLEN:
        i_n, i_t = tl.load(chunk_indices + i_t * 2).to(tl.int32), tl.load(chunk_indices + i_t * 2 + 1).to(tl.int32)
    else:
        i_n = i_b
    bos, T = sequence_bounds(i_n, cu_seqlens, T, IS_VARLEN)
    s0 = i_t * BT + i_i * BC
    if s0 >= T:
        return
    HK = H * K
    e_i = tl.minimum(s0 + BC, T) - 1
    n_sub = tl.cdiv(tl.minimum(BT, T - i_t * BT), BC)
    o_c = tl.arange(0, BC)
    o_kk = i_k * BK + tl.arange(0, BK)
    m_k = o_kk < K
    rows = s0 + o_c
    m_r = rows < T
    m_rk = m_r[:, None] & m_k[None, :]
    offs = (bos + rows)[:, None] * HK + i_h * K + o_kk[None, :]
    p_dA = dA + i_h * BT  # row t of dA starts at (bos + t) * H * BT
    b_g = tl.load(g + offs, mask=m_rk, other=0.).to(tl.float32)
    b_gn = tl.load(g + (bos + s0) * HK + i_h * K + o_kk, mask=m_k, other=0.).to(tl.float32)
    b_gm = tl.load(g + (bos + e_i) * HK + i_h * K + o_kk, mask=m_k, other=0.).to(tl.float32)

    # dq from earlier sub-chunks j < i, reference row n = s0
    b_dq = tl.zeros([BC, BK], dtype=tl.float32)
    for j in range(0, i_i):
        rows_j = i_t * BT + j * BC + o_c
        b_dA = tl.load(p_dA + (bos + rows)[:, None] * (H * BT) + (j * BC + o_c)[None, :], mask=m_r[:, None], other=0.)
        offs_j = (bos + rows_j)[:, None] * HK + i_h * K + o_kk[None, :]
        b_kj = tl.load(k + offs_j, mask=m_k[None, :], other=0.).to(tl.float32)
        b_gj = tl.load(g + offs_j, mask=m_k[None, :], other=0.).to(tl.float32)
        b_dq += tl.dot(b_dA, b_kj * tl.exp(b_gn[None, :] - b_gj), input_precision=PREC)
    b_dq *= tl.exp(tl.where(m_rk, b_g - b_gn[None, :], float("-inf")))

    # dk from later sub-chunks j > i, reference row m = e_i
    b_dk = tl.zeros([BC, BK], dtype=tl.float32)
    for j in range(i_i + 1, n_sub):
        rows_j = i_t * BT + j * BC + o_c
        m_rj = rows_j < T
        # b_dAt[s, t] = dA[t, s] for s in sub-chunk i, t in sub-chunk j
        b_dAt = tl.load(p_dA + (bos + rows_j)[None, :] * (H * BT) + (i_i * BC + o_c)[:, None], mask=m_rj[None, :],
                        other=0.)
        offs_j = (bos + rows_j)[:, None] * HK + i_h * K + o_kk[None, :]
        m_jk = m_rj[:, None] & m_k[None, :]
        b_qj = tl.load(q + offs_j, mask=m_jk, other=0.).to(tl.float32)
        b_gj = tl.load(g + offs_j, mask=m_jk, other=0.).to(tl.float32)
        b_qm = b_qj * tl.exp(tl.where(m_jk, b_gj - b_gm[None, :], float("-inf")))
        b_dk += tl.dot(b_dAt, b_qm, input_precision=PREC)
    b_dk *= tl.exp(tl.where(m_rk, b_gm[None, :] - b_g, float("-inf")))

    # the diagonal sub-chunk, element-wise (dA is already 0 above its diagonal)
    b_dA = tl.load(p_dA + (bos + rows)[:, None] * (H * BT) + (i_i * BC + o_c)[None, :], mask=m_r[:, None], other=0.)
    b_q = tl.load(q + offs, mask=m_rk, other=0.).to(tl.float32)
    b_k = tl.load(k + offs, mask=m_rk, other=0.).to(tl.float32)
    # [t, s, k] = dA_ts exp(G_t - G_s) for s <= t (-inf before the exp elsewhere); dq sums over s, dk over t
    m_tri = (o_c[:, None] >= o_c[None, :]) & m_r[:, None]
    b_d = b_dA[:, :, None] * tl.exp(tl.where(m_tri[:, :, None], b_g[:, None, :] - b_g[None, :, :], float("-inf")))
    b_dq += tl.sum(b_d * b_k[None, :, :], axis=1)
    b_dk += tl.sum(b_d * b_q[:, None, :], axis=0)
    if FUSE_KK:
        b_dg = tl.load(dg + offs, mask=m_rk, other=0.) + b_k * (b_dq - b_dk)
        tl.store(dk + offs, tl.load(dk + offs, mask=m_rk, other=0.) + b_dq + b_dk, mask=m_rk)
        tl.store(dg + offs, b_dg, mask=m_rk)
    else:
        tl.store(dq + offs, b_dq, mask=m_rk)
        tl.store(dk + offs, b_dk, mask=m_rk)


@triton.heuristics({
    "HAS_DW": lambda args: args["dw"] is not None,
    "IS_VARLEN": lambda args: args["cu_seqlens"] is not None,
})
@autotune(_INTER_CONFIGS, key=["H", "K", "V", "BT", "BK", "BV", "HAS_DW"])
@triton.jit
def chunk_gk_bwd_dqkg_inter_kernel(
    q, k, v, g, h, do, dh, dq_intra, dk_intra, dq, dk, dg, dv, dw, cu_seqlens, chunk_indices, scale, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr, HAS_DW: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    # grid: (chunks, K blocks, B * H); adds the inter-chunk parts to dq, dk and forms dg for a whole chunk.
    # HAS_DW (delta rule: v = u - w h was fed to the state): also dw = -(dv h^T), dv the full gradient of v.
    i_t, i_k, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    if IS_VARLEN:
        i_tg = i_t.to(tl.int64)
        i_n, i_t = tl.load(chunk_indices + i_t * 2).to(tl.int32), tl.load(chunk_indices + i_t * 2 + 1).to(tl.int32)
    else:
        i_tg = (i_b * tl.cdiv(T, BT) + i_t).to(tl.int64)
        i_n = i_b
    bos, T = sequence_bounds(i_n, cu_seqlens, T, IS_VARLEN)
    HK, HV = H * K, H * V
    last = tl.minimum(i_t * BT + BT, T) - 1
    rows = i_t * BT + tl.arange(0, BT)
    m_r = rows < T
    o_kk = i_k * BK + tl.arange(0, BK)
    m_k = o_kk < K
    m_rk = m_r[:, None] & m_k[None, :]
    o_v = tl.arange(0, BV)
    p_hk = (i_tg * H + i_h) * K * V + o_kk[:, None] * V

    b_dq = tl.zeros([BT, BK], dtype=tl.float32)  # do h^T
    b_dk = tl.zeros([BT, BK], dtype=tl.float32)  # v dh^T
    b_hdh = tl.zeros([BK], dtype=tl.float32)     # sum_v h * dh
    b_dw = tl.zeros([BT, BK], dtype=tl.float32)  # dv h^T (HAS_DW)
    for i_v in range(tl.cdiv(V, BV)):
        o_vv = i_v * BV + o_v
        m_v = o_vv < V
        m_rv = m_r[:, None] & m_v[None, :]
        offs_v = (bos + rows)[:, None] * HV + i_h * V + o_vv[None, :]
        b_do = tl.load(do + offs_v, mask=m_rv, other=0.)
        b_v = tl.load(v + offs_v, mask=m_rv, other=0.)
        m_kv = m_k[:, None] & m_v[None, :]
        b_h = tl.load(h + p_hk + o_vv[None, :], mask=m_kv, other=0.)
        b_dh = tl.load(dh + p_hk + o_vv[None, :], mask=m_kv, other=0.)
        b_dq += tl.dot(b_do.to(b_h.dtype), tl.trans(b_h), input_precision=PREC)
        b_dk += tl.dot(b_v.to(b_dh.dtype), tl.trans(b_dh), input_precision=PREC)
        b_hdh += tl.sum(b_h.to(tl.float32) * b_dh.to(tl.float32), axis=1)
        if HAS_DW:
            b_dvn = tl.load(dv + offs_v, mask=m_rv, other=0.)
            b_dw += tl.dot(b_dvn.to(b_h.dtype), tl.trans(b_h), input_precision=PREC)

    offs = (bos + rows)[:, None] * HK + i_h * K + o_kk[None, :]
    b_q = tl.load(q + offs, mask=m_rk, other=0.).to(tl.float32)
    b_k = tl.load(k + offs, mask=m_rk, other=0.).to(tl.float32)
    b_g = tl.load(g + offs, mask=m_rk, other=0.).to(tl.float32)
    b_gl = tl.load(g + (bos + last) * HK + i_h * K + o_kk, mask=m_k, other=0.).to(tl.float32)
    b_dq = tl.load(dq_intra + offs, mask=m_rk, other=0.) + scale * tl.exp(tl.where(m_rk, b_g, float("-inf"))) * b_dq
    b_dk_inter = tl.exp(tl.where(m_rk, b_gl[None, :] - b_g, float("-inf"))) * b_dk
    b_dk = tl.load(dk_intra + offs, mask=m_rk, other=0.) + b_dk_inter
    # dL/dG_t = q_t dq_t - k_t dk_t, plus at the last row the two paths into the state leaving the chunk:
    # exp(G_L) h (carried state) and sum_s k_s exp(G_L - G_s) v_s (new keys).
    b_dG = b_q * b_dq - b_k * b_dk
    b_last = tl.exp(b_gl) * b_hdh + tl.sum(b_k * b_dk_inter, axis=0)
    # G is a cumsum of g within the chunk, so dg_s = sum_{t >= s} dG_t (a reverse cumsum, done here in registers)
    b_dg = tl.sum(b_dG, axis=0)[None, :] - tl.cumsum(b_dG, axis=0) + b_dG + b_last[None, :]
    tl.store(dq + offs, b_dq.to(dq.dtype.element_ty), mask=m_rk)
    tl.store(dk + offs, b_dk.to(dk.dtype.element_ty), mask=m_rk)
    tl.store(dg + offs, b_dg.to(dg.dtype.element_ty), mask=m_rk)
    if HAS_DW:
        tl.store(dw + offs, (-b_dw).to(dw.dtype.element_ty), mask=m_rk)


# ------------------------------------------------------------------------------------------------------------------
# Launchers (Triton) and their PyTorch chunked twins (same signature, same result).
# ------------------------------------------------------------------------------------------------------------------

def _fwd_o_triton(q, k, v, g, h, scale, cu_seqlens=None, chunk_size=64):
    B, T, H, K = q.shape
    V = v.shape[-1]
    o = torch.empty_like(v)
    chunk_indices, NT = _chunks(cu_seqlens, T, chunk_size)
    if NT == 0:
        return o
    BK, BV = _block(K, 32), _block(V)
    grid = (NT * (chunk_size // BC), triton.cdiv(V, BV), B * H)
    chunk_gk_fwd_o_kernel[grid](q, k, v, g, h, o, cu_seqlens, chunk_indices, scale, T, H=H, K=K, V=V,
                                BT=chunk_size, BC=BC, BK=BK, BV=BV, PREC=_precision(q))
    return o


def _bwd_dv_triton(q, k, g, do, dh, scale, cu_seqlens=None, chunk_size=64):
    B, T, H, K = q.shape
    V = do.shape[-1]
    dv = torch.empty_like(do)
    chunk_indices, NT = _chunks(cu_seqlens, T, chunk_size)
    if NT == 0:
        return dv
    BK, BV = _block(K, 32), _block(V)
    grid = (NT * (chunk_size // BC), triton.cdiv(V, BV), B * H)
    chunk_gk_bwd_dv_kernel[grid](q, k, g, do, dh, dv, cu_seqlens, chunk_indices, scale, T, H=H, K=K, V=V,
                                 BT=chunk_size, BC=BC, BK=BK, BV=BV, PREC=_precision(q))
    return dv


def _bwd_dqkg_triton(q, k, v, g, h, do, dh, scale, cu_seqlens=None, chunk_size=64, g_dtype=None, dv=None):
    B, T, H, K = q.shape
    V = v.shape[-1]
    dq, dk = torch.empty_like(q), torch.empty_like(k)
    dg = torch.empty_like(g, dtype=g_dtype or g.dtype)
    dw = torch.empty_like(k) if dv is not None else None
    chunk_indices, NT = _chunks(cu_seqlens, T, chunk_size)
    if NT == 0:
        return (dq, dk, dg) if dv is None else (dq, dk, dg, dw)
    BK, BV = _block(K, 32), _block(V)
    dA = q.new_empty(B, T, H, chunk_size, dtype=torch.float32)
    chunk_gk_bwd_dA_kernel[(NT, B * H)](v, do, dA, cu_seqlens, chunk_indices, scale, T, H=H, V=V, BT=chunk_size,
                                        BV=BV, PREC=_precision(q))
    dq_intra = torch.empty_like(q, dtype=torch.float32)
    dk_intra = torch.empty_like(k, dtype=torch.float32)
    # the intra kernel holds [BC, BC, BK] blocks on the diagonal: a narrower K block keeps them in registers
    chunk_gk_bwd_dqk_intra_kernel[(NT * (chunk_size // BC), triton.cdiv(K, BK), B * H)](
        q, k, g, dA, dq_intra, dk_intra, None, cu_seqlens, chunk_indices, T, H=H, K=K, BT=chunk_size, BC=BC, BK=BK,
        PREC=_precision(q))
    # float32 with dw: four [BT, BK] float32 tiles next to non-tensor-core dots spilled 2.8 KB at BK = 64 (sm_90)
    BK = _block(K, 32 if dv is not None and q.dtype == torch.float32 else 64)
    chunk_gk_bwd_dqkg_inter_kernel[(NT, triton.cdiv(K, BK), B * H)](
        q, k, v, g, h, do, dh, dq_intra, dk_intra, dq, dk, dg, dv, dw, cu_seqlens, chunk_indices, scale, T, H=H, K=K,
        V=V, BT=chunk_size, BK=BK, BV=BV, PREC=_precision(q))
    return (dq, dk, dg) if dv is None else (dq, dk, dg, dw)


def _dqk_intra_triton(q, k, g, dA, cu_seqlens=None, chunk_size=64, dk_add=None, dg_add=None):
    B, T, H, K = q.shape
    fuse = dk_add is not None
    dq = None if fuse else torch.empty_like(q, dtype=torch.float32)
    dk = dk_add if fuse else torch.empty_like(k, dtype=torch.float32)
    chunk_indices, NT = _chunks(cu_seqlens, T, chunk_size)
    if NT:
        BK = _block(K, 32)
        chunk_gk_bwd_dqk_intra_kernel[(NT * (chunk_size // BC), triton.cdiv(K, BK), B * H)](
            q, k, g, dA, dq, dk, dg_add, cu_seqlens, chunk_indices, T, H=H, K=K, BT=chunk_size, BC=BC, BK=BK,
            PREC=_precision(q))
    return (dk, dg_add) if fuse else (dq, dk)


def _dqk_intra_torch(q, k, g, dA, cu_seqlens=None, chunk_size=64, dk_add=None, dg_add=None):
    dq = torch.empty_like(q, dtype=torch.float32)
    dk = torch.empty_like(k, dtype=torch.float32)
    for b, start, end, _ in _torch_chunks(q, cu_seqlens, chunk_size):
        qc, kc, gc = (x[b, start:end].float() for x in (q, k, g))
        D = _decay(gc)
        dAc = dA[b, start:end, :, :end - start].float()  # [t, H, s]
        dq[b, start:end] = torch.einsum("ths,shk,tshk->thk", dAc, kc, D)
        dk[b, start:end] = torch.einsum("ths,thk,tshk->shk", dAc, qc, D)
    if dk_add is not None:
        dg_add += k.float() * (dq - dk)
        dk_add += dq + dk
        return dk_add, dg_add
    return dq, dk


def _torch_chunks(x, cu_seqlens, chunk_size):
    """Yield (b, start, end, global chunk index) for every chunk, in the order of h / dh."""
    offsets = chunk_offsets_host(cu_seqlens, chunk_size) if cu_seqlens is not None else None
    for i, (b, bos, eos) in enumerate(sequence_spans(cu_seqlens, x.shape[0], x.shape[1])):
        first = offsets[i] if offsets is not None else 0
        for c, start in enumerate(range(bos, eos, chunk_size)):
            yield b, start, min(start + chunk_size, eos), first + c


def _decay(gc):
    """[L, H, K] chunk-local cumsum -> [L, L, H, K] exp(G_t - G_s) for s <= t, 0 above the diagonal (masked before
    the exp, so the overflowing t < s entries never exist)."""
    L = gc.shape[0]
    causal = torch.ones(L, L, dtype=torch.bool, device=gc.device).tril()
    diff = gc[:, None] - gc[None, :]
    return torch.where(causal[:, :, None, None], diff, diff.new_tensor(float("-inf"))).exp()


def _fwd_o_torch(q, k, v, g, h, scale, cu_seqlens=None, chunk_size=64):
    o = torch.empty_like(v)
    for b, start, end, c in _torch_chunks(q, cu_seqlens, chunk_size):
        qc, kc, vc, gc = (x[b, start:end].float() for x in (q, k, v, g))
        A = torch.einsum("thk,shk,tshk->hts", qc, kc, _decay(gc))
        inter = torch.einsum("thk,hkv->thv", qc * gc.exp(), h[b, c].float())
        o[b, start:end] = (scale * (inter + torch.einsum("hts,shv->thv", A, vc))).to(o.dtype)
    return o


def _bwd_dv_torch(q, k, g, do, dh, scale, cu_seqlens=None, chunk_size=64):
    dv = torch.empty_like(do)
    for b, start, end, c in _torch_chunks(q, cu_seqlens, chunk_size):
        qc, kc, gc, doc = (x[b, start:end].float() for x in (q, k, g, do))
        A = torch.einsum("thk,shk,tshk->hts", qc, kc, _decay(gc))
        out = scale * torch.einsum("hts,thv->shv", A, doc)
        if dh is not None:
            out = out + torch.einsum("shk,hkv->shv", kc * (gc[-1] - gc).exp(), dh[b, c].float())
        dv[b, start:end] = out.to(dv.dtype)
    return dv


def _bwd_dqkg_torch(q, k, v, g, h, do, dh, scale, cu_seqlens=None, chunk_size=64, g_dtype=None, dv=None):
    dq, dk = torch.empty_like(q), torch.empty_like(k)
    dg = torch.empty_like(g, dtype=g_dtype or g.dtype)
    dw = torch.empty_like(k) if dv is not None else None
    for b, start, end, c in _torch_chunks(q, cu_seqlens, chunk_size):
        qc, kc, vc, gc, doc = (x[b, start:end].float() for x in (q, k, v, g, do))
        hc, dhc = h[b, c].float(), dh[b, c].float()
        D = _decay(gc)
        dA = torch.einsum("thv,shv->hts", doc, vc)
        dqc = scale * (gc.exp() * torch.einsum("thv,hkv->thk", doc, hc) + torch.einsum("hts,shk,tshk->thk", dA, kc, D))
        dk_inter = (gc[-1] - gc).exp() * torch.einsum("shv,hkv->shk", vc, dhc)
        dkc = scale * torch.einsum("hts,thk,tshk->shk", dA, qc, D) + dk_inter
        last = gc[-1].exp() * (hc * dhc).sum(-1) + (kc * dk_inter).sum(0)
        dG = qc * dqc - kc * dkc
        dq[b, start:end], dk[b, start:end] = dqc.to(dq.dtype), dkc.to(dk.dtype)
        dg[b, start:end] = (dG.flip(0).cumsum(0).flip(0) + last).to(dg.dtype)
        if dv is not None:
            dw[b, start:end] = (-torch.einsum("thv,hkv->thk", dv[b, start:end].float(), hc)).to(dw.dtype)
    return (dq, dk, dg) if dv is None else (dq, dk, dg, dw)


_chunk_gk_fwd_o = dispatch(_fwd_o_triton, _fwd_o_torch)
_chunk_gk_bwd_dv = dispatch(_bwd_dv_triton, _bwd_dv_torch)
_chunk_gk_bwd_dqkg = dispatch(_bwd_dqkg_triton, _bwd_dqkg_torch)
_chunk_gk_bwd_dqk_intra = dispatch(_dqk_intra_triton, _dqk_intra_torch)


def chunk_gk_fwd_o(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    h: torch.Tensor,
    scale: float,
    cu_seqlens: torch.Tensor | None = None,
    chunk_size: int = 64,
) -> torch.Tensor:
    """Output of every chunk: its entering state read by gated queries plus the gated causal attention inside it.

    Args:
        q, k: [B, T, H, K]; v: [B, T, H, V]
        g: [B, T, H, K] chunk-local cumsum of the log gates (float32)
        h: [B, NT, H, K, V] states entering each chunk (`chunk_fwd_h`)
        chunk_size: a power of two >= 16, the one h was computed with
    Returns:
        o: [B, T, H, V] in v's dtype
    """
    return _chunk_gk_fwd_o(q, k, v, g, h, scale, cu_seqlens, chunk_size)


def chunk_gk_bwd_dv(
    q: torch.Tensor,
    k: torch.Tensor,
    g: torch.Tensor,
    do: torch.Tensor,
    dh: torch.Tensor | None,
    scale: float,
    cu_seqlens: torch.Tensor | None = None,
    chunk_size: int = 64,
) -> torch.Tensor:
    """dv [B, T, H, V] (do's dtype): intra-chunk A^T do plus (k exp(G_L - G)) dh, with dh from `chunk_bwd_dh`.
    dh = None gives the intra-chunk part alone (the delta rule's state pass, `delta_h.py`, adds the other)."""
    return _chunk_gk_bwd_dv(q, k, g, do, dh, scale, cu_seqlens, chunk_size)


def chunk_gk_bwd_dqkg(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    h: torch.Tensor,
    do: torch.Tensor,
    dh: torch.Tensor,
    scale: float,
    cu_seqlens: torch.Tensor | None = None,
    chunk_size: int = 64,
    g_dtype: torch.dtype | None = None,
    dv: torch.Tensor | None = None,
) -> tuple[torch.Tensor, ...]:
    """dq, dk and the gradient of the RAW gate (before the chunk-local cumsum), in one pass.

    With G the cumsum (treated as free per position), o depends on G_t through q_t exp(G_t) (inter and intra) and on
    G_s through exp(-G_s) next to k_s; the state leaving the chunk, exp(G_L) h + sum_s k_s exp(G_L - G_s) v_s,
    depends on G_L and on every G_s. So
        dL/dG_t = q_t dq_t - k_t dk_t + [t == L] * (exp(G_L) * sum_v h dh + sum_s k_s * dk_inter_s),
    with dk_inter_s = exp(G_L - G_s) (v_s dh^T) (the last term equals sum_v dh * (state leaving - exp(G_L) h)).
    Since G_t = sum_{s <= t} g_s within the chunk, dg_s = sum_{t >= s} dL/dG_t: a reverse chunk-local cumsum,
    done in the same kernel.

    Args:
        q, k: [B, T, H, K]; v, do: [B, T, H, V]; g: chunk-local cumsum (float32)
        h, dh: [B, NT, H, K, V] from `chunk_fwd_h` / `chunk_bwd_dh`
        g_dtype: dtype of dg (default g's)
        dv: the delta rule's branch: v are the values v_new = u - w h fed to the state, dv [B, T, H, V] their full
            gradient; then dw = -(dv h^T) [B, T, H, K] (k's dtype) is returned as a fourth output
    Returns:
        dq [B, T, H, K] (q's dtype), dk (k's dtype), dg [B, T, H, K] (g_dtype)[, dw]
    """
    return _chunk_gk_bwd_dqkg(q, k, v, g, h, do, dh, scale, cu_seqlens, chunk_size, g_dtype, dv)


def chunk_gk_bwd_dqk_intra(
    q: torch.Tensor,
    k: torch.Tensor,
    g: torch.Tensor,
    dA: torch.Tensor,
    cu_seqlens: torch.Tensor | None = None,
    chunk_size: int = 64,
    dk_add: torch.Tensor | None = None,
    dg_add: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of A_ts = sum_c q_tc k_sc exp(G_tc - G_sc) (s <= t within a chunk) given dA, computed stably
    (the same kernel as the intra part of `chunk_gk_bwd_dqkg`):
        dq_t = sum_{s <= t} dA_ts k_s exp(G_t - G_s),   dk_s = sum_{t >= s} dA_ts q_t exp(G_t - G_s).

    Args:
        q, k: [B, T, H, K]; g: [B, T, H, K] chunk-local cumsum (float32)
        dA: [B, T, H, BT] float32, row layout, ZERO above the diagonal (and on it when A is strictly lower)
        dk_add, dg_add: [B, T, H, K] float32, both or neither, only with q is k (a K K^T product): then they are
            updated in place, dk_add += dq + dk and dg_add += k (dq - dk) (the gradient w.r.t. G), and returned
    Returns:
        dq, dk: [B, T, H, K] float32; or (dk_add, dg_add)
    """
    if (dk_add is None) != (dg_add is None):
        raise ValueError("dk_add and dg_add go together (the fused K K^T form updates both)")
    return _chunk_gk_bwd_dqk_intra(q, k, g, dA.contiguous(), cu_seqlens, chunk_size, dk_add, dg_add)
