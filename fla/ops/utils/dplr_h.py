"""The DPLR state pass across chunks (h, u), the output, and their backward (dh, z, dv).

Notation as in `dplr.py`. Per head, chunk c with h = h[c] the state entering it:
    u = Au v + w h;   h[c+1] = exp(Gi_L) h + kd^T v + bd^T u;   o = qg h + A_qk v + A_qb u
Backward, walking the chunks backwards with D = dL/d(state leaving chunk c) (D starts at dht):
    du = A_qb^T do + bd D;   z = Tm^T du;   D <- exp(Gi_L) D + qg^T do + ag^T z
(ag^T z = w^T du: h reaches u only through w h), and, per chunk once D is known,
    dv = A_qk^T do + A_ak^T z + kd D
(A_ak^T z = Au^T du). z is the adjoint of u's implicit equation u = A_ab u + A_ak v + ag h; `dplr_bwd_intra` takes it.

Layouts: h, dh float32 [B, NT, H, K, V] (or [1, NT_total, H, K, V] under cu_seqlens); h[:, c] enters chunk c, dh[:, c]
is the gradient of the state leaving chunk c; h0, ht, dht, dh0 float32 [N, H, K, V]; u, z float32 [B, T, H, V];
the gated rows and matrices as `dplr_fwd_intra` returns them.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fla.ops.utils.dispatch import autotune
from fla.ops.utils.dplr import _dplr_chunk, _grid_chunks, _precision
from fla.ops.utils.index import chunk_state_bounds, num_chunks, prepare_chunk_offsets

_CONFIGS = [triton.Config({"BV": BV}, num_warps=w, num_stages=s) for BV in (32, 16, 64) for w in (4, 8, 2)
            for s in (2, 1)]
_TILE_CONFIGS = [triton.Config({}, num_warps=w, num_stages=s) for w in (4, 8, 2) for s in (2, 1)]
_STATE_HEURISTICS = {
    "IS_VARLEN": lambda args: args["cu_seqlens"] is not None,
}


@triton.heuristics({**_STATE_HEURISTICS,
                    "USE_INITIAL_STATE": lambda args: args["h0"] is not None,
                    "STORE_FINAL_STATE": lambda args: args["ht"] is not None})
@autotune(_CONFIGS, key=["H", "K", "V", "BT", "BK"])
@triton.jit
def dplr_fwd_h_kernel(
    v, w, kd, bd, Au, gi, h, u, h0, ht, cu_seqlens, chunk_offsets,
    T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    PREC: tl.constexpr, USE_INITIAL_STATE: tl.constexpr, STORE_FINAL_STATE: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    # grid: (V blocks, N * H); one program walks one sequence's chunks with a [BK, BV] state tile (all of K).
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, T, NT, boh = chunk_state_bounds(i_n, cu_seqlens, chunk_offsets, T, BT, IS_VARLEN)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    o_i = tl.arange(0, BT)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    o_kv = o_k[:, None] * V + o_v[None, :]

    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_INITIAL_STATE:
        b_h += tl.load(h0 + i_nh * K * V + o_kv, mask=m_kv, other=0.)
    for i_t in range(NT):
        tl.store(h + ((boh + i_t) * H + i_h) * K * V + o_kv, b_h, mask=m_kv)
        rows = bos + i_t * BT + o_i
        m_t = i_t * BT + o_i < T
        m_tk = m_t[:, None] & m_k[None, :]
        m_tv = m_t[:, None] & m_v[None, :]
        p_v = rows[:, None] * (H * V) + i_h * V + o_v[None, :]
        b_v = tl.load(v + p_v, mask=m_tv, other=0.).to(tl.float32)
        b_Au = tl.load(Au + rows[:, None] * (H * BT) + i_h * BT + o_i[None, :], mask=m_t[:, None], other=0.)
        b_w = tl.load(w + rows[:, None] * (H * K) + i_h * K + o_k[None, :], mask=m_tk, other=0.)
        b_u = tl.dot(b_Au, b_v, input_precision=PREC) + tl.dot(b_w, b_h, input_precision=PREC)
        tl.store(u + p_v, b_u, mask=m_tv)
        # kd, bd loaded transposed, [BK, BT]
        p_kt = rows[None, :] * (H * K) + i_h * K + o_k[:, None]
        m_kt = m_k[:, None] & m_t[None, :]
        b_kd = tl.load(kd + p_kt, mask=m_kt, other=0.)
        b_bd = tl.load(bd + p_kt, mask=m_kt, other=0.)
        last = tl.minimum(i_t * BT + BT, T) - 1
        b_gl = tl.load(gi + (bos + last) * (H * K) + i_h * K + o_k, mask=m_k, other=0.)
        b_h = b_h * tl.exp(b_gl)[:, None] + tl.dot(b_kd, b_v, input_precision=PREC) \
            + tl.dot(b_bd, b_u, input_precision=PREC)
    if STORE_FINAL_STATE:
        tl.store(ht + i_nh * K * V + o_kv, b_h, mask=m_kv)


@triton.heuristics({**_STATE_HEURISTICS,
                    "USE_INITIAL_STATE": lambda args: args["dh0"] is not None,
                    "USE_FINAL_STATE_GRADIENT": lambda args: args["dht"] is not None})
@autotune(_CONFIGS, key=["H", "K", "V", "BT", "BK"])
@triton.jit
def dplr_bwd_dh_kernel(
    qg, ag, bd, do, Aqb, Tm, gi, dh, z, dht, dh0, cu_seqlens, chunk_offsets,
    T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    PREC: tl.constexpr, USE_INITIAL_STATE: tl.constexpr, USE_FINAL_STATE_GRADIENT: tl.constexpr,
    IS_VARLEN: tl.constexpr,
):
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, T, NT, boh = chunk_state_bounds(i_n, cu_seqlens, chunk_offsets, T, BT, IS_VARLEN)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    o_i = tl.arange(0, BT)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    o_kv = o_k[:, None] * V + o_v[None, :]

    b_dh = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_FINAL_STATE_GRADIENT:
        b_dh += tl.load(dht + i_nh * K * V + o_kv, mask=m_kv, other=0.)
    # count up, index down (a negative range step is not portable across triton versions)
    for i_r in range(NT):
        i_t = NT - 1 - i_r
        tl.store(dh + ((boh + i_t) * H + i_h) * K * V + o_kv, b_dh, mask=m_kv)
        rows = bos + i_t * BT + o_i
        m_t = i_t * BT + o_i < T
        m_tk = m_t[:, None] & m_k[None, :]
        m_tv = m_t[:, None] & m_v[None, :]
        p_v = rows[:, None] * (H * V) + i_h * V + o_v[None, :]
        b_do = tl.load(do + p_v, mask=m_tv, other=0.).to(tl.float32)
        # the matrices loaded transposed ([s, t]: column t is token t's row)
        p_At = rows[None, :] * (H * BT) + i_h * BT + o_i[:, None]
        b_Aqbt = tl.load(Aqb + p_At, mask=m_t[None, :], other=0.)
        b_Tmt = tl.load(Tm + p_At, mask=m_t[None, :], other=0.)
        b_bd = tl.load(bd + rows[:, None] * (H * K) + i_h * K + o_k[None, :], mask=m_tk, other=0.)
        b_du = tl.dot(b_Aqbt, b_do, input_precision=PREC) + tl.dot(b_bd, b_dh, input_precision=PREC)
        b_z = tl.dot(b_Tmt, b_du, input_precision=PREC)
        tl.store(z + p_v, b_z, mask=m_tv)
        p_kt = rows[None, :] * (H * K) + i_h * K + o_k[:, None]
        m_kt = m_k[:, None] & m_t[None, :]
        b_qgt = tl.load(qg + p_kt, mask=m_kt, other=0.)
        b_agt = tl.load(ag + p_kt, mask=m_kt, other=0.)
        last = tl.minimum(i_t * BT + BT, T) - 1
        b_gl = tl.load(gi + (bos + last) * (H * K) + i_h * K + o_k, mask=m_k, other=0.)
        b_dh = b_dh * tl.exp(b_gl)[:, None] + tl.dot(b_qgt, b_do, input_precision=PREC) \
            + tl.dot(b_agt, b_z, input_precision=PREC)
    if USE_INITIAL_STATE:
        tl.store(dh0 + i_nh * K * V + o_kv, b_dh, mask=m_kv)


@triton.heuristics({"IS_VARLEN": lambda args: args["cu_seqlens"] is not None})
@autotune(_TILE_CONFIGS, key=["H", "K", "V", "BT", "BK", "BV"])
@triton.jit
def dplr_fwd_o_kernel(
    qg, v, u, h, Aqk, Aqb, o, cu_seqlens, chunk_indices,
    T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    PREC: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    # grid: (V blocks, chunks, B * H): o = qg h + A_qk v + A_qb u
    i_v, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    bos, i_t, i_tg, T = _dplr_chunk(i_t, i_b, cu_seqlens, chunk_indices, T, BT, IS_VARLEN)
    rows = bos + i_t * BT + tl.arange(0, BT)
    o_i = tl.arange(0, BT)
    m_t = i_t * BT + o_i < T
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V
    m_tv = m_t[:, None] & m_v[None, :]
    p_h = h + (i_tg * H + i_h) * K * V

    b_o = tl.zeros([BT, BV], dtype=tl.float32)
    for i_k in range(tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        b_qg = tl.load(qg + rows[:, None] * (H * K) + i_h * K + o_k[None, :], mask=m_t[:, None] & m_k[None, :],
                       other=0.)
        b_h = tl.load(p_h + o_k[:, None] * V + o_v[None, :], mask=m_k[:, None] & m_v[None, :], other=0.)
        b_o += tl.dot(b_qg, b_h, input_precision=PREC)
    p_A = rows[:, None] * (H * BT) + i_h * BT + o_i[None, :]
    p_v = rows[:, None] * (H * V) + i_h * V + o_v[None, :]
    b_v = tl.load(v + p_v, mask=m_tv, other=0.).to(tl.float32)
    b_u = tl.load(u + p_v, mask=m_tv, other=0.)
    b_o += tl.dot(tl.load(Aqk + p_A, mask=m_t[:, None], other=0.), b_v, input_precision=PREC)
    b_o += tl.dot(tl.load(Aqb + p_A, mask=m_t[:, None], other=0.), b_u, input_precision=PREC)
    tl.store(o + p_v, b_o.to(o.dtype.element_ty), mask=m_tv)


@triton.heuristics({"IS_VARLEN": lambda args: args["cu_seqlens"] is not None})
@autotune(_TILE_CONFIGS, key=["H", "K", "V", "BT", "BK", "BV"])
@triton.jit
def dplr_bwd_dv_kernel(
    kd, do, z, dh, Aqk, Aak, dv, cu_seqlens, chunk_indices,
    T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    PREC: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    # grid: (V blocks, chunks, B * H): dv = A_qk^T do + A_ak^T z + kd dh
    i_v, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    bos, i_t, i_tg, T = _dplr_chunk(i_t, i_b, cu_seqlens, chunk_indices, T, BT, IS_VARLEN)
    rows = bos + i_t * BT + tl.arange(0, BT)
    o_i = tl.arange(0, BT)
    m_t = i_t * BT + o_i < T
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V
    m_tv = m_t[:, None] & m_v[None, :]
    p_dh = dh + (i_tg * H + i_h) * K * V

    b_dv = tl.zeros([BT, BV], dtype=tl.float32)
    for i_k in range(tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        b_kd = tl.load(kd + rows[:, None] * (H * K) + i_h * K + o_k[None, :], mask=m_t[:, None] & m_k[None, :],
                       other=0.)
        b_dh = tl.load(p_dh + o_k[:, None] * V + o_v[None, :], mask=m_k[:, None] & m_v[None, :], other=0.)
        b_dv += tl.dot(b_kd, b_dh, input_precision=PREC)
    p_At = rows[None, :] * (H * BT) + i_h * BT + o_i[:, None]
    p_v = rows[:, None] * (H * V) + i_h * V + o_v[None, :]
    b_do = tl.load(do + p_v, mask=m_tv, other=0.).to(tl.float32)
    b_z = tl.load(z + p_v, mask=m_tv, other=0.)
    b_dv += tl.dot(tl.load(Aqk + p_At, mask=m_t[None, :], other=0.), b_do, input_precision=PREC)
    b_dv += tl.dot(tl.load(Aak + p_At, mask=m_t[None, :], other=0.), b_z, input_precision=PREC)
    tl.store(dv + p_v, b_dv.to(dv.dtype.element_ty), mask=m_tv)


def _state_args(K, cu_seqlens, chunk_size, B):
    N = B if cu_seqlens is None else len(cu_seqlens) - 1
    chunk_offsets = prepare_chunk_offsets(cu_seqlens, chunk_size) if cu_seqlens is not None else None
    return N, chunk_offsets, max(16, triton.next_power_of_2(K))


def dplr_fwd_h(v, w, kd, bd, Au, gi, h0=None, output_final_state=False, cu_seqlens=None, chunk_size=16):
    """States entering every chunk and the low-rank reads u.

    Args:
        v: [B, T, H, V]; w, kd, bd, gi: float32 [B, T, H, K]; Au: float32 [B, T, H, BT]; h0: [N, H, K, V] float32
    Returns:
        h: float32 [B, NT, H, K, V]; u: float32 [B, T, H, V]; ht: float32 [N, H, K, V] or None
    """
    B, T, H, K = w.shape
    V = v.shape[-1]
    if K > 256:
        raise ValueError(f"the DPLR chunk kernels hold all of K in one tile: K must be <= 256 (got {K})")
    N, chunk_offsets, BK = _state_args(K, cu_seqlens, chunk_size, B)
    h = w.new_empty(B, num_chunks(T, cu_seqlens, chunk_size), H, K, V)
    u = w.new_empty(B, T, H, V)
    ht = w.new_empty(N, H, K, V) if output_final_state else None
    grid = lambda meta: (triton.cdiv(V, meta["BV"]), N * H)  # noqa: E731
    dplr_fwd_h_kernel[grid](v, w, kd, bd, Au, gi, h, u, h0, ht, cu_seqlens, chunk_offsets,
                            T=T, H=H, K=K, V=V, BT=chunk_size, BK=BK, PREC=_precision(v))
    return h, u, ht


def dplr_bwd_dh(qg, ag, bd, do, Aqb, Tm, gi, h0=None, dht=None, cu_seqlens=None, chunk_size=16):
    """Gradients of the states leaving every chunk, z = Tm^T du, and dh0 (if h0 is given).

    Returns:
        dh: float32 [B, NT, H, K, V]; z: float32 [B, T, H, V]; dh0: float32 [N, H, K, V] or None
    """
    B, T, H, K = qg.shape
    V = do.shape[-1]
    N, chunk_offsets, BK = _state_args(K, cu_seqlens, chunk_size, B)
    dh = qg.new_empty(B, num_chunks(T, cu_seqlens, chunk_size), H, K, V)
    z = qg.new_empty(B, T, H, V)
    dh0 = qg.new_empty(N, H, K, V) if h0 is not None else None
    grid = lambda meta: (triton.cdiv(V, meta["BV"]), N * H)  # noqa: E731
    dplr_bwd_dh_kernel[grid](qg, ag, bd, do, Aqb, Tm, gi, dh, z, dht, dh0, cu_seqlens, chunk_offsets,
                             T=T, H=H, K=K, V=V, BT=chunk_size, BK=BK, PREC=_precision(do))
    return dh, z, dh0


def _tiles(K, V, T, cu_seqlens, chunk_size):
    chunk_indices, NT = _grid_chunks(cu_seqlens, T, chunk_size)
    BK = min(64, max(16, triton.next_power_of_2(K)))
    BV = min(64, max(16, triton.next_power_of_2(V)))
    return chunk_indices, NT, BK, BV


def dplr_fwd_o(qg, v, u, h, Aqk, Aqb, cu_seqlens=None, chunk_size=16):
    """o = qg h + A_qk v + A_qb u, [B, T, H, V] in v's dtype."""
    B, T, H, K = qg.shape
    V = v.shape[-1]
    chunk_indices, NT, BK, BV = _tiles(K, V, T, cu_seqlens, chunk_size)
    o = torch.empty_like(v)
    dplr_fwd_o_kernel[(triton.cdiv(V, BV), NT, B * H)](qg, v, u, h, Aqk, Aqb, o, cu_seqlens, chunk_indices,
                                                       T=T, H=H, K=K, V=V, BT=chunk_size, BK=BK, BV=BV,
                                                       PREC=_precision(v))
    return o


def dplr_bwd_dv(kd, do, z, dh, Aqk, Aak, cu_seqlens=None, chunk_size=16):
    """dv = A_qk^T do + A_ak^T z + kd dh, float32 [B, T, H, V]."""
    B, T, H, K = kd.shape
    V = do.shape[-1]
    chunk_indices, NT, BK, BV = _tiles(K, V, T, cu_seqlens, chunk_size)
    dv = do.new_empty(B, T, H, V, dtype=torch.float32)
    dplr_bwd_dv_kernel[(triton.cdiv(V, BV), NT, B * H)](kd, do, z, dh, Aqk, Aak, dv, cu_seqlens, chunk_indices,
                                                        T=T, H=H, K=K, V=V, BT=chunk_size, BK=BK, BV=BV,
                                                        PREC=_precision(do))
    return dv
