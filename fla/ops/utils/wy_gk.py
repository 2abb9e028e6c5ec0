"""The WY representation of the delta rule with a log decay PER KEY CHANNEL (KDA; the gated K K^T also serves DPLR).

Per head and chunk (t, s tokens of one chunk; G [BT, K] the chunk-local cumsum of the per-channel log gates, so
G is non-increasing along time in every channel):
    M_ts = sum_c q_tc k_sc exp(G_tc - G_sc)  on s < t (s <= t unless strict), else 0    (`chunk_kkt_gk_fwd`; q = k
                                                                                         for the delta rule)
    L    = diag(beta) M,  A = (I + L)^{-1}                                              (`wy.solve_tril`)
    w    = A (beta * k * exp(G)),   u = A (beta * v)                                    (`recompute_w_u_gk_fwd`)
so that the values a chunk writes are v_new = u - w h (h the state entering the chunk; `delta_h.py` with gk).

Backward (`prepare_wy_repr_gk_bwd`), from dw and du, with x = beta k exp(G), y = beta v:
    dx = A^T dw, dy = A^T du, dA = dw x^T + du y^T, dL = -(A^T dA A^T) on s < t
    dv = beta dy;   dbeta = sum_c k exp(G) dx + sum v dy + sum_s dL_ts M_ts
    dk = beta exp(G) dx + (the gradient of M through dM = diag(beta) dL);   dG = x dx + (M's part)
M's part is `chunk_gk.chunk_gk_bwd_dqk_intra` with q = k: dk_M = dq_i + dk_i and dG_M = k (dq_i - dk_i) (every
exp(G_t - G_s) counts +1 for its row t and -1 for its column s). dG is w.r.t. the cumsum G.

Numerical stability: exp(G_t) and exp(-G_s) are never formed apart over a chunk (exp(-G_s) overflows beyond ~88).
M is built per 16-row sub-chunk as in `chunk_gk.py`: for sub-chunks i > j, the first row n of i splits
exp(G_t - G_s) = exp(G_t - G_n) exp(G_n - G_s), both <= 1 (one tl.dot of bounded operands); the diagonal sub-chunk
is built element-wise with -inf above the diagonal before the exp. exp(G_t) in w is <= 1 on its own.

Layouts: q, k, w, g/G [B, T, H, K] (row stride H*K); v, u [B, T, H, V]; beta [B, T, H]; M, L, A, dM float32 (A may
be k's dtype) [B, T, H, BT] (token t's row of its chunk's matrix, column = position in the chunk).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.standard import _sum_combine

from fla.ops.utils.chunk_gk import _decay, _torch_chunks, chunk_gk_bwd_dqk_intra
from fla.ops.utils.dispatch import autotune, dispatch, tensor_core_dtype
from fla.ops.utils.index import prepare_chunk_indices, sequence_bounds

BC = 16  # rows per sub-chunk
_CONFIGS = [triton.Config({}, num_warps=w, num_stages=s) for w in (4, 2, 8) for s in (2, 3, 1)]
# the backward holds dA, A and two [BT, BT] products next to the K / V tiles (as wy.py's wy_bwd): 8 warps first
_WIDE_CONFIGS = [triton.Config({}, num_warps=w, num_stages=s) for w in (8, 4) for s in (2, 3, 1)]


def _precision(x: torch.Tensor) -> str:
    return "ieee" if x.dtype == torch.float32 else "tf32"


@triton.jit
def _chunk_of(i_t, i_b, cu_seqlens, chunk_indices, T, IS_VARLEN: tl.constexpr):
    """(first row of the sequence, its length, chunk index within it) of grid chunk i_t."""
    if IS_VARLEN:
        i_n, i_t = tl.load(chunk_indices + i_t * 2).to(tl.int32), tl.load(chunk_indices + i_t * 2 + 1).to(tl.int32)
    else:
        i_n = i_b
    bos, T = sequence_bounds(i_n, cu_seqlens, T, IS_VARLEN)
    return bos, T, i_t


# ----------------------------------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------------------------------

@triton.heuristics({
    "HAS_BETA": lambda args: args["beta"] is not None,
    "IS_VARLEN": lambda args: args["cu_seqlens"] is not None,
})
@autotune(_CONFIGS, key=["H", "K", "BT", "BK", "STRICT", "HAS_BETA"])
@triton.jit
def chunk_kkt_gk_kernel(
    q, k, g, beta, M, cu_seqlens, chunk_indices, T,
    H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr,
    PREC: tl.constexpr, STRICT: tl.constexpr, HAS_BETA: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    # grid: (chunks * sub-chunks, B * H); one program writes the BC rows of sub-chunk i, all BT columns.
    i_tc, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    NC: tl.constexpr = BT // BC
    i_t, i_i = i_tc // NC, i_tc % NC
    bos, T, i_t = _chunk_of(i_t, i_b, cu_seqlens, chunk_indices, T, IS_VARLEN)
    s0 = i_t * BT + i_i * BC
    if s0 >= T:
        return
    HK = H * K
    o_c = tl.arange(0, BC)
    o_k = tl.arange(0, BK)
    rows = s0 + o_c
    m_r = rows < T
    p_M = M + (bos + rows)[:, None] * (H * BT) + i_h * BT + o_c[None, :]
    b_beta = tl.where(m_r, 1., 0.)
    if HAS_BETA:
        b_beta = tl.load(beta + (bos + rows) * H + i_h, mask=m_r, other=0.).to(tl.float32)

    # earlier sub-chunks j < i, split at the reference row n = s0 (their rows all precede s0 < T: valid)
    for j in range(0, i_i):
        rows_j = i_t * BT + j * BC + o_c
        b_M = tl.zeros([BC, BC], dtype=tl.float32)
        for i_k in range(tl.cdiv(K, BK)):
            o_kk = i_k * BK + o_k
            m_k = o_kk < K
            m_rk = m_r[:, None] & m_k[None, :]
            offs = (bos + rows)[:, None] * HK + i_h * K + o_kk[None, :]
            offs_j = (bos + rows_j)[:, None] * HK + i_h * K + o_kk[None, :]
            b_q = tl.load(q + offs, mask=m_rk, other=0.).to(tl.float32)
            b_g = tl.load(g + offs, mask=m_rk, other=0.).to(tl.float32)
            b_gn = tl.load(g + (bos + s0) * HK + i_h * K + o_kk, mask=m_k, other=0.).to(tl.float32)
            b_kj = tl.load(k + offs_j, mask=m_k[None, :], other=0.).to(tl.float32)
            b_gj = tl.load(g + offs_j, mask=m_k[None, :], other=0.).to(tl.float32)
            b_qn = b_q * tl.exp(tl.where(m_rk, b_g - b_gn[None, :], float("-inf")))
            b_kn = b_kj * tl.exp(b_gn[None, :] - b_gj)
            b_M += tl.dot(b_qn.to(k.dtype.element_ty), tl.trans(b_kn.to(k.dtype.element_ty)), input_precision=PREC)
        tl.store(p_M + j * BC, b_M * b_beta[:, None], mask=m_r[:, None])

    # the diagonal sub-chunk, element-wise as [t, s, c]
    if STRICT:
        m_tri = (o_c[:, None] > o_c[None, :]) & m_r[:, None] & m_r[None, :]
    else:
        m_tri = (o_c[:, None] >= o_c[None, :]) & m_r[:, None] & m_r[None, :]
    b_M = tl.zeros([BC, BC], dtype=tl.float32)
    for i_k in range(tl.cdiv(K, BK)):
        o_kk = i_k * BK + o_k
        m_rk = m_r[:, None] & (o_kk < K)[None, :]
        offs = (bos + rows)[:, None] * HK + i_h * K + o_kk[None, :]
        b_q = tl.load(q + offs, mask=m_rk, other=0.).to(tl.float32)
        b_k = tl.load(k + offs, mask=m_rk, other=0.).to(tl.float32)
        b_g = tl.load(g + offs, mask=m_rk, other=0.).to(tl.float32)
        b_d = tl.exp(tl.where(m_tri[:, :, None], b_g[:, None, :] - b_g[None, :, :], float("-inf")))
        b_M += tl.reduce(b_q[:, None, :] * b_k[None, :, :] * b_d, 2, _sum_combine)
    tl.store(p_M + i_i * BC, b_M * b_beta[:, None], mask=m_r[:, None])
    # later sub-chunks: zeros (the matrix is lower triangular)
    for j in range(i_i + 1, NC):
        tl.store(p_M + j * BC, tl.zeros([BC, BC], dtype=tl.float32), mask=m_r[:, None])


@triton.heuristics({"IS_VARLEN": lambda args: args["cu_seqlens"] is not None})
@autotune(_CONFIGS, key=["H", "K", "V", "BT", "BK", "BV"])
@triton.jit
def recompute_w_u_gk_kernel(
    k, v, beta, A, g, w, u, cu_seqlens, chunk_indices, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    IS_VARLEN: tl.constexpr,
):
    # grid: (chunks, B * H); w = A (beta k exp(G)), u = A (beta v) for one chunk
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    bos, T, i_t = _chunk_of(i_t, i_b, cu_seqlens, chunk_indices, T, IS_VARLEN)
    o_i = tl.arange(0, BT)
    rows = i_t * BT + o_i
    m_t = rows < T
    b_A = tl.load(A + ((bos + rows)[:, None] * H + i_h) * BT + o_i[None, :], mask=m_t[:, None], other=0.)
    b_beta = tl.load(beta + (bos + rows) * H + i_h, mask=m_t, other=0.).to(tl.float32)
    for i_v in range(tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m = m_t[:, None] & (o_v < V)[None, :]
        p = ((bos + rows)[:, None] * H + i_h) * V + o_v[None, :]
        b_v = tl.load(v + p, mask=m, other=0.)
        b_u = tl.dot(b_A.to(b_v.dtype), (b_v * b_beta[:, None]).to(b_v.dtype))
        tl.store(u + p, b_u.to(u.dtype.element_ty), mask=m)
    for i_k in range(tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m = m_t[:, None] & (o_k < K)[None, :]
        p = ((bos + rows)[:, None] * H + i_h) * K + o_k[None, :]
        b_k = tl.load(k + p, mask=m, other=0.)
        b_g = tl.load(g + p, mask=m, other=0.).to(tl.float32)
        b_x = b_k * (b_beta[:, None] * tl.exp(b_g))
        b_w = tl.dot(b_A.to(b_k.dtype), b_x.to(b_k.dtype))
        tl.store(w + p, b_w.to(w.dtype.element_ty), mask=m)


@triton.heuristics({
    "HAS_DK0": lambda args: args["dk0"] is not None,
    "IS_VARLEN": lambda args: args["cu_seqlens"] is not None,
})
@autotune(_WIDE_CONFIGS, key=["H", "K", "V", "BT", "BK", "BV", "A_IS_FP32", "HAS_DK0"])
@triton.jit
def wy_gk_bwd_kernel(
    k, v, beta, A, g, M, dw, du, dk0, dk, dv, dbeta, dg, dM, cu_seqlens, chunk_indices, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    A_IS_FP32: tl.constexpr, HAS_DK0: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    # grid: (chunks, B * H); see the module docstring. dk, dg here are the direct parts (through x), plus dk0 (the
    # caller's other part of dk) when given; dM is the gradient of the un-scaled M, for the intra-chunk block that
    # turns it into the rest of dk and dg.
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    bos, T, i_t = _chunk_of(i_t, i_b, cu_seqlens, chunk_indices, T, IS_VARLEN)
    o_i = tl.arange(0, BT)
    rows = i_t * BT + o_i
    m_t = rows < T
    p_A = ((bos + rows)[:, None] * H + i_h) * BT + o_i[None, :]
    b_A_raw = tl.load(A + p_A, mask=m_t[:, None], other=0.)
    b_A = b_A_raw.to(tl.float32)
    b_beta = tl.load(beta + (bos + rows) * H + i_h, mask=m_t, other=0.).to(tl.float32)
    b_dA = tl.zeros([BT, BT], dtype=tl.float32)
    b_dbeta = tl.zeros([BT], dtype=tl.float32)
    for i_v in range(tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m = m_t[:, None] & (o_v < V)[None, :]
        p = ((bos + rows)[:, None] * H + i_h) * V + o_v[None, :]
        b_v = tl.load(v + p, mask=m, other=0.)
        b_du = tl.load(du + p, mask=m, other=0.)
        b_y = (b_v * b_beta[:, None]).to(b_v.dtype)
        b_dA += tl.dot(b_du.to(b_v.dtype), tl.trans(b_y))
        b_dy = tl.dot(tl.trans(b_A).to(b_du.dtype), b_du)
        b_dbeta += tl.reduce(b_dy * b_v, 1, _sum_combine)
        tl.store(dv + p, (b_dy * b_beta[:, None]).to(dv.dtype.element_ty), mask=m)
    for i_k in range(tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m = m_t[:, None] & (o_k < K)[None, :]
        p = ((bos + rows)[:, None] * H + i_h) * K + o_k[None, :]
        b_k = tl.load(k + p, mask=m, other=0.)
        b_eg = tl.exp(tl.load(g + p, mask=m, other=0.).to(tl.float32))
        b_dw = tl.load(dw + p, mask=m, other=0.)
        b_ke = b_k * b_eg
        b_x = b_ke * b_beta[:, None]
        b_dA += tl.dot(b_dw.to(b_k.dtype), tl.trans(b_x.to(b_k.dtype)))
        b_dx = tl.dot(tl.trans(b_A).to(b_dw.dtype), b_dw)
        b_dbeta += tl.reduce(b_dx * b_ke, 1, _sum_combine)
        b_dk = b_dx * b_eg * b_beta[:, None]
        if HAS_DK0:
            b_dk += tl.load(dk0 + p, mask=m, other=0.).to(tl.float32)
        tl.store(dk + p, b_dk, mask=m)
        tl.store(dg + p, b_dx * b_x, mask=m)
    m_A = (o_i[:, None] > o_i[None, :]) & m_t[:, None] & m_t[None, :]
    if A_IS_FP32:
        b_At = tl.trans(b_A)
        b_dL = tl.dot(tl.dot(b_At, b_dA, input_precision="ieee"), b_At, input_precision="ieee")
    else:
        b_At = tl.trans(b_A_raw)
        b_dL = tl.dot(tl.dot(b_At, b_dA.to(b_At.dtype)).to(b_At.dtype), b_At)
    b_dL = tl.where(m_A, -b_dL, 0.)
    b_M = tl.load(M + p_A, mask=m_t[:, None], other=0.)
    b_dbeta += tl.reduce(b_dL * b_M, 1, _sum_combine)
    tl.store(dbeta + (bos + rows) * H + i_h, b_dbeta, mask=m_t)
    tl.store(dM + p_A, b_dL * b_beta[:, None], mask=m_t[:, None])


# ----------------------------------------------------------------------------------------------------------------------
# Launchers (Triton) and their PyTorch twins (same signatures; per chunk, float32)
# ----------------------------------------------------------------------------------------------------------------------

def _grid(x, cu_seqlens, chunk_size):
    B, T, H = x.shape[:3]
    if cu_seqlens is None:
        return None, triton.cdiv(T, chunk_size)
    chunk_indices = prepare_chunk_indices(cu_seqlens, chunk_size)
    return chunk_indices, len(chunk_indices)


def _tiles(n: int) -> int:
    return min(64, max(16, triton.next_power_of_2(n)))


def _tc(*xs):
    return [x.to(tensor_core_dtype(x.dtype)) if x is not None else None for x in xs]


def _kkt_gk_triton(k, g, beta=None, q=None, cu_seqlens=None, chunk_size=64, strict=True):
    B, T, H, K = k.shape
    M = torch.empty(B, T, H, chunk_size, device=k.device, dtype=torch.float32)
    q, k = _tc(q if q is not None else k, k)
    chunk_indices, NT = _grid(k, cu_seqlens, chunk_size)
    if NT:
        chunk_kkt_gk_kernel[(NT * (chunk_size // BC), B * H)](
            q, k, g, beta, M, cu_seqlens, chunk_indices, T, H=H, K=K, BT=chunk_size, BC=BC, BK=_tiles(min(K, 32)),
            PREC=_precision(k), STRICT=strict)
    return M


def _kkt_gk_torch(k, g, beta=None, q=None, cu_seqlens=None, chunk_size=64, strict=True):
    q = k if q is None else q
    M = torch.zeros(*k.shape[:3], chunk_size, device=k.device, dtype=torch.float32)
    for b, start, end, _ in _torch_chunks(k, cu_seqlens, chunk_size):
        qc, kc, gc = (x[b, start:end].float() for x in (q, k, g))
        L = end - start
        D = _decay(gc)  # [t, s, H, K], s <= t
        if strict:
            D = D * (1 - torch.eye(L, device=k.device))[:, :, None, None]
        Mc = torch.einsum("thk,shk,tshk->ths", qc, kc, D)
        if beta is not None:
            Mc = Mc * beta[b, start:end].float()[..., None]
        M[b, start:end, :, :L] = Mc
    return M


def _w_u_gk_triton(k, v, beta, A, g, cu_seqlens=None, chunk_size=64):
    B, T, H, K = k.shape
    V = v.shape[-1]
    w, u = torch.empty_like(k), torch.empty_like(v)
    k, v, A = _tc(k, v, A)
    chunk_indices, NT = _grid(k, cu_seqlens, chunk_size)
    if NT:
        recompute_w_u_gk_kernel[(NT, B * H)](k, v, beta, A, g, w, u, cu_seqlens, chunk_indices, T, H=H, K=K, V=V,
                                             BT=chunk_size, BK=_tiles(K), BV=_tiles(V))
    return w, u


def _w_u_gk_torch(k, v, beta, A, g, cu_seqlens=None, chunk_size=64):
    w, u = torch.empty_like(k), torch.empty_like(v)
    for b, start, end, _ in _torch_chunks(k, cu_seqlens, chunk_size):
        L = end - start
        Ac = A[b, start:end, :, :L].float()  # [t, H, s]
        bc = beta[b, start:end].float()[..., None]
        x = k[b, start:end].float() * bc * g[b, start:end].float().exp()
        w[b, start:end] = torch.einsum("ths,shk->thk", Ac, x).to(w.dtype)
        u[b, start:end] = torch.einsum("ths,shv->thv", Ac, v[b, start:end].float() * bc).to(u.dtype)
    return w, u


def _wy_gk_bwd_parts_triton(k, v, beta, A, g, M, dw, du, cu_seqlens=None, chunk_size=64, dk0=None):
    B, T, H, K = k.shape
    V = v.shape[-1]
    f32 = dict(device=k.device, dtype=torch.float32)
    dk, dg = torch.empty(B, T, H, K, **f32), torch.empty(B, T, H, K, **f32)
    dv = torch.empty_like(v)
    dbeta = torch.empty(B, T, H, **f32)
    dM = torch.empty(B, T, H, chunk_size, **f32)
    k, v, A, dw, du = _tc(k, v, A, dw.contiguous(), du.contiguous())
    chunk_indices, NT = _grid(k, cu_seqlens, chunk_size)
    if NT:
        wy_gk_bwd_kernel[(NT, B * H)](k, v, beta, A, g, M, dw, du, dk0, dk, dv, dbeta, dg, dM, cu_seqlens,
                                      chunk_indices, T, H=H, K=K, V=V, BT=chunk_size, BK=_tiles(K), BV=_tiles(V),
                                      A_IS_FP32=A.dtype == torch.float32)
    return dk, dv, dbeta, dg, dM


def _wy_gk_bwd_parts_torch(k, v, beta, A, g, M, dw, du, cu_seqlens=None, chunk_size=64, dk0=None):
    B, T, H, K = k.shape
    f32 = dict(device=k.device, dtype=torch.float32)
    dk, dg = torch.empty(B, T, H, K, **f32), torch.empty(B, T, H, K, **f32)
    dv = torch.empty_like(v)
    dbeta = torch.empty(B, T, H, **f32)
    dM = torch.zeros(B, T, H, chunk_size, **f32)
    for b, start, end, _ in _torch_chunks(k, cu_seqlens, chunk_size):
        L = end - start
        sl = slice(start, end)
        Ac = A[b, sl, :, :L].float().permute(1, 0, 2)  # [H, t, s]
        Mc = M[b, sl, :, :L].float().permute(1, 0, 2)
        bc = beta[b, sl].float()  # [t, H]
        kc, vc, eg = k[b, sl].float(), v[b, sl].float(), g[b, sl].float().exp()
        dwc, duc = dw[b, sl].float(), du[b, sl].float()
        x, y = kc * eg * bc[..., None], vc * bc[..., None]
        dx = torch.einsum("hts,thk->shk", Ac, dwc)
        dy = torch.einsum("hts,thv->shv", Ac, duc)
        dAc = torch.einsum("thk,shk->hts", dwc, x) + torch.einsum("thv,shv->hts", duc, y)
        At = Ac.transpose(-1, -2)
        dL = -(At @ dAc @ At) * torch.ones(L, L, device=k.device).tril(-1)
        dk[b, sl] = dx * eg * bc[..., None] + (dk0[b, sl].float() if dk0 is not None else 0.)
        dg[b, sl] = dx * x
        dv[b, sl] = (dy * bc[..., None]).to(dv.dtype)
        dbeta[b, sl] = (dx * kc * eg).sum(-1) + (dy * vc).sum(-1) + (dL * Mc).sum(-1).transpose(0, 1)
        dM[b, sl, :, :L] = (dL * bc.transpose(0, 1)[..., None]).permute(1, 0, 2)
    return dk, dv, dbeta, dg, dM


_kkt_gk = dispatch(_kkt_gk_triton, _kkt_gk_torch)
_w_u_gk = dispatch(_w_u_gk_triton, _w_u_gk_torch)
_wy_gk_bwd_parts = dispatch(_wy_gk_bwd_parts_triton, _wy_gk_bwd_parts_torch)


# ----------------------------------------------------------------------------------------------------------------------
# Public blocks
# ----------------------------------------------------------------------------------------------------------------------

def chunk_kkt_gk_fwd(
    k: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor | None = None,
    q: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    chunk_size: int = 64,
    strict: bool = True,
) -> torch.Tensor:
    """The per-channel gated product of a chunk with itself, computed stably (see the module docstring):
    M_ts = [beta_t] sum_c q_tc k_sc exp(G_tc - G_sc) on s < t (s <= t with strict=False), zero elsewhere.

    Args:
        k: [B, T, H, K]; q: [B, T, H, K] the row operand (default k: K K^T)
        g: [B, T, H, K] chunk-local cumsum of the log gates (float32, `chunk_local_cumsum`), non-increasing in t
        beta: [B, T, H] row scale, or None
        chunk_size: 16, 32 or 64 (multiples of the 16-row sub-chunk)
    Returns:
        M: [B, T, H, BT] float32, row layout (token t's row of its chunk; columns past the chunk's end are 0)
    """
    if chunk_size % BC or chunk_size > 64:
        raise ValueError(f"chunk_size must be 16, 32 or 64 (got {chunk_size})")
    return _kkt_gk(k.contiguous(), g.contiguous(), beta, q.contiguous() if q is not None else None, cu_seqlens,
                   chunk_size, strict)


def chunk_kkt_gk_bwd(
    k: torch.Tensor,
    g: torch.Tensor,
    dM: torch.Tensor,
    q: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Gradients of the un-scaled M = `chunk_kkt_gk_fwd(k, g, q=q)` (beta = None: a caller with a row scale passes
    beta_t dL_ts as dM) given dM [B, T, H, BT] (zero where M is structurally zero).

    Returns:
        dk [B, T, H, K] float32 (with q = None: both roles of k summed), dq (None when q is None),
        dg [B, T, H, K] float32 w.r.t. the cumsum G
    """
    qq = q if q is not None else k
    dq_i, dk_i = chunk_gk_bwd_dqk_intra(qq, k, g, dM, cu_seqlens, chunk_size)
    dg = qq.float() * dq_i - k.float() * dk_i
    if q is None:
        return dq_i + dk_i, None, dg
    return dk_i, dq_i, dg


def recompute_w_u_gk_fwd(k, v, beta, A, g, cu_seqlens=None, chunk_size=64) -> tuple[torch.Tensor, torch.Tensor]:
    """w = A (beta k exp(G)) [B, T, H, K] in k's dtype; u = A (beta v) [B, T, H, V] in v's dtype.

    Args:
        k: [B, T, H, K]; v: [B, T, H, V]; beta: [B, T, H]; A: [B, T, H, BT] (`solve_tril` of diag(beta) M);
        g: [B, T, H, K] float32 chunk-local cumsum
    """
    return _w_u_gk(k, v, beta, A, g, cu_seqlens, chunk_size)


def prepare_wy_repr_gk_bwd(k, v, beta, A, g, dw, du, M=None, cu_seqlens=None, chunk_size=64, dk0=None):
    """Gradients of w = A (beta k exp(G)) and u = A (beta v) through A = (I + diag(beta) M)^{-1} as well.

    Args:
        k, v, beta, A, g as in `recompute_w_u_gk_fwd`; dw: [B, T, H, K]; du: [B, T, H, V]
        M: [B, T, H, BT] `chunk_kkt_gk_fwd(k, g)` without beta (recomputed when None)
        dk0: [B, T, H, K] the caller's other part of dk (e.g. through the output and the state), added in the kernel
    Returns:
        dk [B, T, H, K] float32 (dk0 included), dv [B, T, H, V] (v's dtype), dbeta [B, T, H] float32,
        dg [B, T, H, K] float32 w.r.t. the cumsum G
    """
    if M is None:
        M = chunk_kkt_gk_fwd(k, g, cu_seqlens=cu_seqlens, chunk_size=chunk_size)
    dk, dv, dbeta, dg, dM = _wy_gk_bwd_parts(k, v, beta, A, g, M, dw, du, cu_seqlens, chunk_size, dk0)
    # M's part of dk and dg, added in place by the intra-chunk kernel (no extra passes over [B, T, H, K])
    dk, dg = chunk_gk_bwd_dqk_intra(k, k, g, dM, cu_seqlens, chunk_size, dk_add=dk, dg_add=dg)
    return dk, dv, dbeta, dg
