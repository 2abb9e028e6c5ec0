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

from fla.ops.utils.dispatch import autotune, dispatch
from fla.ops.utils.index import prepare_chunk_indices, sequence_spans

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


def for_each_sequence(fn, cu_seqlens, B: int, T: int, inputs, outputs) -> None:
    """outputs[i][rows] = fn(*inputs[rows])[i] for the whole batch, or for each sequence of a packed batch."""
    spans = [(0, T)] if cu_seqlens is None else [(bos, eos) for _, bos, eos in sequence_spans(cu_seqlens, 1, T)]
    for bos, eos in spans:
        if eos == bos:
            continue
        results = fn(*[None if x is None else x[:, bos:eos] for x in inputs])
        for out, r in zip(outputs, results):
            if out is not None:
                out[:, bos:eos] = r


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

    for_each_sequence(one, cu_seqlens, B, T, (k, beta, g), (L,))
    return L


def _solve_tril_torch(L, cu_seqlens=None, chunk_size=64):
    B, T = L.shape[:2]
    A = torch.empty_like(L)

    def one(L):
        M = _rows_to_matrix(L, chunk_size)
        eye = torch.eye(chunk_size, device=L.device)
        inv = torch.linalg.solve_triangular(M + eye, eye.expand_as(M), upper=False, unitriangular=True)
        return (_matrix_to_rows(inv, L.shape[1]),)

    for_each_sequence(one, cu_seqlens, B, T, (L,), (A,))
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

    for_each_sequence(one, cu_seqlens, B, T, (k, v, beta, A, g), (w, u))
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

    for_each_sequence(one, cu_seqlens, B, T, (k, v, beta, A, dw, du, g), (dk, dv, dbeta, dg))
    return dk, dv, dbeta.to(beta.dtype), dg


# ----------------------------------------------------------------------------------------------------------------------
# Public launchers
# ----------------------------------------------------------------------------------------------------------------------

_kkt = dispatch(_kkt_torch, _kkt_torch)
_solve_tril = dispatch(_solve_tril_torch, _solve_tril_torch)
_recompute_w_u = dispatch(_recompute_w_u_torch, _recompute_w_u_torch)
_wy_bwd = dispatch(_wy_bwd_torch, _wy_bwd_torch)


def chunk_scaled_dot_kkt_fwd(k, beta, g=None, cu_seqlens=None, chunk_size=64) -> torch.Tensor:
    """L_ts = beta_t (k_t . k_s) exp(G_t - G_s) for s < t within a chunk.

    Args:
        k: [B, T, H, K]; beta: [B, T, H]; g: [B, T, H] chunk-local cumsum of log gates (float32) or None
    Returns:
        L: [B, T, H, BT] float32 (strictly lower triangular per chunk, row layout)
    """
    return _kkt(k, beta, g, cu_seqlens, chunk_size)


def solve_tril(L, cu_seqlens=None, chunk_size=64) -> torch.Tensor:
    """A = (I + L)^{-1} per chunk, float32, for a strictly lower-triangular L in row layout [B, T, H, BT]."""
    return _solve_tril(L, cu_seqlens, chunk_size)


def recompute_w_u_fwd(k, v, beta, A, g=None, cu_seqlens=None, chunk_size=64) -> tuple[torch.Tensor, torch.Tensor]:
    """w = A (beta k exp(G)) [B, T, H, K] in k's dtype; u = A (beta v) [B, T, H, V] in v's dtype."""
    return _recompute_w_u(k, v, beta, A, g, cu_seqlens, chunk_size)


def prepare_wy_repr_bwd(k, v, beta, A, dw, du, g=None, cu_seqlens=None, chunk_size=64):
    """Gradients through w and u (A recomputed from k, beta, g is not needed: A is given).

    Returns:
        dk [B, T, H, K] (k's dtype), dv [B, T, H, V] (v's dtype), dbeta [B, T, H] (beta's dtype),
        dg [B, T, H] float32 w.r.t. the cumsum G, or None without a gate
    """
    return _wy_bwd(k, v, beta, A, dw, du, g, cu_seqlens, chunk_size)
