"""The delta-rule state pass across chunks (forward h, v_new; backward dh, dv), shared by the delta-rule families.

Per head, with w, u from the WY representation (`wy.py`), G the chunk-local cumsum of the log gates (G = 0 without a
gate) and h[c] the state entering chunk c ([K, V]; h[0] = initial state):
    v_new = u - w h[c]                                           (the values this chunk actually writes)
    h[c+1] = exp(G_last) h[c] + (k * exp(G_last - G))^T v_new
Backward, walking the chunks backwards with D = dL/d(state leaving chunk c) (dh[c]; D starts at dht), given
dv_local = the gradient of v_new through the chunk's own output (`chunk_bwd_dv_local`):
    dv_new = dv_local + (k * exp(G_last - G)) D
    D     <- exp(G_last) D + scale * (q * exp(G))^T do - w^T dv_new
The last line is dL/dh[c]: the output's state term, the decay, and h[c]'s part in v_new.

With a log decay per key channel instead (KDA; `gk`, G [B, T, H, K] its chunk-local cumsum) every exp(G) above is
per key channel: h[c+1] = diag(exp(G_last)) h[c] + (k * exp(G_last - G))^T v_new, and q * exp(G) in the backward.

Layouts as in `chunk_h.py`: h, dh [B, NT, H, K, V] (or [1, NT_total, H, K, V] under cu_seqlens); h0, ht, dht, dh0
float32 [N, H, K, V]; k, w, q [B, T, H, K]; u, v_new, do, dv [B, T, H, V]; g [B, T, H] float32 cumsum; gk
[B, T, H, K] float32 cumsum.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fla.ops.utils.dispatch import autotune, dispatch, tensor_core_dtype
from fla.ops.utils.index import (chunk_offsets_host, chunk_state_bounds, num_chunks, prepare_chunk_offsets,
                                 sequence_spans)



def _chunks_of(cu_seqlens, B, T, chunk_size):
    """[(batch row, first flat chunk, [(start, end), ...])] per sequence."""
    spans = sequence_spans(cu_seqlens, B, T)
    offsets = chunk_offsets_host(cu_seqlens, chunk_size) if cu_seqlens is not None else [0] * len(spans)
    return [(b, offsets[i], [(s, min(s + chunk_size, eos)) for s in range(bos, eos, chunk_size)])
            for i, (b, bos, eos) in enumerate(spans)]


def _fwd_h_torch(k, w, u, g=None, h0=None, output_final_state=False, cu_seqlens=None, chunk_size=64, gk=None):
    B, T, H, K = k.shape
    V = u.shape[-1]
    h = k.new_empty(B, num_chunks(T, cu_seqlens, chunk_size), H, K, V)
    v_new = torch.empty_like(u)
    seqs = _chunks_of(cu_seqlens, B, T, chunk_size)
    ht = k.new_empty(len(seqs), H, K, V, dtype=torch.float32) if output_final_state else None
    for i, (b, first, chunks) in enumerate(seqs):
        state = h0[i].float() if h0 is not None else k.new_zeros(H, K, V, dtype=torch.float32)
        for c, (s, e) in enumerate(chunks):
            h[b, first + c] = state
            kc, wc, uc = k[b, s:e].float(), w[b, s:e].float(), u[b, s:e].float()
            vn = uc - torch.einsum("thk,hkv->thv", wc, state)
            v_new[b, s:e] = vn
            if g is not None:
                gc = g[b, s:e].float()
                state = state * gc[-1].exp()[:, None, None]
                kc = kc * (gc[-1] - gc).exp()[..., None]
            if gk is not None:
                gc = gk[b, s:e].float()
                state = state * gc[-1].exp()[:, :, None]
                kc = kc * (gc[-1] - gc).exp()
            state = state + torch.einsum("thk,thv->hkv", kc, vn)
        if ht is not None:
            ht[i] = state
    return h, v_new, ht


def _bwd_dhu_torch(q, k, w, do, dv, g=None, h0=None, dht=None, scale=1.0, cu_seqlens=None, chunk_size=64,
                   gk=None):
    B, T, H, K = q.shape
    V = do.shape[-1]
    dh = q.new_empty(B, num_chunks(T, cu_seqlens, chunk_size), H, K, V)
    dv2 = torch.empty_like(dv)
    seqs = _chunks_of(cu_seqlens, B, T, chunk_size)
    dh0 = q.new_empty(len(seqs), H, K, V, dtype=torch.float32) if h0 is not None else None
    for i, (b, first, chunks) in enumerate(seqs):
        grad = dht[i].float() if dht is not None else q.new_zeros(H, K, V, dtype=torch.float32)
        for c in reversed(range(len(chunks))):
            s, e = chunks[c]
            dh[b, first + c] = grad
            qc, kc, wc = q[b, s:e].float() * scale, k[b, s:e].float(), w[b, s:e].float()
            doc, dvc = do[b, s:e].float(), dv[b, s:e].float()
            if g is not None:
                gc = g[b, s:e].float()
                kc = kc * (gc[-1] - gc).exp()[..., None]
                qc = qc * gc.exp()[..., None]
            if gk is not None:
                gkc = gk[b, s:e].float()
                kc = kc * (gkc[-1] - gkc).exp()
                qc = qc * gkc.exp()
            dvn = dvc + torch.einsum("thk,hkv->thv", kc, grad)
            dv2[b, s:e] = dvn
            if g is not None:
                grad = grad * gc[-1].exp()[:, None, None]
            if gk is not None:
                grad = grad * gkc[-1].exp()[:, :, None]
            grad = grad + torch.einsum("thk,thv->hkv", qc, doc) - torch.einsum("thk,thv->hkv", wc, dvn)
        if dh0 is not None:
            dh0[i] = grad
    return dh, dh0, dv2



# ----------------------------------------------------------------------------------------------------------------------
# Triton kernels. One program owns the full key dim and a BV column tile of one (sequence, head) state (v_new = u - w h
# sums over every key) and walks the chunks. Layouts: k, w, q [B, T, H, K] (row stride H*K); u, v_new, do, dv
# [B, T, H, V]; g [B, T, H]; h, dh [B, NT, H, K, V]; h0, ht, dht, dh0 [N, H, K, V].
# ----------------------------------------------------------------------------------------------------------------------

# One stage is the only fit for K = 256 in float32 (an sm_90 compile of the backward at K = 256, BV = 16 needs
# ~156 KB of shared memory with 1 stage, ~357 KB with 2).
_CONFIGS = [
    triton.Config({"BV": BV}, num_warps=w, num_stages=s)
    for BV in (32, 64, 16) for w in (4, 8, 2) for s in (2, 3, 1)
]


@triton.heuristics({
    "USE_G": lambda args: args["g"] is not None,
    "USE_GK": lambda args: args["gk"] is not None,
    "USE_INITIAL_STATE": lambda args: args["h0"] is not None,
    "STORE_FINAL_STATE": lambda args: args["ht"] is not None,
    "IS_VARLEN": lambda args: args["cu_seqlens"] is not None,
})
@autotune(_CONFIGS, key=["H", "K", "V", "BT", "USE_G", "USE_GK", "IS_VARLEN"])
@triton.jit
def delta_fwd_h_kernel(
    k, w, u, g, gk, h, v_new, h0, ht, cu_seqlens, chunk_offsets,
    T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_G: tl.constexpr, USE_GK: tl.constexpr, USE_INITIAL_STATE: tl.constexpr, STORE_FINAL_STATE: tl.constexpr,
    IS_VARLEN: tl.constexpr,
):
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, T, NT, boh = chunk_state_bounds(i_n, cu_seqlens, chunk_offsets, T, BT, IS_VARLEN)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    o_kv = o_k[:, None] * V + o_v[None, :]

    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_INITIAL_STATE:
        b_h += tl.load(h0 + i_nh * K * V + o_kv, mask=m_kv, other=0.)
    for i_t in range(NT):
        tl.store(h + ((boh + i_t) * H + i_h) * K * V + o_kv, b_h.to(h.dtype.element_ty), mask=m_kv)
        o_t = i_t * BT + tl.arange(0, BT)
        m_t = o_t < T
        rows = bos + o_t
        m_tk = m_t[:, None] & m_k[None, :]
        m_tv = m_t[:, None] & m_v[None, :]
        b_w = tl.load(w + (rows[:, None] * H + i_h) * K + o_k[None, :], mask=m_tk, other=0.)
        p_u = (rows[:, None] * H + i_h) * V + o_v[None, :]
        b_v = tl.load(u + p_u, mask=m_tv, other=0.).to(tl.float32) - tl.dot(b_w, b_h.to(b_w.dtype))
        tl.store(v_new + p_u, b_v.to(v_new.dtype.element_ty), mask=m_tv)
        # k loaded transposed, [BK, BT], so the state update is one dot.
        b_k = tl.load(k + (rows[None, :] * H + i_h) * K + o_k[:, None], mask=m_k[:, None] & m_t[None, :], other=0.)
        if USE_G:
            last = tl.minimum(i_t * BT + BT, T) - 1
            b_g = tl.load(g + rows * H + i_h, mask=m_t, other=0.)
            b_g_last = tl.load(g + (bos + last) * H + i_h)
            b_h *= tl.exp(b_g_last)
            b_v *= tl.where(m_t, tl.exp(b_g_last - b_g), 0.)[:, None]
        if USE_GK:
            # per key channel: decay the state's rows, and the transposed keys by exp(G_last - G) (<= 1)
            last = tl.minimum(i_t * BT + BT, T) - 1
            b_gk = tl.load(gk + (rows[None, :] * H + i_h) * K + o_k[:, None], mask=m_k[:, None] & m_t[None, :],
                           other=0.)
            b_gk_last = tl.load(gk + ((bos + last) * H + i_h) * K + o_k, mask=m_k, other=0.)
            b_h *= tl.exp(b_gk_last)[:, None]
            b_k = (b_k * tl.where(m_k[:, None] & m_t[None, :], tl.exp(b_gk_last[:, None] - b_gk), 0.)).to(b_k.dtype)
        b_h += tl.dot(b_k, b_v.to(b_k.dtype))
    if STORE_FINAL_STATE:
        tl.store(ht + i_nh * K * V + o_kv, b_h, mask=m_kv)


@triton.heuristics({
    "USE_G": lambda args: args["g"] is not None,
    "USE_GK": lambda args: args["gk"] is not None,
    "USE_INITIAL_STATE": lambda args: args["dh0"] is not None,
    "USE_FINAL_STATE_GRADIENT": lambda args: args["dht"] is not None,
    "IS_VARLEN": lambda args: args["cu_seqlens"] is not None,
})
@autotune(_CONFIGS, key=["H", "K", "V", "BT", "USE_G", "USE_GK", "IS_VARLEN"])
@triton.jit
def delta_bwd_dhu_kernel(
    q, k, w, do, dv, g, gk, dh, dv2, dht, dh0, cu_seqlens, chunk_offsets, scale,
    T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_G: tl.constexpr, USE_GK: tl.constexpr, USE_INITIAL_STATE: tl.constexpr,
    USE_FINAL_STATE_GRADIENT: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, T, NT, boh = chunk_state_bounds(i_n, cu_seqlens, chunk_offsets, T, BT, IS_VARLEN)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    o_kv = o_k[:, None] * V + o_v[None, :]

    b_dh = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_FINAL_STATE_GRADIENT:
        b_dh += tl.load(dht + i_nh * K * V + o_kv, mask=m_kv, other=0.)
    # A reversed range with a negative step is not portable across triton versions: count up, index down.
    for i_r in range(NT):
        i_t = NT - 1 - i_r
        tl.store(dh + ((boh + i_t) * H + i_h) * K * V + o_kv, b_dh.to(dh.dtype.element_ty), mask=m_kv)
        o_t = i_t * BT + tl.arange(0, BT)
        m_t = o_t < T
        rows = bos + o_t
        m_tk = m_t[:, None] & m_k[None, :]
        m_tv = m_t[:, None] & m_v[None, :]
        b_k = tl.load(k + (rows[:, None] * H + i_h) * K + o_k[None, :], mask=m_tk, other=0.)
        # q and w loaded transposed, [BK, BT].
        b_q = tl.load(q + (rows[None, :] * H + i_h) * K + o_k[:, None], mask=m_k[:, None] & m_t[None, :], other=0.)
        b_wt = tl.load(w + (rows[None, :] * H + i_h) * K + o_k[:, None], mask=m_k[:, None] & m_t[None, :], other=0.)
        p_v = (rows[:, None] * H + i_h) * V + o_v[None, :]
        b_do = tl.load(do + p_v, mask=m_tv, other=0.)
        b_q = b_q.to(tl.float32) * scale
        if USE_G:
            last = tl.minimum(i_t * BT + BT, T) - 1
            b_g = tl.load(g + rows * H + i_h, mask=m_t, other=0.)
            b_g_last = tl.load(g + (bos + last) * H + i_h)
            b_k = (b_k * tl.where(m_t, tl.exp(b_g_last - b_g), 0.)[:, None]).to(b_k.dtype)
            b_q *= tl.where(m_t, tl.exp(b_g), 0.)[None, :]
        if USE_GK:
            last = tl.minimum(i_t * BT + BT, T) - 1
            b_gk = tl.load(gk + (rows[:, None] * H + i_h) * K + o_k[None, :], mask=m_tk, other=0.)  # [BT, BK]
            b_gk_last = tl.load(gk + ((bos + last) * H + i_h) * K + o_k, mask=m_k, other=0.)
            b_k = (b_k * tl.where(m_tk, tl.exp(b_gk_last[None, :] - b_gk), 0.)).to(b_k.dtype)
            b_q *= tl.trans(tl.where(m_tk, tl.exp(b_gk), 0.))
        b_dv = tl.load(dv + p_v, mask=m_tv, other=0.).to(tl.float32) + tl.dot(b_k, b_dh.to(b_k.dtype))
        tl.store(dv2 + p_v, b_dv.to(dv2.dtype.element_ty), mask=m_tv)
        if USE_G:
            b_dh *= tl.exp(b_g_last)
        if USE_GK:
            b_dh *= tl.exp(b_gk_last)[:, None]
        b_dh += tl.dot(b_q.to(b_do.dtype), b_do) - tl.dot(b_wt, b_dv.to(b_wt.dtype))
    if USE_INITIAL_STATE:
        tl.store(dh0 + i_nh * K * V + o_kv, b_dh, mask=m_kv)


def _state_launch(k, V, cu_seqlens, chunk_size):
    B, T, H, K = k.shape
    N = B if cu_seqlens is None else len(cu_seqlens) - 1
    chunk_offsets = prepare_chunk_offsets(cu_seqlens, chunk_size) if cu_seqlens is not None else None
    grid = lambda meta: (triton.cdiv(V, meta["BV"]), N * H)  # noqa: E731
    return N, chunk_offsets, grid, max(16, triton.next_power_of_2(K))


def _fwd_h_triton(k, w, u, g=None, h0=None, output_final_state=False, cu_seqlens=None, chunk_size=64, gk=None):
    B, T, H, K = k.shape
    V = u.shape[-1]
    N, chunk_offsets, grid, BK = _state_launch(k, V, cu_seqlens, chunk_size)
    h = k.new_empty(B, num_chunks(T, cu_seqlens, chunk_size), H, K, V)
    v_new = torch.empty_like(u)
    ht = k.new_empty(N, H, K, V, dtype=torch.float32) if output_final_state else None
    # bf16 dot operands are upcast under the interpreter (it computes bf16 dots wrongly); outputs keep their dtype.
    k, w, u = (x.to(tensor_core_dtype(x.dtype)) for x in (k, w, u))
    delta_fwd_h_kernel[grid](k, w, u, g, gk, h, v_new, h0, ht, cu_seqlens, chunk_offsets,
                             T=T, H=H, K=K, V=V, BT=chunk_size, BK=BK)
    return h, v_new, ht


def _bwd_dhu_triton(q, k, w, do, dv, g=None, h0=None, dht=None, scale=1.0, cu_seqlens=None, chunk_size=64,
                    gk=None):
    B, T, H, K = q.shape
    V = do.shape[-1]
    N, chunk_offsets, grid, BK = _state_launch(q, V, cu_seqlens, chunk_size)
    dh = q.new_empty(B, num_chunks(T, cu_seqlens, chunk_size), H, K, V)
    dv2 = torch.empty_like(dv)
    dh0 = q.new_empty(N, H, K, V, dtype=torch.float32) if h0 is not None else None
    q, k, w, do, dv = (x.to(tensor_core_dtype(x.dtype)) for x in (q, k, w, do, dv))
    delta_bwd_dhu_kernel[grid](q, k, w, do, dv, g, gk, dh, dv2, dht, dh0, cu_seqlens, chunk_offsets, scale,
                               T=T, H=H, K=K, V=V, BT=chunk_size, BK=BK)
    return dh, dh0, dv2


_fwd_h = dispatch(_fwd_h_triton, _fwd_h_torch)
_bwd_dhu = dispatch(_bwd_dhu_triton, _bwd_dhu_torch)


def chunk_gated_delta_rule_fwd_h(k, w, u, g=None, h0=None, output_final_state=False, cu_seqlens=None,
                                 chunk_size=64, gk=None):
    """States entering every chunk and the values each chunk writes.

    Args:
        k, w: [B, T, H, K]; u: [B, T, H, V]; g: [B, T, H] float32 chunk-local cumsum or None
        h0: [N, H, K, V] float32 or None
        gk: [B, T, H, K] float32 chunk-local cumsum of a per-key-channel log gate, or None (KDA; usually with g None)
    Returns:
        h: [B, NT, H, K, V] (k's dtype); v_new: [B, T, H, V] (u's dtype); ht: [N, H, K, V] float32 or None
    """
    return _fwd_h(k, w, u, g, h0, output_final_state, cu_seqlens, chunk_size, gk)


def chunk_gated_delta_rule_bwd_dhu(q, k, w, do, dv, g=None, h0=None, dht=None, scale=1.0, cu_seqlens=None,
                                   chunk_size=64, gk=None):
    """State gradients and the full gradient of v_new.

    Args:
        q, k, w: [B, T, H, K]; do: [B, T, H, V]; dv: [B, T, H, V] dv_local (v_new's gradient through the chunk's
        own output); g as in the forward; h0: only whether it is None matters; dht: [N, H, K, V] or None
    Returns:
        dh: [B, NT, H, K, V] (dh[:, c] = dL/d state leaving chunk c); dh0: [N, H, K, V] float32 or None;
        dv_new: [B, T, H, V]
    """
    return _bwd_dhu(q, k, w, do, dv, g, h0, dht, scale, cu_seqlens, chunk_size, gk)
