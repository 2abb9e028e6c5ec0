"""Intra-chunk blocks of the diagonal-plus-low-rank (DPLR) delta rule, forward and backward.

Recurrence per head, state S [K, V], row vectors q, k, a, b [K], v [V], log decay gk [K] (see
`fla/ops/generalized_delta_rule/naive.py`):  S_t = diag(exp(gk_t)) S_{t-1} + b_t^T (a_t S_{t-1}) + k_t^T v_t,
o_t = q_t S_t (q already scaled). Within a chunk, with Gi the chunk-local inclusive cumsum of gk, Ge = Gi - gk (the
exclusive one), h the state entering the chunk and L the chunk's last valid row, write u_t = a_t S_{t-1} (the
low-rank read). Then S_t is gated linear attention with two writes (k_s, v_s) and (b_s, u_s), and
    u   = A_ab u + A_ak v + (a exp(Ge)) h   =>   u = Tm (A_ak v + ag h) = Au v + w h,   Tm = (I - A_ab)^{-1}
    o   = qg h + A_qk v + A_qb u
    h'  = exp(Gi_L) h + kd^T v + bd^T u
with qg = q exp(Gi), ag = a exp(Ge), kd = k exp(Gi_L - Gi), bd = b exp(Gi_L - Gi), w = Tm ag, Au = Tm A_ak and
    A_qk[t,s] = sum_c q_tc k_sc exp(Gi_tc - Gi_sc)  (s <= t),    A_qb likewise with b,
    A_ak[t,s] = sum_c a_tc k_sc exp(Ge_tc - Gi_sc)  (s < t),     A_ab likewise with b.
This file builds those matrices and the gated rows (`dplr_fwd_intra`) and, in the backward, turns the gradients of
the matrices and gated rows into dq, dk, da, db and the gate gradient (`dplr_bwd_intra`). The state passes, the
output and dv are in `dplr_h.py`.

Backward. With dh' the gradient of the state leaving the chunk and z = Tm^T du (the adjoint of u's implicit
equation; `dplr_h.py` computes both), every dependence is bilinear:
    dA_qk = do v^T, dA_qb = do u^T (s <= t);  dA_ak = z v^T, dA_ab = z u^T (s < t)
    dqg = do h^T, dag = z h^T, dkd = v dh'^T, dbd = u dh'^T, d exp(Gi_L) = rowsum(h * dh')
(dA_ab = Tm^T dTm Tm^T collapses to z u^T: the w and Au parts of dTm cancel against d(ag)). A term
x_t y_s exp(Gx_t - Gy_s) gives dGx_t += x_t dx_t and dGy_s -= y_s dy_s, so the gate gradients are collected per
row and the raw gradient is dgk = revcumsum(dGi + dGe) - dGe (Ge = Gi - gk); the reverse cumsum is the shared
`chunk_local_cumsum` block.

Numerics: the intra-chunk decays are built element-wise as [BT, BT, BK] tensors with the non-causal half set to -inf
BEFORE the exp, so nothing overflows whatever the gates; every inter-chunk factor is <= 1 on its own. BT = 16.

Layouts: q, k, a, b, gated rows, w [B, T, H, K] float32 for the intermediates; Gi, gk float32 [B, T, H, K];
matrices float32 [B, T, H, BT] (token t's row of its chunk's matrix).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.standard import _sum_combine

from fla.ops.utils.dispatch import autotune, is_interpreter
from fla.ops.utils.index import prepare_chunk_indices

# Only Triton kernels here: the plain-CPU path of the DPLR family is one chunked PyTorch form at the op level
# (`fla/ops/generalized_delta_rule/chunk.py`), differentiated by autograd, so these launchers are not dispatched.
_CONFIGS = [triton.Config({}, num_warps=w, num_stages=s) for w in (4, 8, 2) for s in (2, 1)]
# the backward keeps eight accumulators and two [BT, BT, BK] decay tensors live: more warps, a narrower key block
_BWD_CONFIGS = [triton.Config({}, num_warps=w, num_stages=s) for w in (8, 4) for s in (2, 1)]
DPLR_BK = 32  # key block of the [BT, BT, BK] decay tensors (forward)
DPLR_BWD_BK = 32 if is_interpreter() else 16  # the interpreter has no registers to save, only programs to run


def _precision(x: torch.Tensor) -> str:
    # float32 inputs get true float32 products on the GPU (tf32 would cost ~1e-3 relative error).
    return "ieee" if x.dtype == torch.float32 else "tf32"


def _grid_chunks(cu_seqlens, T, chunk_size):
    if cu_seqlens is None:
        return None, triton.cdiv(T, chunk_size)
    chunk_indices = prepare_chunk_indices(cu_seqlens, chunk_size)
    return chunk_indices, len(chunk_indices)


@triton.jit
def _dplr_chunk(i_t, i_b, cu_seqlens, chunk_indices, T, BT: tl.constexpr, IS_VARLEN: tl.constexpr):
    """(first token row of the sequence, chunk index within it, flat chunk index, sequence length)."""
    if IS_VARLEN:
        i_tg = i_t
        i_n = tl.load(chunk_indices + i_t * 2).to(tl.int32)
        i_t = tl.load(chunk_indices + i_t * 2 + 1).to(tl.int32)
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        T = (tl.load(cu_seqlens + i_n + 1).to(tl.int64) - bos).to(tl.int32)
    else:
        i_tg = i_b * tl.cdiv(T, BT) + i_t
        bos = (i_b * T).to(tl.int64)
    return bos, i_t, i_tg.to(tl.int64), T


@triton.jit
def _decays(b_gi, b_ge, m_t, BT: tl.constexpr):
    """exp(Gi_t - Gi_s) on s <= t and exp(Ge_t - Gi_s) on s < t, [BT, BT, BK], zero elsewhere and on invalid rows."""
    o_i = tl.arange(0, BT)
    m_valid = m_t[:, None] & m_t[None, :]
    m_incl = (o_i[:, None] >= o_i[None, :]) & m_valid
    m_strict = (o_i[:, None] > o_i[None, :]) & m_valid
    b_ei = tl.exp(tl.where(m_incl[:, :, None], b_gi[:, None, :] - b_gi[None, :, :], float("-inf")))
    b_ee = tl.exp(tl.where(m_strict[:, :, None], b_ge[:, None, :] - b_gi[None, :, :], float("-inf")))
    return b_ei, b_ee


@triton.heuristics({"IS_VARLEN": lambda args: args["cu_seqlens"] is not None})
@autotune(_CONFIGS, key=["H", "K", "BT", "BK"])
@triton.jit
def dplr_fwd_intra_kernel(
    q, k, a, b, gi, gk, Aqk, Aqb, Aak, Tm, Au, w, qg, kd, bd, ag, cu_seqlens, chunk_indices,
    T, H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, LOG2_BT: tl.constexpr,
    PREC: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    # grid: (chunks, B * H); one program builds one chunk's four matrices, Tm, Au and the gated rows of one head.
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    bos, i_t, i_tg, T = _dplr_chunk(i_t, i_b, cu_seqlens, chunk_indices, T, BT, IS_VARLEN)
    row0 = bos + i_t * BT
    last = tl.minimum(i_t * BT + BT, T) - 1 - i_t * BT  # chunk-local row of the last valid token
    o_i = tl.arange(0, BT)
    m_t = i_t * BT + o_i < T
    # [B, T, H, K] rows of this chunk and head: row stride H * K
    off_k = (row0 + o_i)[:, None] * (H * K) + i_h * K
    off_a = (row0 + o_i)[:, None] * (H * BT) + i_h * BT + o_i[None, :]

    b_Aqk = tl.zeros([BT, BT], dtype=tl.float32)
    b_Aqb = tl.zeros([BT, BT], dtype=tl.float32)
    b_Aak = tl.zeros([BT, BT], dtype=tl.float32)
    b_Aab = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in range(tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_tk = m_t[:, None] & (o_k < K)[None, :]
        p = off_k + o_k[None, :]
        b_q = tl.load(q + p, mask=m_tk, other=0.).to(tl.float32)
        b_k = tl.load(k + p, mask=m_tk, other=0.).to(tl.float32)
        b_a = tl.load(a + p, mask=m_tk, other=0.).to(tl.float32)
        b_b = tl.load(b + p, mask=m_tk, other=0.).to(tl.float32)
        b_gi = tl.load(gi + p, mask=m_tk, other=0.)
        b_ge = b_gi - tl.load(gk + p, mask=m_tk, other=0.)
        b_ei, b_ee = _decays(b_gi, b_ge, m_t, BT)
        b_Aqk += tl.reduce(b_q[:, None, :] * b_k[None, :, :] * b_ei, 2, _sum_combine)
        b_Aqb += tl.reduce(b_q[:, None, :] * b_b[None, :, :] * b_ei, 2, _sum_combine)
        b_Aak += tl.reduce(b_a[:, None, :] * b_k[None, :, :] * b_ee, 2, _sum_combine)
        b_Aab += tl.reduce(b_a[:, None, :] * b_b[None, :, :] * b_ee, 2, _sum_combine)

    # Tm = (I - A_ab)^{-1}: A_ab is strictly lower triangular, so nilpotent (A^BT = 0), and
    # (I - A)^{-1} = (I + A)(I + A^2)(I + A^4)(I + A^8) for BT = 16: a few [BT, BT] dots instead of a row loop.
    b_eye = tl.where(o_i[:, None] == o_i[None, :], 1., 0.)
    b_P = b_Aab
    b_T = b_eye + b_Aab
    for _ in range(1, LOG2_BT):
        b_P = tl.dot(b_P, b_P, input_precision=PREC)
        b_T = b_T + tl.dot(b_T, b_P, input_precision=PREC)
    b_Au = tl.dot(b_T, b_Aak, input_precision=PREC)
    m_ts = m_t[:, None] & (o_i < BT)[None, :]
    tl.store(Aqk + off_a, b_Aqk, mask=m_ts)
    tl.store(Aqb + off_a, b_Aqb, mask=m_ts)
    tl.store(Aak + off_a, b_Aak, mask=m_ts)
    tl.store(Tm + off_a, b_T, mask=m_ts)
    tl.store(Au + off_a, b_Au, mask=m_ts)

    for i_k in range(tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        m_tk = m_t[:, None] & m_k[None, :]
        p = off_k + o_k[None, :]
        b_gi = tl.load(gi + p, mask=m_tk, other=0.)
        b_ge = b_gi - tl.load(gk + p, mask=m_tk, other=0.)
        b_gl = tl.load(gi + (row0 + last) * (H * K) + i_h * K + o_k, mask=m_k, other=0.)
        b_ag = tl.load(a + p, mask=m_tk, other=0.).to(tl.float32) * tl.exp(b_ge)
        b_dl = tl.where(m_tk, tl.exp(b_gl[None, :] - b_gi), 0.)
        tl.store(ag + p, b_ag, mask=m_tk)
        tl.store(w + p, tl.dot(b_T, b_ag, input_precision=PREC), mask=m_tk)
        tl.store(qg + p, tl.load(q + p, mask=m_tk, other=0.).to(tl.float32) * tl.exp(b_gi), mask=m_tk)
        tl.store(kd + p, tl.load(k + p, mask=m_tk, other=0.).to(tl.float32) * b_dl, mask=m_tk)
        tl.store(bd + p, tl.load(b + p, mask=m_tk, other=0.).to(tl.float32) * b_dl, mask=m_tk)


@triton.heuristics({"IS_VARLEN": lambda args: args["cu_seqlens"] is not None})
@autotune(_BWD_CONFIGS, key=["H", "K", "V", "BT", "BK", "BV"])
@triton.jit
def dplr_bwd_intra_kernel(
    q, k, a, b, gi, gk, v, u, z, do, h, dh, dq, dk, da, db, dgs, dge, cu_seqlens, chunk_indices,
    T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    PREC: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    # grid: (K blocks, chunks, B * H). The [BT, BT] matrix gradients are V contractions, recomputed per K block.
    i_k, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    bos, i_t, i_tg, T = _dplr_chunk(i_t, i_b, cu_seqlens, chunk_indices, T, BT, IS_VARLEN)
    row0 = bos + i_t * BT
    last = tl.minimum(i_t * BT + BT, T) - 1 - i_t * BT
    o_i = tl.arange(0, BT)
    m_t = i_t * BT + o_i < T
    o_k = i_k * BK + tl.arange(0, BK)
    m_k = o_k < K
    m_tk = m_t[:, None] & m_k[None, :]
    p_hk = (i_tg * H + i_h) * K * V  # [B, NT, H, K, V]

    b_dAqk = tl.zeros([BT, BT], dtype=tl.float32)
    b_dAqb = tl.zeros([BT, BT], dtype=tl.float32)
    b_dAak = tl.zeros([BT, BT], dtype=tl.float32)
    b_dAab = tl.zeros([BT, BT], dtype=tl.float32)
    b_dqg = tl.zeros([BT, BK], dtype=tl.float32)
    b_dag = tl.zeros([BT, BK], dtype=tl.float32)
    b_dkd = tl.zeros([BT, BK], dtype=tl.float32)
    b_dbd = tl.zeros([BT, BK], dtype=tl.float32)
    b_dgl = tl.zeros([BK], dtype=tl.float32)
    for i_v in range(tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_v = o_v < V
        m_tv = m_t[:, None] & m_v[None, :]
        p_v = (row0 + o_i)[:, None] * (H * V) + i_h * V + o_v[None, :]
        b_v = tl.load(v + p_v, mask=m_tv, other=0.).to(tl.float32)
        b_u = tl.load(u + p_v, mask=m_tv, other=0.)
        b_z = tl.load(z + p_v, mask=m_tv, other=0.)
        b_do = tl.load(do + p_v, mask=m_tv, other=0.).to(tl.float32)
        # h and dh loaded transposed, [BV, BK]
        p_h = p_hk + o_k[None, :] * V + o_v[:, None]
        m_vk = m_v[:, None] & m_k[None, :]
        b_ht = tl.load(h + p_h, mask=m_vk, other=0.)
        b_dht = tl.load(dh + p_h, mask=m_vk, other=0.)
        b_dAqk += tl.dot(b_do, tl.trans(b_v), input_precision=PREC)
        b_dAqb += tl.dot(b_do, tl.trans(b_u), input_precision=PREC)
        b_dAak += tl.dot(b_z, tl.trans(b_v), input_precision=PREC)
        b_dAab += tl.dot(b_z, tl.trans(b_u), input_precision=PREC)
        b_dqg += tl.dot(b_do, b_ht, input_precision=PREC)
        b_dag += tl.dot(b_z, b_ht, input_precision=PREC)
        b_dkd += tl.dot(b_v, b_dht, input_precision=PREC)
        b_dbd += tl.dot(b_u, b_dht, input_precision=PREC)
        b_dgl += tl.reduce(b_ht * b_dht, 0, _sum_combine)

    p = (row0 + o_i)[:, None] * (H * K) + i_h * K + o_k[None, :]
    b_q = tl.load(q + p, mask=m_tk, other=0.).to(tl.float32)
    b_k = tl.load(k + p, mask=m_tk, other=0.).to(tl.float32)
    b_a = tl.load(a + p, mask=m_tk, other=0.).to(tl.float32)
    b_b = tl.load(b + p, mask=m_tk, other=0.).to(tl.float32)
    b_gi = tl.load(gi + p, mask=m_tk, other=0.)
    b_ge = b_gi - tl.load(gk + p, mask=m_tk, other=0.)
    b_gl = tl.load(gi + (row0 + last) * (H * K) + i_h * K + o_k, mask=m_k, other=0.)
    b_ei, b_ee = _decays(b_gi, b_ge, m_t, BT)  # zero off the causal part: the dA need no mask of their own

    # intra-chunk: t indexes axis 0, s axis 1
    b_dq = tl.reduce((b_dAqk[:, :, None] * b_k[None, :, :] + b_dAqb[:, :, None] * b_b[None, :, :]) * b_ei, 1,
                     _sum_combine)
    b_da = tl.reduce((b_dAak[:, :, None] * b_k[None, :, :] + b_dAab[:, :, None] * b_b[None, :, :]) * b_ee, 1,
                     _sum_combine)
    b_dk = tl.reduce(b_dAqk[:, :, None] * b_q[:, None, :] * b_ei + b_dAak[:, :, None] * b_a[:, None, :] * b_ee, 0,
                     _sum_combine)
    b_db = tl.reduce(b_dAqb[:, :, None] * b_q[:, None, :] * b_ei + b_dAab[:, :, None] * b_a[:, None, :] * b_ee, 0,
                     _sum_combine)
    b_dgi = b_q * b_dq - b_k * b_dk - b_b * b_db
    b_dge = b_a * b_da

    # inter-chunk: the gated rows (all factors <= 1; zero on invalid rows)
    b_eq = tl.where(m_tk, tl.exp(b_gi), 0.)
    b_el = tl.where(m_tk, tl.exp(b_gl[None, :] - b_gi), 0.)
    b_ea = tl.where(m_tk, tl.exp(b_ge), 0.)
    b_wk = b_k * b_el * b_dkd + b_b * b_el * b_dbd
    b_dgi += b_q * b_eq * b_dqg - b_wk
    b_dge += b_a * b_ea * b_dag
    b_dgl = tl.reduce(b_wk, 0, _sum_combine) + tl.exp(b_gl) * b_dgl
    b_dgi += tl.where((o_i == last)[:, None], b_dgl[None, :], 0.)
    tl.store(dq + p, b_dq + b_dqg * b_eq, mask=m_tk)
    tl.store(dk + p, b_dk + b_dkd * b_el, mask=m_tk)
    tl.store(da + p, b_da + b_dag * b_ea, mask=m_tk)
    tl.store(db + p, b_db + b_dbd * b_el, mask=m_tk)
    tl.store(dgs + p, b_dgi + b_dge, mask=m_tk)
    tl.store(dge + p, b_dge, mask=m_tk)


def dplr_fwd_intra(q, k, a, b, gi, gk, cu_seqlens=None, chunk_size=16):
    """The chunk matrices and gated rows.

    Args:
        q (already scaled, float32), k, a, b: [B, T, H, K] (k's dtype picks the dot precision)
        gi: float32 chunk-local cumsum of gk; gk: float32 log decays
    Returns:
        Aqk, Aqb, Aak, Tm, Au: float32 [B, T, H, BT]; w, qg, kd, bd, ag: float32 [B, T, H, K]
    """
    B, T, H, K = q.shape
    BT = chunk_size
    chunk_indices, NT = _grid_chunks(cu_seqlens, T, BT)
    mats = [q.new_zeros(B, T, H, BT, dtype=torch.float32) for _ in range(5)]
    rows = [q.new_empty(B, T, H, K, dtype=torch.float32) for _ in range(5)]
    dplr_fwd_intra_kernel[(NT, B * H)](q, k, a, b, gi, gk, *mats, *rows, cu_seqlens, chunk_indices,
                                       T=T, H=H, K=K, BT=BT, BK=min(DPLR_BK, max(16, triton.next_power_of_2(K))),
                                       LOG2_BT=BT.bit_length() - 1, PREC=_precision(k))
    return (*mats, *rows)


def dplr_bwd_intra(q, k, a, b, gi, gk, v, u, z, do, h, dh, cu_seqlens=None, chunk_size=16):
    """Gradients of q (scaled), k, a, b and the per-row gate sums.

    Args:
        q, k, a, b: [B, T, H, K]; gi, gk float32; v, do: [B, T, H, V]; u, z: float32 [B, T, H, V] (`dplr_h.py`)
        h, dh: float32 [B, NT, H, K, V] (state entering / gradient of the state leaving each chunk)
    Returns:
        dq, dk, da, db: float32 [B, T, H, K]; dgs = dGi + dGe (dGi_L added on each chunk's last row), dge = dGe
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    BT = chunk_size
    chunk_indices, NT = _grid_chunks(cu_seqlens, T, BT)
    BK = DPLR_BWD_BK
    BV = min(32, max(16, triton.next_power_of_2(V)))
    outs = [q.new_empty(B, T, H, K, dtype=torch.float32) for _ in range(6)]
    dplr_bwd_intra_kernel[(triton.cdiv(K, BK), NT, B * H)](
        q, k, a, b, gi, gk, v, u, z, do, h, dh, *outs, cu_seqlens, chunk_indices,
        T=T, H=H, K=K, V=V, BT=BT, BK=BK, BV=BV, PREC=_precision(k))
    return tuple(outs)

