"""The intra-chunk output of gated linear attention with a scalar gate per head, and its gradients.

Per head, with chunk-local cumulative log gates G (see `cumsum.py`; G = 0 when there is no gate), h[c] the state
entering chunk c and dh[c] the gradient of the state leaving it (see `chunk_h.py`), for t, s in the same chunk:
    o_t  = scale * ( (q_t exp(G_t)) h[c] + sum_{s <= t} (q_t . k_s) exp(G_t - G_s) v_s )
and the state leaving the chunk is h[c+1] = exp(G_last) h[c] + sum_s exp(G_last - G_s) k_s^T v_s.

Gradients (the loss seen through o and through h[c+1] via dh[c]); with D_ts = exp(G_t - G_s) [s <= t]:
    dv_s = scale * sum_{t >= s} (q_t . k_s) D_ts do_t                + exp(G_last - G_s) k_s dh
    dq_t = scale * sum_{s <= t} (do_t . v_s) D_ts k_s                + scale * exp(G_t) do_t h^T
    dk_s = scale * sum_{t >= s} (do_t . v_s) D_ts q_t                + exp(G_last - G_s) v_s dh^T
    dG_t = q_t . dq_t - k_t . dk_t + [t = last] ( exp(G_last) <h, dh> + sum_s exp(G_last - G_s) (k_s dh) . v_s )
The dG line follows from collecting the terms: every D_ts contributes +1 to row t and -1 to column s, the state
term exp(G_t) q_t h contributes to q_t . dq_t, and G_last appears in every term of h[c+1]. It is the gradient w.r.t.
the cumsum G; families turn it into the gradient of the raw gate with a reverse chunk-local cumsum.

Delta-rule branch: when the values fed to the state were v = u - w h[c], the helper passes w and the full gradient dv
of those values, and gets back dw_t = -(dv_t h[c]^T) as well.

Layouts: q, k, w [B, T, H, K]; v, do, dv, o [B, T, H, V]; g/G and dg float32 [B, T, H]; h, dh [B, NT, H, K, V]
(or [1, NT_total, H, K, V] under cu_seqlens, chunks of sequence n from `prepare_chunk_offsets(...)[n]`).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fla.ops.utils.dispatch import autotune, dispatch, tensor_core_dtype
from fla.ops.utils.index import for_each_sequence, prepare_chunk_indices

# ----------------------------------------------------------------------------------------------------------------------
# PyTorch twins: the formulas above on whole chunks ([B, NT, BT, H, *] views), one sequence at a time under varlen.
# ----------------------------------------------------------------------------------------------------------------------


def _chunked(x: torch.Tensor, chunk_size: int, edge: bool = False) -> torch.Tensor:
    """[B, T, H, *] -> float32 [B, NT, BT, H, *], padded with zeros (or with the last row when `edge`: for the gate
    cumsum, so that padded rows hold G_last and no exp(G_t - G_s) involving them can overflow)."""
    B, T = x.shape[:2]
    NT = triton.cdiv(T, chunk_size)
    x = x.float()
    pad = NT * chunk_size - T
    if pad:
        fill = x[:, -1:].expand(B, pad, *x.shape[2:]) if edge else x.new_zeros(B, pad, *x.shape[2:])
        x = torch.cat([x, fill], 1)
    return x.view(B, NT, chunk_size, *x.shape[2:])


def _unchunked(x: torch.Tensor, T: int) -> torch.Tensor:
    """[B, NT, BT, H, *] -> [B, T, H, *]."""
    return x.flatten(1, 2)[:, :T]


def _decay(G: torch.Tensor | None, chunk_size: int, device) -> torch.Tensor:
    """[B, NT, H, BT(t), BT(s)] exp(G_t - G_s) on s <= t, else 0 (the causal mask alone without a gate)."""
    causal = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=device).tril()
    if G is None:
        return causal.float()
    Gh = G.transpose(2, 3)  # [B, NT, H, BT]
    diff = Gh[..., :, None] - Gh[..., None, :]
    return torch.where(causal, diff, float("-inf")).exp()


def _chunk_fwd_o_torch(q, k, v, h, g=None, scale=1.0, cu_seqlens=None, chunk_size=64):
    o = torch.empty_like(v)

    def one(q, k, v, g, h):
        T = q.shape[1]
        qc, kc, vc = (_chunked(x, chunk_size) for x in (q, k, v))
        G = _chunked(g, chunk_size, edge=True) if g is not None else None
        A = torch.einsum("bnthk,bnshk->bnhts", qc, kc) * _decay(G, chunk_size, q.device)
        qh = qc * G.exp()[..., None] if G is not None else qc
        out = torch.einsum("bnhts,bnshv->bnthv", A, vc) + torch.einsum("bnthk,bnhkv->bnthv", qh, h.float())
        return (_unchunked(out * scale, T),)

    for_each_sequence(one, cu_seqlens, (q, k, v, g), (o,), states=(h,), chunk_size=chunk_size)
    return o


def _chunk_bwd_dv_torch(q, k, do, dh=None, g=None, scale=1.0, cu_seqlens=None, chunk_size=64):
    dv = torch.empty_like(do)

    def one(q, k, do, g, dh):
        T = q.shape[1]
        qc, kc, doc = (_chunked(x, chunk_size) for x in (q, k, do))
        G = _chunked(g, chunk_size, edge=True) if g is not None else None
        A = torch.einsum("bnthk,bnshk->bnhts", qc, kc) * _decay(G, chunk_size, q.device) * scale
        out = torch.einsum("bnhts,bnthv->bnshv", A, doc)
        if dh is not None:
            kg = kc * (G[:, :, -1:] - G).exp()[..., None] if G is not None else kc
            out = out + torch.einsum("bnshk,bnhkv->bnshv", kg, dh.float())
        return (_unchunked(out, T),)

    for_each_sequence(one, cu_seqlens, (q, k, do, g), (dv,), states=(dh,), chunk_size=chunk_size)
    return dv


def _chunk_bwd_dv_local_torch(q, k, do, g=None, scale=1.0, cu_seqlens=None, chunk_size=64):
    return _chunk_bwd_dv_torch(q, k, do, None, g, scale, cu_seqlens, chunk_size)


def _chunk_bwd_dqkwg_torch(q, k, v, do, h, dh, g=None, w=None, dv=None, scale=1.0, cu_seqlens=None, chunk_size=64):
    dq, dk = torch.empty_like(q), torch.empty_like(k)
    dg = torch.empty_like(g, dtype=torch.float32) if g is not None else None
    dw = torch.empty_like(w) if w is not None and dv is not None else None

    def one(q, k, v, do, g, dv, h, dh):
        T = q.shape[1]
        qc, kc, vc, doc = (_chunked(x, chunk_size) for x in (q, k, v, do))
        hf, dhf = h.float(), dh.float()
        G = _chunked(g, chunk_size, edge=True) if g is not None else None
        dA = torch.einsum("bnthv,bnshv->bnhts", doc, vc) * _decay(G, chunk_size, q.device) * scale
        dq_inter = torch.einsum("bnthv,bnhkv->bnthk", doc, hf) * scale
        dk_inter = torch.einsum("bnshv,bnhkv->bnshk", vc, dhf)
        if G is not None:
            dq_inter = dq_inter * G.exp()[..., None]
            dk_inter = dk_inter * (G[:, :, -1:] - G).exp()[..., None]
        dqc = torch.einsum("bnhts,bnshk->bnthk", dA, kc) + dq_inter
        dkc = torch.einsum("bnhts,bnthk->bnshk", dA, qc) + dk_inter
        dgc = None
        if G is not None:
            dgc = (qc * dqc).sum(-1) - (kc * dkc).sum(-1)
            # G_last is in every term of the state leaving the chunk. With edge padding, the padded rows are copies
            # of the last real row: putting the term on the last padded row and folding the pad back below is the
            # chain rule through that copy.
            last = G[:, :, -1].exp() * (hf * dhf).sum((-1, -2)) + (kc * dk_inter).sum((2, -1))
            dgc[:, :, -1] += last
            dgc = dgc.flatten(1, 2)
            dgc = torch.cat([dgc[:, :T - 1], dgc[:, T - 1:].sum(1, keepdim=True)], 1)
        dwc = None
        if dv is not None:
            dwc = -_unchunked(torch.einsum("bnthv,bnhkv->bnthk", _chunked(dv, chunk_size), hf), T)
        return _unchunked(dqc, T), _unchunked(dkc, T), dwc, dgc

    for_each_sequence(one, cu_seqlens, (q, k, v, do, g, dv), (dq, dk, dw, dg), states=(h, dh), chunk_size=chunk_size)
    return dq, dk, dw, dg


# ----------------------------------------------------------------------------------------------------------------------
# Triton kernels. One program per (value or key tile, chunk, batch * head); under cu_seqlens the chunk axis is the flat
# list of (sequence, chunk) pairs from `prepare_chunk_indices`, whose position is also the chunk's index into h / dh.
# Layouts: q, k, w [B, T, H, K] (row stride H*K); v, do, dv, o [B, T, H, V] (row stride H*V); g [B, T, H];
# h, dh [B, NT, H, K, V] with chunk (b, c) at flat index b * NT + c.
# ----------------------------------------------------------------------------------------------------------------------

# Register pressure checked with ptxas for sm_90 at K = V = 128, bf16: these tiles compile without spills (the 4-warp
# [64, 64] tiles spill, so they are left out). A program recomputes the chunk's q k^T for its value tile, so at
# V = 128 the [.., 128] tiles (one value tile: q k^T once per chunk) come first; the narrower ones stay for V <= 64
# and for the autotuner to weigh against more programs in flight.
_TILE_CONFIGS = [
    triton.Config({"BK": BK, "BV": BV}, num_warps=num_warps, num_stages=num_stages)
    for BK, BV, num_warps, num_stages in (
        (64, 128, 8, 2), (64, 128, 8, 3), (128, 128, 8, 2),
        (64, 64, 8, 2), (64, 64, 8, 3), (128, 64, 8, 2), (128, 64, 8, 3), (128, 64, 4, 2),
        (32, 64, 4, 2), (32, 64, 4, 3), (64, 32, 8, 2),
    )
]
_V_CONFIGS = [
    triton.Config({"BV": BV}, num_warps=8, num_stages=num_stages) for BV in (64, 32) for num_stages in (2, 3)
]
_HEURISTICS = {
    "USE_G": lambda args: args["g"] is not None,
    "IS_VARLEN": lambda args: args["cu_seqlens"] is not None,
}


@triton.jit
def _chunk_position(i_t, i_b, cu_seqlens, chunk_indices, T, BT: tl.constexpr, IS_VARLEN: tl.constexpr):
    """(first token row of the sequence, chunk index within it, flat chunk index into h, sequence length)."""
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


@triton.heuristics(_HEURISTICS)
@autotune(_TILE_CONFIGS, key=["H", "K", "V", "BT", "USE_G", "IS_VARLEN"])
@triton.jit
def chunk_fwd_o_kernel(
    q, k, v, h, g, o, cu_seqlens, chunk_indices, scale,
    T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_G: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    # grid: (V tiles, chunks, B * H). o[chunk, V tile] = scale * ((q * exp(G)) h + (q k^T * decay) v).
    i_v, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    bos, i_t, i_tg, T = _chunk_position(i_t, i_b, cu_seqlens, chunk_indices, T, BT, IS_VARLEN)
    # Pointers move to this chunk's first row and this head once (64-bit scalars); the tile offsets stay 32-bit,
    # which keeps [BT, BK] offset tensors out of 64-bit registers.
    row0 = bos + i_t * BT
    q += (row0 * H + i_h) * K
    k += (row0 * H + i_h) * K
    v += (row0 * H + i_h) * V
    o += (row0 * H + i_h) * V
    h += (i_tg * H + i_h) * K * V
    o_i = tl.arange(0, BT)
    m_t = i_t * BT + o_i < T
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V

    b_o = tl.zeros([BT, BV], dtype=tl.float32)
    b_A = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in range(tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        b_q = tl.load(q + o_i[:, None] * (H * K) + o_k[None, :], mask=m_t[:, None] & m_k[None, :], other=0.)
        # k loaded transposed, [BK, BT], for q k^T as one dot.
        b_k = tl.load(k + o_i[None, :] * (H * K) + o_k[:, None], mask=m_k[:, None] & m_t[None, :], other=0.)
        b_h = tl.load(h + o_k[:, None] * V + o_v[None, :], mask=m_k[:, None] & m_v[None, :], other=0.)
        b_o += tl.dot(b_q, b_h.to(b_q.dtype))
        b_A += tl.dot(b_q, b_k)

    # Causal within the chunk; rows past the sequence end are never stored, and masking them keeps exp() finite.
    m_A = (o_i[:, None] >= o_i[None, :]) & m_t[:, None]
    if USE_G:
        b_g = tl.load(g + (row0 + o_i) * H + i_h, mask=m_t, other=0.)
        b_o *= tl.exp(b_g)[:, None]
        b_A *= tl.where(m_A, tl.exp(b_g[:, None] - b_g[None, :]), 0.)
    else:
        b_A = tl.where(m_A, b_A, 0.)
    o_tv = o_i[:, None] * (H * V) + o_v[None, :]
    m_tv = m_t[:, None] & m_v[None, :]
    b_v = tl.load(v + o_tv, mask=m_tv, other=0.)
    b_o = (b_o + tl.dot(b_A.to(b_v.dtype), b_v)) * scale
    tl.store(o + o_tv, b_o.to(o.dtype.element_ty), mask=m_tv)


@triton.heuristics({**_HEURISTICS, "USE_DH": lambda args: args["dh"] is not None})
@autotune(_TILE_CONFIGS, key=["H", "K", "V", "BT", "USE_G", "USE_DH", "IS_VARLEN"])
@triton.jit
def chunk_bwd_dv_kernel(
    q, k, do, dh, g, dv, cu_seqlens, chunk_indices, scale,
    T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_G: tl.constexpr, USE_DH: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    # grid: (V tiles, chunks, B * H). dv = scale * (k q^T * decay^T) do  [+ (k * exp(G_last - G)) dh].
    i_v, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    bos, i_t, i_tg, T = _chunk_position(i_t, i_b, cu_seqlens, chunk_indices, T, BT, IS_VARLEN)
    row0 = bos + i_t * BT
    q += (row0 * H + i_h) * K
    k += (row0 * H + i_h) * K
    do += (row0 * H + i_h) * V
    dv += (row0 * H + i_h) * V
    o_i = tl.arange(0, BT)
    m_t = i_t * BT + o_i < T
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V

    b_dv = tl.zeros([BT, BV], dtype=tl.float32)
    b_At = tl.zeros([BT, BT], dtype=tl.float32)  # [s, t] = k_s . q_t
    for i_k in range(tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        b_k = tl.load(k + o_i[:, None] * (H * K) + o_k[None, :], mask=m_t[:, None] & m_k[None, :], other=0.)
        b_q = tl.load(q + o_i[None, :] * (H * K) + o_k[:, None], mask=m_k[:, None] & m_t[None, :], other=0.)
        b_At += tl.dot(b_k, b_q)
        if USE_DH:
            b_dh = tl.load(dh + (i_tg * H + i_h) * K * V + o_k[:, None] * V + o_v[None, :],
                           mask=m_k[:, None] & m_v[None, :], other=0.)
            b_dv += tl.dot(b_k, b_dh.to(b_k.dtype))

    m_A = (o_i[:, None] <= o_i[None, :]) & m_t[None, :]
    if USE_G:
        b_g = tl.load(g + (row0 + o_i) * H + i_h, mask=m_t, other=0.)
        if USE_DH:
            b_g_last = tl.load(g + (bos + tl.minimum(i_t * BT + BT, T) - 1) * H + i_h)
            b_dv *= tl.where(m_t, tl.exp(b_g_last - b_g), 0.)[:, None]
        b_At *= tl.where(m_A, tl.exp(b_g[None, :] - b_g[:, None]), 0.) * scale
    else:
        b_At = tl.where(m_A, b_At * scale, 0.)
    o_tv = o_i[:, None] * (H * V) + o_v[None, :]
    m_tv = m_t[:, None] & m_v[None, :]
    b_do = tl.load(do + o_tv, mask=m_tv, other=0.)
    b_dv += tl.dot(b_At.to(b_do.dtype), b_do)
    tl.store(dv + o_tv, b_dv.to(dv.dtype.element_ty), mask=m_tv)


@triton.heuristics({**_HEURISTICS, "USE_DW": lambda args: args["dw"] is not None})
@autotune(_V_CONFIGS, key=["H", "K", "V", "BT", "BK", "USE_G", "USE_DW", "IS_VARLEN"])
@triton.jit
def chunk_bwd_dqkwg_kernel(
    q, k, v, do, h, dh, g, dv, dq, dk, dw, dg, cu_seqlens, chunk_indices, scale, num_rows,
    T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_G: tl.constexpr, USE_DW: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    # grid: (K tiles, chunks, B * H). dg is written per K tile ([NK, B * T = num_rows, H]) and summed by the
    # launcher: q . dq - k . dk needs every key channel.
    i_k, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    bos, i_t, i_tg, T = _chunk_position(i_t, i_b, cu_seqlens, chunk_indices, T, BT, IS_VARLEN)
    row0 = bos + i_t * BT
    x_k = (row0 * H + i_h) * K  # this chunk and head in the [B, T, H, K] tensors
    x_v = (row0 * H + i_h) * V  # ... and in the [B, T, H, V] ones
    h += (i_tg * H + i_h) * K * V
    dh += (i_tg * H + i_h) * K * V
    o_i = tl.arange(0, BT)
    o_t = i_t * BT + o_i
    m_t = o_t < T
    o_k = i_k * BK + tl.arange(0, BK)
    m_k = o_k < K
    o_tk = o_i[:, None] * (H * K) + o_k[None, :]
    m_tk = m_t[:, None] & m_k[None, :]

    b_dq = tl.zeros([BT, BK], dtype=tl.float32)
    b_dk = tl.zeros([BT, BK], dtype=tl.float32)
    b_dw = tl.zeros([BT, BK], dtype=tl.float32)
    b_ds = tl.zeros([BT, BT], dtype=tl.float32)  # [t, s] = do_t . v_s
    b_dg_last = tl.zeros([1], dtype=tl.float32)
    for i_v in range(tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_v = o_v < V
        o_tv = o_i[:, None] * (H * V) + o_v[None, :]
        m_tv = m_t[:, None] & m_v[None, :]
        b_v = tl.load(v + x_v + o_tv, mask=m_tv, other=0.)
        b_do = tl.load(do + x_v + o_tv, mask=m_tv, other=0.)
        # h and dh loaded transposed, [BV, BK].
        o_vk = o_k[None, :] * V + o_v[:, None]
        m_vk = m_v[:, None] & m_k[None, :]
        b_h = tl.load(h + o_vk, mask=m_vk, other=0.)
        b_dh = tl.load(dh + o_vk, mask=m_vk, other=0.)
        b_dq += tl.dot(b_do, b_h.to(b_do.dtype))
        b_dk += tl.dot(b_v, b_dh.to(b_v.dtype))
        b_ds += tl.dot(b_do, tl.trans(b_v))
        if USE_G:
            b_dg_last += tl.sum(b_h.to(tl.float32) * b_dh.to(tl.float32))
        if USE_DW:
            b_dv = tl.load(dv + x_v + o_tv, mask=m_tv, other=0.)
            b_dw += tl.dot(b_dv, b_h.to(b_dv.dtype))

    b_q = tl.load(q + x_k + o_tk, mask=m_tk, other=0.)
    b_k = tl.load(k + x_k + o_tk, mask=m_tk, other=0.)
    m_A = (o_i[:, None] >= o_i[None, :]) & m_t[:, None]
    if USE_G:
        last = tl.minimum(i_t * BT + BT, T) - 1
        b_g = tl.load(g + (row0 + o_i) * H + i_h, mask=m_t, other=0.)
        b_g_last = tl.load(g + (bos + last) * H + i_h)
        b_dq *= tl.exp(b_g)[:, None] * scale
        b_dk *= tl.where(m_t, tl.exp(b_g_last - b_g), 0.)[:, None]
        # G_last is in every term of the state leaving the chunk: exp(G_last) <h, dh> + sum_s k_s . dk_inter_s.
        b_dg_last = b_dg_last * tl.exp(b_g_last) + tl.sum(b_k.to(tl.float32) * b_dk)
        b_ds *= tl.where(m_A, tl.exp(b_g[:, None] - b_g[None, :]), 0.) * scale
    else:
        b_dq *= scale
        b_ds = tl.where(m_A, b_ds * scale, 0.)
    b_dq += tl.dot(b_ds.to(b_k.dtype), b_k)
    b_dk += tl.dot(tl.trans(b_ds).to(b_q.dtype), b_q)
    if USE_G:
        b_dg = tl.sum(b_q.to(tl.float32) * b_dq, 1) - tl.sum(b_k.to(tl.float32) * b_dk, 1)
        b_dg = tl.where(o_t == last, b_dg + b_dg_last, b_dg)
        tl.store(dg + i_k * num_rows * H + (row0 + o_i) * H + i_h, b_dg, mask=m_t)
    tl.store(dq + x_k + o_tk, b_dq.to(dq.dtype.element_ty), mask=m_tk)
    tl.store(dk + x_k + o_tk, b_dk.to(dk.dtype.element_ty), mask=m_tk)
    if USE_DW:
        tl.store(dw + x_k + o_tk, (-b_dw).to(dw.dtype.element_ty), mask=m_tk)


def _dot_ready(*xs):
    """The interpreter computes bf16 dots wrongly: upcast bf16 operands there (outputs keep the callers' dtypes)."""
    return [x.to(tensor_core_dtype(x.dtype)) if x is not None else None for x in xs]


def _grid(cu_seqlens, chunk_size, B, T, H):
    """(chunk_indices, number of chunk programs, batch * heads)."""
    if cu_seqlens is None:
        return None, triton.cdiv(T, chunk_size), B * H
    chunk_indices = prepare_chunk_indices(cu_seqlens, chunk_size)
    return chunk_indices, len(chunk_indices), H


def _chunk_fwd_o_triton(q, k, v, h, g=None, scale=1.0, cu_seqlens=None, chunk_size=64):
    B, T, H, K = q.shape
    V = v.shape[-1]
    o = torch.empty_like(v)
    q, k, v, h = _dot_ready(q, k, v, h)
    chunk_indices, NT, BH = _grid(cu_seqlens, chunk_size, B, T, H)
    if NT > 0:
        chunk_fwd_o_kernel[lambda meta: (triton.cdiv(V, meta["BV"]), NT, BH)](
            q, k, v, h, g, o, cu_seqlens, chunk_indices, scale,
            T=T, H=H, K=K, V=V, BT=chunk_size,
        )
    return o


def _chunk_bwd_dv_triton(q, k, do, dh=None, g=None, scale=1.0, cu_seqlens=None, chunk_size=64):
    B, T, H, K = q.shape
    V = do.shape[-1]
    dv = torch.empty_like(do)
    q, k, do, dh = _dot_ready(q, k, do, dh)
    chunk_indices, NT, BH = _grid(cu_seqlens, chunk_size, B, T, H)
    if NT > 0:
        chunk_bwd_dv_kernel[lambda meta: (triton.cdiv(V, meta["BV"]), NT, BH)](
            q, k, do, dh, g, dv, cu_seqlens, chunk_indices, scale,
            T=T, H=H, K=K, V=V, BT=chunk_size,
        )
    return dv


def _chunk_bwd_dv_local_triton(q, k, do, g=None, scale=1.0, cu_seqlens=None, chunk_size=64):
    return _chunk_bwd_dv_triton(q, k, do, None, g, scale, cu_seqlens, chunk_size)


def _chunk_bwd_dqkwg_triton(q, k, v, do, h, dh, g=None, w=None, dv=None, scale=1.0, cu_seqlens=None, chunk_size=64):
    B, T, H, K = q.shape
    V = v.shape[-1]
    # The key tile is fixed (not tuned): dg is written per key tile and summed here.
    BK = min(64, max(16, triton.next_power_of_2(K)))
    NK = triton.cdiv(K, BK)
    dq, dk = torch.empty_like(q), torch.empty_like(k)
    dw = torch.empty_like(w) if w is not None and dv is not None else None
    dg = q.new_empty(NK, B, T, H, dtype=torch.float32) if g is not None else None
    q, k, v, do, h, dh, dv = _dot_ready(q, k, v, do, h, dh, dv)
    chunk_indices, NT, BH = _grid(cu_seqlens, chunk_size, B, T, H)
    if NT > 0:
        chunk_bwd_dqkwg_kernel[(NK, NT, BH)](
            q, k, v, do, h, dh, g, dv if dw is not None else None, dq, dk, dw, dg, cu_seqlens, chunk_indices, scale,
            B * T,
            T=T, H=H, K=K, V=V, BT=chunk_size, BK=BK,
        )
    if dg is not None:
        dg = dg.sum(0)
    return dq, dk, dw, dg


# ----------------------------------------------------------------------------------------------------------------------
# Public launchers
# ----------------------------------------------------------------------------------------------------------------------

_chunk_fwd_o = dispatch(_chunk_fwd_o_triton, _chunk_fwd_o_torch)
_chunk_bwd_dv = dispatch(_chunk_bwd_dv_triton, _chunk_bwd_dv_torch)
_chunk_bwd_dv_local = dispatch(_chunk_bwd_dv_local_triton, _chunk_bwd_dv_local_torch)
_chunk_bwd_dqkwg = dispatch(_chunk_bwd_dqkwg_triton, _chunk_bwd_dqkwg_torch)


def chunk_fwd_o(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    h: torch.Tensor,
    g: torch.Tensor | None = None,
    scale: float = 1.0,
    cu_seqlens: torch.Tensor | None = None,
    chunk_size: int = 64,
) -> torch.Tensor:
    """Outputs from the chunk states and the intra-chunk causal attention.

    Args:
        q, k: [B, T, H, K]; v: [B, T, H, V]
        h: [B, NT, H, K, V]   states entering each chunk (`chunk_fwd_h`)
        g: [B, T, H] float32   chunk-local cumsum of the log gate, or None (no decay)
        cu_seqlens: [N + 1] packed sequences (B == 1)
    Returns:
        o: [B, T, H, V] in v's dtype
    """
    return _chunk_fwd_o(q, k, v, h, g, scale, cu_seqlens, chunk_size)


def chunk_bwd_dv_local(
    q: torch.Tensor,
    k: torch.Tensor,
    do: torch.Tensor,
    g: torch.Tensor | None = None,
    scale: float = 1.0,
    cu_seqlens: torch.Tensor | None = None,
    chunk_size: int = 64,
) -> torch.Tensor:
    """The intra-chunk part of the value gradient: dv_s = scale * sum_{t >= s in chunk} (q_t . k_s) exp(G_t - G_s) do_t.

    Args:
        q, k: [B, T, H, K]; do: [B, T, H, V]; g: [B, T, H] float32 cumsum or None
    Returns:
        dv: [B, T, H, V] in do's dtype
    """
    return _chunk_bwd_dv_local(q, k, do, g, scale, cu_seqlens, chunk_size)


def chunk_bwd_dv(
    q: torch.Tensor,
    k: torch.Tensor,
    do: torch.Tensor,
    dh: torch.Tensor,
    g: torch.Tensor | None = None,
    scale: float = 1.0,
    cu_seqlens: torch.Tensor | None = None,
    chunk_size: int = 64,
) -> torch.Tensor:
    """The full value gradient: the intra-chunk part plus (k_s exp(G_last - G_s)) dh[c].

    Args:
        q, k: [B, T, H, K]; do: [B, T, H, V]
        dh: [B, NT, H, K, V]   gradients of the states leaving each chunk (`chunk_bwd_dh`)
        g: [B, T, H] float32 cumsum or None
    Returns:
        dv: [B, T, H, V] in do's dtype
    """
    return _chunk_bwd_dv(q, k, do, dh, g, scale, cu_seqlens, chunk_size)


def chunk_bwd_dqkwg(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    do: torch.Tensor,
    h: torch.Tensor,
    dh: torch.Tensor,
    g: torch.Tensor | None = None,
    w: torch.Tensor | None = None,
    dv: torch.Tensor | None = None,
    scale: float = 1.0,
    cu_seqlens: torch.Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Gradients of queries, keys, the delta-rule w and the gate cumsum.

    Args:
        q, k: [B, T, H, K]; v, do: [B, T, H, V]
        h, dh: [B, NT, H, K, V]   states entering / gradients of states leaving each chunk
        g: [B, T, H] float32 cumsum or None
        w: [B, T, H, K] and dv: [B, T, H, V]   delta rule only (values v = u - w h[c]; dv their full gradient)
    Returns:
        dq: [B, T, H, K]; dk: [B, T, H, K]; dw: [B, T, H, K] or None;
        dg: [B, T, H] float32 gradient w.r.t. the cumsum g, or None without g
    """
    return _chunk_bwd_dqkwg(q, k, v, do, h, dh, g, w, dv, scale, cu_seqlens, chunk_size)
