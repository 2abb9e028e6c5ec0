"""The WY representation of the delta rule within a chunk, shared by the delta-rule families.

Per head and chunk (tokens t, s of one chunk; G the chunk-local cumsum of the log gates, G = 0 without a gate):
    L_ts = beta_t (k_t . k_s) exp(G_t - G_s)  for s < t, else 0          (`chunk_scaled_dot_kkt_fwd`)
    A    = (I + L)^{-1}, unit lower-triangular                            (`solve_tril`)
    w    = A (beta * k * exp(G)),   u = A (beta * v)                       (`recompute_w_u_fwd`)
so that the values the chunk writes into the state are v_new = u - w h (h the state entering the chunk; see
`delta_h.py`). Backward (`prepare_wy_repr_bwd`), from dw and du:
    x = beta k exp(G), y = beta v:   dx = A^T dw, dy = A^T du, dA = dw x^T + du y^T, dL = -(A^T dA A^T) on s < t
    dk = beta exp(G) dx + P k + P^T k  with P_ts = dL_ts beta_t exp(G_t - G_s)
    dv = beta dy;   dbeta = sum(k exp(G) dx) + sum(v dy) + sum_s dL_ts (k_t . k_s) exp(G_t - G_s)
    dG = sum(x dx) + rowsum(dL * L) - colsum(dL * L)     (the gradient w.r.t. the cumsum G)

Layouts: k, w [B, T, H, K]; v, u [B, T, H, V]; beta, g [B, T, H]; L and A float32 [B, T, H, BT]: token t's row of
its chunk's matrix, column s = position within the chunk (rows and columns past a sequence end are zero / identity).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
# tl.sum is itself a @jit function: under the interpreter every call re-patches triton.language (~5 ms), which
# dominates a per-token loop. tl.reduce with the standard combine is the same reduction and takes numpy's fast path.
from triton.language.standard import _sum_combine

from fla.ops.utils.dispatch import autotune, dispatch, tensor_core_dtype
from fla.ops.utils.index import for_each_sequence, prepare_chunk_indices

# ----------------------------------------------------------------------------------------------------------------------
# PyTorch twins, on whole chunks ([B, NT, BT, H, *] views), one sequence at a time under varlen.
# ----------------------------------------------------------------------------------------------------------------------


def to_chunks(x: torch.Tensor | None, chunk_size: int, edge: bool = False) -> torch.Tensor | None:
    """[B, T, H, *] -> float32 [B, NT, BT, H, *], zero padded (edge: repeat the last row, for gate cumsums)."""
    if x is None:
        return None
    B, T = x.shape[:2]
    NT = triton.cdiv(T, chunk_size)
    x = x.float()
    pad = NT * chunk_size - T
    if pad:
        fill = x[:, -1:].expand(B, pad, *x.shape[2:]) if edge else x.new_zeros(B, pad, *x.shape[2:])
        x = torch.cat([x, fill], 1)
    return x.view(B, NT, chunk_size, *x.shape[2:])


def from_chunks(x: torch.Tensor, T: int) -> torch.Tensor:
    """[B, NT, BT, H, *] -> [B, T, H, *]."""
    return x.flatten(1, 2)[:, :T]


def _gate_ratio(G: torch.Tensor | None, chunk_size: int, strict: bool, device) -> torch.Tensor:
    """[B, NT, H, BT(t), BT(s)] exp(G_t - G_s) on s < t (s <= t unless strict), else 0."""
    mask = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=device).tril(-1 if strict else 0)
    if G is None:
        return mask.float()
    Gh = G.transpose(2, 3)
    return torch.where(mask, Gh[..., :, None] - Gh[..., None, :], float("-inf")).exp()


def _rows_to_matrix(A: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """[B, T, H, BT] row layout -> [B, NT, H, BT, BT]."""
    return to_chunks(A, chunk_size).transpose(2, 3)


def _matrix_to_rows(M: torch.Tensor, T: int) -> torch.Tensor:
    return from_chunks(M.transpose(2, 3), T)


def _kkt_torch(k, beta, g=None, cu_seqlens=None, chunk_size=64):
    B, T, H, _ = k.shape
    L = k.new_empty(B, T, H, chunk_size, dtype=torch.float32)

    def one(k, beta, g):
        kc, bc = to_chunks(k, chunk_size), to_chunks(beta, chunk_size)
        M = torch.einsum("bnthk,bnshk->bnhts", kc, kc) * _gate_ratio(to_chunks(g, chunk_size, True), chunk_size,
                                                                       True, k.device)
        return (_matrix_to_rows(M * bc.transpose(2, 3)[..., None], k.shape[1]),)

    for_each_sequence(one, cu_seqlens, (k, beta, g), (L,))
    return L


def _solve_tril_torch(L, cu_seqlens=None, chunk_size=64, output_dtype=torch.float32):
    B, T = L.shape[:2]
    A = torch.empty_like(L, dtype=output_dtype)

    def one(L):
        M = _rows_to_matrix(L, chunk_size)
        eye = torch.eye(chunk_size, device=L.device)
        inv = torch.linalg.solve_triangular(M + eye, eye.expand_as(M), upper=False, unitriangular=True)
        return (_matrix_to_rows(inv, L.shape[1]),)

    for_each_sequence(one, cu_seqlens, (L,), (A,))
    return A


def _recompute_w_u_torch(k, v, beta, A, g=None, cu_seqlens=None, chunk_size=64):
    B, T = k.shape[:2]
    w, u = torch.empty_like(k), torch.empty_like(v)

    def one(k, v, beta, A, g):
        bc = to_chunks(beta, chunk_size)[..., None]
        x = to_chunks(k, chunk_size) * bc
        if g is not None:
            x = x * to_chunks(g, chunk_size, True).exp()[..., None]
        M = _rows_to_matrix(A, chunk_size)
        T = k.shape[1]
        return (from_chunks(torch.einsum("bnhts,bnshk->bnthk", M, x), T),
                from_chunks(torch.einsum("bnhts,bnshv->bnthv", M, to_chunks(v, chunk_size) * bc), T))

    for_each_sequence(one, cu_seqlens, (k, v, beta, A, g), (w, u))
    return w, u


def _wy_bwd_torch(k, v, beta, A, dw, du, g=None, cu_seqlens=None, chunk_size=64):
    B, T = k.shape[:2]
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    dbeta = torch.empty_like(beta, dtype=torch.float32)
    dg = torch.empty_like(g, dtype=torch.float32) if g is not None else None

    def one(k, v, beta, A, dw, du, g):
        T = k.shape[1]
        kc, vc, bc = to_chunks(k, chunk_size), to_chunks(v, chunk_size), to_chunks(beta, chunk_size)
        G = to_chunks(g, chunk_size, True)
        eg = G.exp()[..., None] if G is not None else torch.ones_like(bc)[..., None]
        M = _rows_to_matrix(A, chunk_size)
        x, y = kc * bc[..., None] * eg, vc * bc[..., None]
        dx = torch.einsum("bnhts,bnthk->bnshk", M, to_chunks(dw, chunk_size))
        dy = torch.einsum("bnhts,bnthv->bnshv", M, to_chunks(du, chunk_size))
        dA = torch.einsum("bnthk,bnshk->bnhts", to_chunks(dw, chunk_size), x) \
            + torch.einsum("bnthv,bnshv->bnhts", to_chunks(du, chunk_size), y)
        ratio = _gate_ratio(G, chunk_size, True, k.device)
        dL = -(M.transpose(-1, -2) @ dA @ M.transpose(-1, -2)) * (ratio > 0)
        kk = torch.einsum("bnthk,bnshk->bnhts", kc, kc)
        P = dL * ratio * bc.transpose(2, 3)[..., None]
        dkc = bc[..., None] * eg * dx + torch.einsum("bnhts,bnshk->bnthk", P, kc) \
            + torch.einsum("bnhts,bnthk->bnshk", P, kc)
        dbc = (kc * eg * dx).sum(-1) + (vc * dy).sum(-1) + (dL * kk * ratio).sum(-1).transpose(2, 3)
        dgc = None
        if G is not None:
            DL = dL * kk * ratio * bc.transpose(2, 3)[..., None]
            dgc = from_chunks((x * dx).sum(-1) + (DL.sum(-1) - DL.sum(-2)).transpose(2, 3), T)
        return from_chunks(dkc, T), from_chunks(bc[..., None] * dy, T), from_chunks(dbc, T), dgc

    for_each_sequence(one, cu_seqlens, (k, v, beta, A, dw, du, g), (dk, dv, dbeta, dg))
    return dk, dv, dbeta.to(beta.dtype), dg



# ----------------------------------------------------------------------------------------------------------------------
# Triton kernels: one program per (chunk, batch * head); under cu_seqlens the chunk axis is the flat list of
# (sequence, chunk) pairs from `prepare_chunk_indices`. Layouts: k [B, T, H, K] (row stride H*K), v [B, T, H, V],
# beta/g [B, T, H], L/A [B, T, H, BT] (row stride H*BT). Rows past the sequence end are masked (zero in, not stored).
# ----------------------------------------------------------------------------------------------------------------------

_HEURISTICS = {
    "USE_G": lambda args: args["g"] is not None,
    "IS_VARLEN": lambda args: args["cu_seqlens"] is not None,
}
_CONFIGS = [triton.Config({}, num_warps=w, num_stages=s) for w in (4, 2, 8) for s in (2, 3, 4, 1)]
# wy_bwd holds dk, dv, dA and the [BT, BT] products at once, and chunk_kkt_solve nine 16 x 16 blocks next to the
# [4, 16, 16] stack: at 4 warps they reached 255 registers with 80 B and 8-24 B of spills (sm_90, K = V = 128,
# bf16); at 8 warps 236 / 0 and 138 / 0. So their configs start at 8 warps. (wy_bwd in float32, with its
# non-tensor-core dots, still spills: 2.6 KB at 8 warps, 4.6 KB at 4.)
_WIDE_CONFIGS = [triton.Config({}, num_warps=w, num_stages=s) for w in (8, 4) for s in (2, 3, 4, 1)]


@triton.jit
def _chunk_rows(i_t, i_b, cu_seqlens, chunk_indices, T, BT: tl.constexpr, IS_VARLEN: tl.constexpr):
    """(first token row of the sequence, chunk index within it, sequence length)."""
    if IS_VARLEN:
        i_n = tl.load(chunk_indices + i_t * 2).to(tl.int32)
        i_t = tl.load(chunk_indices + i_t * 2 + 1).to(tl.int32)
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        T = (tl.load(cu_seqlens + i_n + 1).to(tl.int64) - bos).to(tl.int32)
    else:
        bos = (i_b * T).to(tl.int64)
    return bos, i_t, T


@triton.heuristics(_HEURISTICS)
@autotune(_CONFIGS, key=["H", "K", "BT", "USE_G", "IS_VARLEN"])
@triton.jit
def chunk_scaled_dot_kkt_kernel(
    k, beta, g, L, cu_seqlens, chunk_indices,
    T, H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    USE_G: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    bos, i_t, T = _chunk_rows(i_t, i_b, cu_seqlens, chunk_indices, T, BT, IS_VARLEN)
    o_i = tl.arange(0, BT)
    o_t = i_t * BT + o_i
    m_t = o_t < T
    rows = bos + o_t
    b_A = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in range(tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        b_k = tl.load(k + (rows[:, None] * H + i_h) * K + o_k[None, :], mask=m_t[:, None] & m_k[None, :], other=0.)
        b_A += tl.dot(b_k, tl.trans(b_k))
    b_beta = tl.load(beta + rows * H + i_h, mask=m_t, other=0.).to(tl.float32)
    m_A = (o_i[:, None] > o_i[None, :]) & m_t[:, None] & m_t[None, :]
    if USE_G:
        b_g = tl.load(g + rows * H + i_h, mask=m_t, other=0.)
        b_A *= tl.exp(tl.where(m_A, b_g[:, None] - b_g[None, :], 0.))
    b_A = tl.where(m_A, b_A * b_beta[:, None], 0.)
    tl.store(L + (rows[:, None] * H + i_h) * BT + o_i[None, :], b_A, mask=m_t[:, None])


@triton.jit
def _store_inverse(A, bos, i_t, i_h, T, b_D, L10, L20, L21, L30, L31, L32,
                   H: tl.constexpr, BT: tl.constexpr, PREC: tl.constexpr):
    """Store A = (I + L)^{-1} of one chunk's unit lower-triangular BT x BT block (BT in 16, 32, 64), from its
    strictly lower diagonal 16 x 16 blocks b_D [4, 16, 16] (entries past BT // 16 zero) and its off-diagonal blocks
    L_ij [16, 16] (those past BT unused), all float32:
    1. the (up to 4) diagonal blocks at once, by forward substitution with vector ops:
       row i of X_bb - I is -L_i + sum_{j < i} (-L_ij) (row j of X_bb - I);
    2. block forward substitution for the rest: X_ij = -X_ii sum_{j <= m < i} L_im X_mj, with dots in PREC
       ("ieee": tf32 would cost ~3 digits in A, which every later block multiplies).
    Rows past the sequence end are not stored; the blocks above the diagonal are stored as zeros."""
    o_b = tl.arange(0, 4)
    o_r = tl.arange(0, 16)
    r3 = i_t * BT + o_b[:, None, None] * 16 + o_r[None, :, None]  # [4, 16, 1] position in the sequence
    m_d = (r3 < T) & (o_b[:, None, None] < BT // 16)
    p_d = ((bos + r3) * H + i_h) * BT + o_b[:, None, None] * 16 + o_r[None, None, :]
    b_X = tl.where(o_r[None, :, None] > o_r[None, None, :], -b_D, 0.)
    for i in range(1, 16):
        sel = (o_r == i)[None, :, None]
        b_a = tl.reduce(tl.where(sel, b_X, 0.), 1, _sum_combine)
        b_a += tl.reduce(b_a[:, :, None] * b_X, 1, _sum_combine)
        b_X = tl.where(sel, b_a[:, None, :], b_X)
    b_X += tl.where(o_r[:, None] == o_r[None, :], 1., 0.)[None, :, :]
    tl.store(A + p_d, b_X.to(A.dtype.element_ty), mask=m_d)
    if BT > 16:
        z = tl.zeros([16, 16], dtype=A.dtype.element_ty)
        # [16, 16] offsets of row block j, column block 0, and its row mask.
        r = i_t * BT + o_r
        p0, m0 = ((bos + r[:, None]) * H + i_h) * BT + o_r[None, :], (r < T)[:, None]
        p1, m1 = p0 + 16 * H * BT, (r + 16 < T)[:, None]
        X00 = tl.reduce(tl.where((o_b == 0)[:, None, None], b_X, 0.), 0, _sum_combine)
        X11 = tl.reduce(tl.where((o_b == 1)[:, None, None], b_X, 0.), 0, _sum_combine)
        X10 = -tl.dot(X11, tl.dot(L10, X00, input_precision=PREC), input_precision=PREC)
        tl.store(A + p1, X10.to(A.dtype.element_ty), mask=m1)
        tl.store(A + p0 + 16, z, mask=m0)
        if BT > 32:
            p2, m2 = p0 + 32 * H * BT, (r + 32 < T)[:, None]
            p3, m3 = p0 + 48 * H * BT, (r + 48 < T)[:, None]
            X22 = tl.reduce(tl.where((o_b == 2)[:, None, None], b_X, 0.), 0, _sum_combine)
            X33 = tl.reduce(tl.where((o_b == 3)[:, None, None], b_X, 0.), 0, _sum_combine)
            X21 = -tl.dot(X22, tl.dot(L21, X11, input_precision=PREC), input_precision=PREC)
            S20 = tl.dot(L20, X00, input_precision=PREC) + tl.dot(L21, X10, input_precision=PREC)
            X20 = -tl.dot(X22, S20, input_precision=PREC)
            X32 = -tl.dot(X33, tl.dot(L32, X22, input_precision=PREC), input_precision=PREC)
            S31 = tl.dot(L31, X11, input_precision=PREC) + tl.dot(L32, X21, input_precision=PREC)
            X31 = -tl.dot(X33, S31, input_precision=PREC)
            S30 = tl.dot(L30, X00, input_precision=PREC) + tl.dot(L31, X10, input_precision=PREC) \
                + tl.dot(L32, X20, input_precision=PREC)
            X30 = -tl.dot(X33, S30, input_precision=PREC)
            tl.store(A + p2, X20.to(A.dtype.element_ty), mask=m2)
            tl.store(A + p2 + 16, X21.to(A.dtype.element_ty), mask=m2)
            tl.store(A + p3, X30.to(A.dtype.element_ty), mask=m3)
            tl.store(A + p3 + 16, X31.to(A.dtype.element_ty), mask=m3)
            tl.store(A + p3 + 32, X32.to(A.dtype.element_ty), mask=m3)
            tl.store(A + p0 + 32, z, mask=m0)
            tl.store(A + p0 + 48, z, mask=m0)
            tl.store(A + p1 + 32, z, mask=m1)
            tl.store(A + p1 + 48, z, mask=m1)
            tl.store(A + p2 + 48, z, mask=m2)


@triton.heuristics({"IS_VARLEN": lambda args: args["cu_seqlens"] is not None})
@autotune(_CONFIGS, key=["H", "BT", "IS_VARLEN"])
@triton.jit
def solve_tril_kernel(
    L, A, cu_seqlens, chunk_indices,
    T, H: tl.constexpr, BT: tl.constexpr, IS_VARLEN: tl.constexpr, PREC: tl.constexpr,
):
    # (I + L)^{-1} of a given L (see `_store_inverse`): load its 16 x 16 blocks, invert, store.
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    bos, i_t, T = _chunk_rows(i_t, i_b, cu_seqlens, chunk_indices, T, BT, IS_VARLEN)
    o_b = tl.arange(0, 4)
    o_r = tl.arange(0, 16)
    r3 = i_t * BT + o_b[:, None, None] * 16 + o_r[None, :, None]
    m_d = (r3 < T) & (o_b[:, None, None] < BT // 16)
    b_D = tl.load(L + ((bos + r3) * H + i_h) * BT + o_b[:, None, None] * 16 + o_r[None, None, :], mask=m_d, other=0.)
    r = i_t * BT + o_r
    p0 = L + ((bos + r[:, None]) * H + i_h) * BT + o_r[None, :]
    L10 = tl.zeros([16, 16], dtype=tl.float32)
    L20, L21, L30, L31, L32 = L10, L10, L10, L10, L10
    if BT > 16:
        L10 = tl.load(p0 + 16 * H * BT, mask=(r + 16 < T)[:, None], other=0.)
    if BT > 32:
        m2, m3 = (r + 32 < T)[:, None], (r + 48 < T)[:, None]
        L20 = tl.load(p0 + 32 * H * BT, mask=m2, other=0.)
        L21 = tl.load(p0 + 32 * H * BT + 16, mask=m2, other=0.)
        L30 = tl.load(p0 + 48 * H * BT, mask=m3, other=0.)
        L31 = tl.load(p0 + 48 * H * BT + 16, mask=m3, other=0.)
        L32 = tl.load(p0 + 48 * H * BT + 32, mask=m3, other=0.)
    _store_inverse(A, bos, i_t, i_h, T, b_D, L10, L20, L21, L30, L31, L32, H, BT, PREC)


@triton.jit
def _kkt_block(k, beta, g, bos, i_h, T, r_i, r_j, K: tl.constexpr, H: tl.constexpr, BK: tl.constexpr,
               USE_G: tl.constexpr):
    """L_ij [16, 16] for rows r_i and columns r_j (positions in the sequence) of one chunk, i != j block rows:
    beta_t (k_t . k_s) exp(G_t - G_s), zero where a row or column is past the sequence end."""
    m_i, m_j = r_i < T, r_j < T
    b_L = tl.zeros([16, 16], dtype=tl.float32)
    for i_k in range(tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        b_ki = tl.load(k + ((bos + r_i)[:, None] * H + i_h) * K + o_k[None, :], mask=m_i[:, None] & m_k[None, :],
                       other=0.)
        b_kj = tl.load(k + ((bos + r_j)[:, None] * H + i_h) * K + o_k[None, :], mask=m_j[:, None] & m_k[None, :],
                       other=0.)
        b_L += tl.dot(b_ki, tl.trans(b_kj))
    b_beta = tl.load(beta + (bos + r_i) * H + i_h, mask=m_i, other=0.).to(tl.float32)
    b_L *= b_beta[:, None]
    if USE_G:
        b_gi = tl.load(g + (bos + r_i) * H + i_h, mask=m_i, other=0.)
        b_gj = tl.load(g + (bos + r_j) * H + i_h, mask=m_j, other=0.)
        b_L *= tl.exp(tl.where(m_i[:, None] & m_j[None, :], b_gi[:, None] - b_gj[None, :], 0.))
    return tl.where(m_i[:, None] & m_j[None, :], b_L, 0.)


@triton.heuristics(_HEURISTICS)
@autotune(_WIDE_CONFIGS, key=["H", "K", "BT", "USE_G", "IS_VARLEN"])
@triton.jit
def chunk_kkt_solve_kernel(
    k, beta, g, A, cu_seqlens, chunk_indices,
    T, H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    USE_G: tl.constexpr, IS_VARLEN: tl.constexpr, PREC: tl.constexpr,
):
    # A = (I + L)^{-1} straight from k, beta, g: L's 16 x 16 blocks are built in registers (the diagonal ones as one
    # [4, 16, 16] batched product) and inverted there, so L never goes through memory (one float32 [B, T, H, BT]
    # write and read fewer than chunk_scaled_dot_kkt + solve_tril).
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    bos, i_t, T = _chunk_rows(i_t, i_b, cu_seqlens, chunk_indices, T, BT, IS_VARLEN)
    o_b = tl.arange(0, 4)
    o_r = tl.arange(0, 16)
    rows = i_t * BT + o_b[:, None, None] * 16 + o_r[None, :, None]  # [4, 16, 1]
    cols = i_t * BT + o_b[:, None, None] * 16 + o_r[None, None, :]  # [4, 1, 16]
    m_rows = (rows < T) & (o_b[:, None, None] < BT // 16)
    m_cols = (cols < T) & (o_b[:, None, None] < BT // 16)
    b_D = tl.zeros([4, 16, 16], dtype=tl.float32)
    for i_k in range(tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        b_k = tl.load(k + ((bos + rows) * H + i_h) * K + o_k[None, None, :],
                      mask=m_rows & (o_k < K)[None, None, :], other=0.)  # [4, 16, BK]
        b_D += tl.dot(b_k, tl.permute(b_k, (0, 2, 1)))
    b_beta = tl.load(beta + (bos + rows) * H + i_h, mask=m_rows, other=0.).to(tl.float32)
    b_D *= b_beta
    m_D = m_rows & m_cols & (o_r[None, :, None] > o_r[None, None, :])
    if USE_G:
        b_gr = tl.load(g + (bos + rows) * H + i_h, mask=m_rows, other=0.)
        b_gc = tl.load(g + (bos + cols) * H + i_h, mask=m_cols, other=0.)
        b_D *= tl.exp(tl.where(m_D, b_gr - b_gc, 0.))
    b_D = tl.where(m_D, b_D, 0.)
    r = i_t * BT + o_r
    L10 = tl.zeros([16, 16], dtype=tl.float32)
    L20, L21, L30, L31, L32 = L10, L10, L10, L10, L10
    if BT > 16:
        L10 = _kkt_block(k, beta, g, bos, i_h, T, r + 16, r, K, H, BK, USE_G)
    if BT > 32:
        L20 = _kkt_block(k, beta, g, bos, i_h, T, r + 32, r, K, H, BK, USE_G)
        L21 = _kkt_block(k, beta, g, bos, i_h, T, r + 32, r + 16, K, H, BK, USE_G)
        L30 = _kkt_block(k, beta, g, bos, i_h, T, r + 48, r, K, H, BK, USE_G)
        L31 = _kkt_block(k, beta, g, bos, i_h, T, r + 48, r + 16, K, H, BK, USE_G)
        L32 = _kkt_block(k, beta, g, bos, i_h, T, r + 48, r + 32, K, H, BK, USE_G)
    _store_inverse(A, bos, i_t, i_h, T, b_D, L10, L20, L21, L30, L31, L32, H, BT, PREC)


@triton.heuristics(_HEURISTICS)
@autotune(_CONFIGS, key=["H", "K", "V", "BT", "USE_G", "IS_VARLEN"])
@triton.jit
def recompute_w_u_kernel(
    k, v, beta, A, g, w, u, cu_seqlens, chunk_indices,
    T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_G: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    bos, i_t, T = _chunk_rows(i_t, i_b, cu_seqlens, chunk_indices, T, BT, IS_VARLEN)
    o_i = tl.arange(0, BT)
    o_t = i_t * BT + o_i
    m_t = o_t < T
    rows = bos + o_t
    b_A = tl.load(A + (rows[:, None] * H + i_h) * BT + o_i[None, :], mask=m_t[:, None], other=0.)
    b_beta = tl.load(beta + rows * H + i_h, mask=m_t, other=0.).to(tl.float32)
    b_kb = b_beta
    if USE_G:
        b_kb *= tl.exp(tl.load(g + rows * H + i_h, mask=m_t, other=0.))
    for i_v in range(tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m = m_t[:, None] & (o_v < V)[None, :]
        p = (rows[:, None] * H + i_h) * V + o_v[None, :]
        b_v = tl.load(v + p, mask=m, other=0.)
        b_u = tl.dot(b_A.to(b_v.dtype), (b_v * b_beta[:, None]).to(b_v.dtype))
        tl.store(u + p, b_u.to(u.dtype.element_ty), mask=m)
    for i_k in range(tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m = m_t[:, None] & (o_k < K)[None, :]
        p = (rows[:, None] * H + i_h) * K + o_k[None, :]
        b_k = tl.load(k + p, mask=m, other=0.)
        b_w = tl.dot(b_A.to(b_k.dtype), (b_k * b_kb[:, None]).to(b_k.dtype))
        tl.store(w + p, b_w.to(w.dtype.element_ty), mask=m)


@triton.heuristics(_HEURISTICS)
@autotune(_WIDE_CONFIGS, key=["H", "K", "V", "BT", "USE_G", "IS_VARLEN"])
@triton.jit
def wy_bwd_kernel(
    k, v, beta, A, g, dw, du, dk, dv, dbeta, dg, cu_seqlens, chunk_indices,
    T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_G: tl.constexpr, IS_VARLEN: tl.constexpr, A_IS_FP32: tl.constexpr,
):
    # See the module docstring for the formulas; x = beta k exp(G), y = beta v.
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    bos, i_t, T = _chunk_rows(i_t, i_b, cu_seqlens, chunk_indices, T, BT, IS_VARLEN)
    o_i = tl.arange(0, BT)
    o_t = i_t * BT + o_i
    m_t = o_t < T
    rows = bos + o_t
    b_A_raw = tl.load(A + (rows[:, None] * H + i_h) * BT + o_i[None, :], mask=m_t[:, None], other=0.)
    b_A = b_A_raw.to(tl.float32)
    b_beta = tl.load(beta + rows * H + i_h, mask=m_t, other=0.).to(tl.float32)
    b_eg = tl.where(m_t, 1., 0.)
    if USE_G:
        b_g = tl.load(g + rows * H + i_h, mask=m_t, other=0.)
        b_eg = tl.exp(b_g)
    b_dA = tl.zeros([BT, BT], dtype=tl.float32)
    b_kk = tl.zeros([BT, BT], dtype=tl.float32)
    b_dbeta = tl.zeros([BT], dtype=tl.float32)
    b_dg = tl.zeros([BT], dtype=tl.float32)
    for i_v in range(tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m = m_t[:, None] & (o_v < V)[None, :]
        p = (rows[:, None] * H + i_h) * V + o_v[None, :]
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
        p = (rows[:, None] * H + i_h) * K + o_k[None, :]
        b_k = tl.load(k + p, mask=m, other=0.)
        b_dw = tl.load(dw + p, mask=m, other=0.)
        b_x = (b_k * (b_beta * b_eg)[:, None]).to(b_k.dtype)
        b_dA += tl.dot(b_dw.to(b_k.dtype), tl.trans(b_x))
        b_kk += tl.dot(b_k, tl.trans(b_k))
        b_dx = tl.dot(tl.trans(b_A).to(b_dw.dtype), b_dw)
        b_dbeta += tl.reduce(b_dx * b_k * b_eg[:, None], 1, _sum_combine)
        if USE_G:
            b_dg += tl.reduce(b_dx * b_x, 1, _sum_combine)
    # dL = -(A^T dA A^T) on the strict lower triangle of valid rows.
    m_A = (o_i[:, None] > o_i[None, :]) & m_t[:, None] & m_t[None, :]
    # In A's dtype: true float32 when A is float32 (tf32 would cost ~3 digits), else half-precision tensor cores, as
    # precise as the stored A.
    if A_IS_FP32:
        b_At = tl.trans(b_A)
        b_dL = tl.dot(tl.dot(b_At, b_dA, input_precision="ieee"), b_At, input_precision="ieee")
    else:
        b_At = tl.trans(b_A_raw)
        b_dL = tl.dot(tl.dot(b_At, b_dA.to(b_At.dtype)).to(b_At.dtype), b_At)
    b_dL = tl.where(m_A, -b_dL, 0.)
    if USE_G:
        b_ratio = tl.where(m_A, tl.exp(tl.where(m_A, b_g[:, None] - b_g[None, :], 0.)), 0.)
    else:
        b_ratio = tl.where(m_A, 1., 0.)
    b_dLk = b_dL * b_ratio  # d/d(k_t . k_s) without beta
    b_dbeta += tl.reduce(b_dLk * b_kk, 1, _sum_combine)
    b_P = b_dLk * b_beta[:, None]
    if USE_G:
        b_DL = b_P * b_kk
        b_dg += tl.reduce(b_DL, 1, _sum_combine) - tl.reduce(b_DL, 0, _sum_combine)
        tl.store(dg + rows * H + i_h, b_dg, mask=m_t)
    tl.store(dbeta + rows * H + i_h, b_dbeta, mask=m_t)
    for i_k in range(tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m = m_t[:, None] & (o_k < K)[None, :]
        p = (rows[:, None] * H + i_h) * K + o_k[None, :]
        b_k = tl.load(k + p, mask=m, other=0.)
        b_dw = tl.load(dw + p, mask=m, other=0.)
        b_dx = tl.dot(tl.trans(b_A).to(b_dw.dtype), b_dw)
        b_dk = b_dx * (b_beta * b_eg)[:, None] + tl.dot(b_P.to(b_k.dtype), b_k)
        b_dk += tl.dot(tl.trans(b_P).to(b_k.dtype), b_k)
        tl.store(dk + p, b_dk.to(dk.dtype.element_ty), mask=m)


def _grid(k, cu_seqlens, chunk_size):
    B, T, H = k.shape[:3]
    if cu_seqlens is None:
        return None, (triton.cdiv(T, chunk_size), B * H)
    chunk_indices = prepare_chunk_indices(cu_seqlens, chunk_size)
    return chunk_indices, (len(chunk_indices), B * H)


def _tc(*xs):
    """Operands of tl.dot: bf16 is upcast under the interpreter (it computes bf16 dots wrongly)."""
    return [x.to(tensor_core_dtype(x.dtype)) if x is not None else None for x in xs]


def _tiles(K: int, V: int) -> tuple[int, int]:
    return min(64, max(16, triton.next_power_of_2(K))), min(64, max(16, triton.next_power_of_2(V)))


def _kkt_triton(k, beta, g=None, cu_seqlens=None, chunk_size=64):
    B, T, H, K = k.shape
    L = torch.empty(B, T, H, chunk_size, device=k.device, dtype=torch.float32)
    (k,) = _tc(k)
    chunk_indices, grid = _grid(k, cu_seqlens, chunk_size)
    if grid[0]:
        chunk_scaled_dot_kkt_kernel[grid](k, beta, g, L, cu_seqlens, chunk_indices, T=T, H=H, K=K, BT=chunk_size,
                                          BK=_tiles(K, K)[0])
    return L


def _solve_tril_triton(L, cu_seqlens=None, chunk_size=64, output_dtype=torch.float32):
    if chunk_size not in (16, 32, 64):  # solve_tril_kernel merges at most 4 diagonal blocks of 16
        return _solve_tril_torch(L, cu_seqlens, chunk_size, output_dtype)
    B, T, H = L.shape[:3]
    A = torch.empty_like(L, dtype=output_dtype)
    chunk_indices, grid = _grid(L, cu_seqlens, chunk_size)
    if grid[0]:
        solve_tril_kernel[grid](L, A, cu_seqlens, chunk_indices, T=T, H=H, BT=chunk_size, PREC="ieee")
    return A


def _kkt_solve_triton(k, beta, g=None, cu_seqlens=None, chunk_size=64, output_dtype=torch.float32):
    if chunk_size not in (16, 32, 64):
        return _kkt_solve_torch(k, beta, g, cu_seqlens, chunk_size, output_dtype)
    B, T, H, K = k.shape
    A = torch.empty(B, T, H, chunk_size, device=k.device, dtype=output_dtype)
    (k,) = _tc(k)
    chunk_indices, grid = _grid(k, cu_seqlens, chunk_size)
    if grid[0]:
        chunk_kkt_solve_kernel[grid](k, beta, g, A, cu_seqlens, chunk_indices, T=T, H=H, K=K, BT=chunk_size,
                                     BK=_tiles(K, K)[0], PREC="ieee")
    return A


def _kkt_solve_torch(k, beta, g=None, cu_seqlens=None, chunk_size=64, output_dtype=torch.float32):
    return _solve_tril_torch(_kkt_torch(k, beta, g, cu_seqlens, chunk_size), cu_seqlens, chunk_size, output_dtype)


def _recompute_w_u_triton(k, v, beta, A, g=None, cu_seqlens=None, chunk_size=64):
    B, T, H, K = k.shape
    V = v.shape[-1]
    w, u = torch.empty_like(k), torch.empty_like(v)
    k, v = _tc(k, v)
    chunk_indices, grid = _grid(k, cu_seqlens, chunk_size)
    BK, BV = _tiles(K, V)
    if grid[0]:
        recompute_w_u_kernel[grid](k, v, beta, A, g, w, u, cu_seqlens, chunk_indices, T=T, H=H, K=K, V=V,
                                   BT=chunk_size, BK=BK, BV=BV)
    return w, u


def _wy_bwd_triton(k, v, beta, A, dw, du, g=None, cu_seqlens=None, chunk_size=64):
    B, T, H, K = k.shape
    V = v.shape[-1]
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    dbeta = torch.empty(B, T, H, device=k.device, dtype=torch.float32)
    dg = torch.empty(B, T, H, device=k.device, dtype=torch.float32) if g is not None else None
    k, v, A, dw, du = _tc(k, v, A, dw, du)
    chunk_indices, grid = _grid(k, cu_seqlens, chunk_size)
    BK, BV = _tiles(K, V)
    if grid[0]:
        wy_bwd_kernel[grid](k, v, beta, A, g, dw.contiguous(), du.contiguous(), dk, dv, dbeta, dg, cu_seqlens,
                            chunk_indices, T=T, H=H, K=K, V=V, BT=chunk_size, BK=BK, BV=BV,
                            A_IS_FP32=A.dtype == torch.float32)
    return dk, dv, dbeta.to(beta.dtype), dg

# ----------------------------------------------------------------------------------------------------------------------
# Public launchers
# ----------------------------------------------------------------------------------------------------------------------

_kkt = dispatch(_kkt_triton, _kkt_torch)
_solve_tril = dispatch(_solve_tril_triton, _solve_tril_torch)
_kkt_solve = dispatch(_kkt_solve_triton, _kkt_solve_torch)
_recompute_w_u = dispatch(_recompute_w_u_triton, _recompute_w_u_torch)
_wy_bwd = dispatch(_wy_bwd_triton, _wy_bwd_torch)


def chunk_scaled_dot_kkt_fwd(k, beta, g=None, cu_seqlens=None, chunk_size=64) -> torch.Tensor:
    """L_ts = beta_t (k_t . k_s) exp(G_t - G_s) for s < t within a chunk.

    Args:
        k: [B, T, H, K]; beta: [B, T, H]; g: [B, T, H] chunk-local cumsum of log gates (float32) or None
    Returns:
        L: [B, T, H, BT] float32 (strictly lower triangular per chunk, row layout)
    """
    return _kkt(k, beta, g, cu_seqlens, chunk_size)


def solve_tril(L, cu_seqlens=None, chunk_size=64, output_dtype=torch.float32) -> torch.Tensor:
    """A = (I + L)^{-1} per chunk for a strictly lower-triangular L in row layout [B, T, H, BT], solved in float32
    and stored in `output_dtype` (the chunk ops store it in k's dtype: its consumers multiply it in that dtype)."""
    return _solve_tril(L, cu_seqlens, chunk_size, output_dtype)


def chunk_kkt_solve(k, beta, g=None, cu_seqlens=None, chunk_size=64, output_dtype=torch.float32) -> torch.Tensor:
    """A = (I + L)^{-1} per chunk with L from `chunk_scaled_dot_kkt_fwd`, in one kernel (L stays in registers).

    Args:
        k: [B, T, H, K]; beta: [B, T, H]; g: [B, T, H] chunk-local cumsum of log gates (float32) or None
    Returns:
        A: [B, T, H, BT] in `output_dtype` (row layout, as `solve_tril`)
    """
    return _kkt_solve(k, beta, g, cu_seqlens, chunk_size, output_dtype)


def recompute_w_u_fwd(k, v, beta, A, g=None, cu_seqlens=None, chunk_size=64) -> tuple[torch.Tensor, torch.Tensor]:
    """w = A (beta k exp(G)) [B, T, H, K] in k's dtype; u = A (beta v) [B, T, H, V] in v's dtype."""
    return _recompute_w_u(k, v, beta, A, g, cu_seqlens, chunk_size)


def prepare_wy_repr_bwd(k, v, beta, A, dw, du, g=None, cu_seqlens=None, chunk_size=64):
    """Gradients of w = A (beta k exp(G)) and u = A (beta v), including through A = (I + L)^{-1} (the forward's A is
    passed in, not recomputed).

    Args:
        k, v, beta, g as in the forward; A: [B, T, H, BT] from `solve_tril`; dw: [B, T, H, K]; du: [B, T, H, V]

    Returns:
        dk [B, T, H, K] (k's dtype), dv [B, T, H, V] (v's dtype), dbeta [B, T, H] (beta's dtype),
        dg [B, T, H] float32 w.r.t. the cumsum G, or None without a gate
    """
    return _wy_bwd(k, v, beta, A, dw, du, g, cu_seqlens, chunk_size)
