"""The inter-chunk state pass (h) and its backward (dh), shared by every gated linear-attention family.

Recurrence, per head, with state S of shape [K, V] and chunk-local cumulative log gates (see `cumsum.py`):
    S_t = diag(exp(gk_t)) * exp(g_t) * S_{t-1} * diag(exp(gv_t)) + k_t^T v_t
where g is a scalar per head, gk a gate per key channel, gv one per value channel (each optional).
Chunk c covers tokens [c*BT, (c+1)*BT) of its sequence; with G the chunk-local cumsum and `last` its final row:
    h[c+1] = decay(G_last) * h[c] + sum_t decay(G_last - G_t) * k_t^T v_t

Layouts:
    h:  [B, NT, H, K, V] (or [1, NT_total, H, K, V] under cu_seqlens, sequence n's chunks starting at
        chunk_offsets[n]); h[:, c] is the state *entering* chunk c.
    dh: same shape; dh[:, c] is dL/d(state *leaving* chunk c), i.e. the gradient that flows into chunk c from later
        chunks (and from dht). The gradient of the initial state is returned separately.
    h0, ht, dht, dh0: float32 [N, H, K, V].
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fla.ops.utils.dispatch import autotune, dispatch, tensor_core_dtype
from fla.ops.utils.index import (chunk_offsets_host, chunk_state_bounds, num_chunks, prepare_chunk_offsets,
                                 sequence_spans)



def _chunk_fwd_h_torch(k, v, g=None, gk=None, gv=None, h0=None, output_final_state=False, cu_seqlens=None,
                       chunk_size=64, states_in_fp32=False):
    B, T, H, K = k.shape
    V = v.shape[-1]
    spans = sequence_spans(cu_seqlens, B, T)
    offsets = chunk_offsets_host(cu_seqlens, chunk_size) if cu_seqlens is not None else None
    h = k.new_empty(B, num_chunks(T, cu_seqlens, chunk_size), H, K, V,
                    dtype=torch.float32 if states_in_fp32 else k.dtype)
    ht = k.new_empty(len(spans), H, K, V, dtype=torch.float32) if output_final_state else None
    for i, (b, bos, eos) in enumerate(spans):
        state = h0[i].float() if h0 is not None else k.new_zeros(H, K, V, dtype=torch.float32)
        first = offsets[i] if offsets is not None else 0
        for c, start in enumerate(range(bos, eos, chunk_size)):
            end = min(start + chunk_size, eos)
            h[b, first + c] = state
            kc, vc = k[b, start:end].float(), v[b, start:end].float()
            if g is not None:
                gc = g[b, start:end].float()
                state = state * gc[-1].exp()[:, None, None]
                kc = kc * (gc[-1] - gc).exp()[..., None]
            if gk is not None:
                gc = gk[b, start:end].float()
                state = state * gc[-1].exp()[:, :, None]
                kc = kc * (gc[-1] - gc).exp()
            if gv is not None:
                gc = gv[b, start:end].float()
                state = state * gc[-1].exp()[:, None, :]
                vc = vc * (gc[-1] - gc).exp()
            state = state + torch.einsum("thk,thv->hkv", kc, vc)
        if ht is not None:
            ht[i] = state
    return h, ht


def _chunk_bwd_dh_torch(q, do, g=None, gk=None, gv=None, h0=None, dht=None, scale=1.0, cu_seqlens=None,
                        chunk_size=64, states_in_fp32=False):
    B, T, H, K = q.shape
    V = do.shape[-1]
    spans = sequence_spans(cu_seqlens, B, T)
    offsets = chunk_offsets_host(cu_seqlens, chunk_size) if cu_seqlens is not None else None
    dh = q.new_empty(B, num_chunks(T, cu_seqlens, chunk_size), H, K, V,
                     dtype=torch.float32 if states_in_fp32 else q.dtype)
    dh0 = q.new_empty(len(spans), H, K, V, dtype=torch.float32) if h0 is not None else None
    for i, (b, bos, eos) in enumerate(spans):
        grad = dht[i].float() if dht is not None else q.new_zeros(H, K, V, dtype=torch.float32)
        first = offsets[i] if offsets is not None else 0
        starts = list(range(bos, eos, chunk_size))
        for c in reversed(range(len(starts))):
            start, end = starts[c], min(starts[c] + chunk_size, eos)
            dh[b, first + c] = grad
            qc, doc = q[b, start:end].float() * scale, do[b, start:end].float()
            if g is not None:
                gc = g[b, start:end].float()
                grad = grad * gc[-1].exp()[:, None, None]
                qc = qc * gc.exp()[..., None]
            if gk is not None:
                gc = gk[b, start:end].float()
                grad = grad * gc[-1].exp()[:, :, None]
                qc = qc * gc.exp()
            if gv is not None:
                gc = gv[b, start:end].float()
                grad = grad * gc[-1].exp()[:, None, :]
                doc = doc * gc.exp()
            grad = grad + torch.einsum("thk,thv->hkv", qc, doc)
        if dh0 is not None:
            dh0[i] = grad
    return dh, dh0


_STATE_CONFIGS = [
    triton.Config({"BK": BK, "BV": BV}, num_warps=num_warps, num_stages=num_stages)
    for BK in (64, 32) for BV in (64, 32) for num_warps in (4, 2, 8) for num_stages in (2, 3, 4)
]
_STATE_KEY = ["H", "K", "V", "BT", "USE_G", "USE_GK", "USE_GV"]


@triton.heuristics({
    "USE_G": lambda args: args["g"] is not None,
    "USE_GK": lambda args: args["gk"] is not None,
    "USE_GV": lambda args: args["gv"] is not None,
    "USE_INITIAL_STATE": lambda args: args["h0"] is not None,
    "STORE_FINAL_STATE": lambda args: args["ht"] is not None,
    "IS_VARLEN": lambda args: args["cu_seqlens"] is not None,
})
@autotune(_STATE_CONFIGS, key=_STATE_KEY)
@triton.jit
def chunk_fwd_h_kernel(
    k, v, h, g, gk, gv, h0, ht, cu_seqlens, chunk_offsets,
    T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_G: tl.constexpr, USE_GK: tl.constexpr, USE_GV: tl.constexpr,
    USE_INITIAL_STATE: tl.constexpr, STORE_FINAL_STATE: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    # One program owns a [BK, BV] tile of one (sequence, head) state and walks the sequence chunk by chunk.
    # Layouts: k [B, T, H, K], v [B, T, H, V] (row stride H*K / H*V); g [B, T, H]; gk [.., K]; gv [.., V];
    # h [B, NT, H, K, V]; h0/ht [N, H, K, V].
    i_k, i_v, i_nh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_h = i_nh // H, i_nh % H
    bos, T, NT, boh = chunk_state_bounds(i_n, cu_seqlens, chunk_offsets, T, BT, IS_VARLEN)
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    o_kv = o_k[:, None] * V + o_v[None, :]

    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_INITIAL_STATE:
        b_h += tl.load(h0 + i_nh * K * V + o_kv, mask=m_kv, other=0.).to(tl.float32)

    for i_t in range(NT):
        tl.store(h + ((boh + i_t) * H + i_h) * K * V + o_kv, b_h.to(h.dtype.element_ty), mask=m_kv)
        o_t = i_t * BT + tl.arange(0, BT)
        m_t = o_t < T
        last = tl.minimum(i_t * BT + BT, T) - 1
        rows = bos + o_t
        # k is loaded transposed, [BK, BT], so the update is one [BK, BT] @ [BT, BV] dot.
        b_k = tl.load(k + (rows[None, :] * H + i_h) * K + o_k[:, None], mask=m_k[:, None] & m_t[None, :], other=0.)
        b_v = tl.load(v + (rows[:, None] * H + i_h) * V + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0.)
        if USE_G:
            b_g = tl.load(g + rows * H + i_h, mask=m_t, other=0.)
            b_g_last = tl.load(g + (bos + last) * H + i_h)
            b_h *= tl.exp(b_g_last)
            b_v = (b_v * tl.where(m_t, tl.exp(b_g_last - b_g), 0.)[:, None]).to(b_v.dtype)
        if USE_GK:
            b_gk = tl.load(gk + (rows[None, :] * H + i_h) * K + o_k[:, None], mask=m_k[:, None] & m_t[None, :], other=0.)
            b_gk_last = tl.load(gk + ((bos + last) * H + i_h) * K + o_k, mask=m_k, other=0.)
            b_h *= tl.exp(b_gk_last)[:, None]
            b_k = (b_k * tl.where(m_t[None, :], tl.exp(b_gk_last[:, None] - b_gk), 0.)).to(b_k.dtype)
        if USE_GV:
            b_gv = tl.load(gv + (rows[:, None] * H + i_h) * V + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0.)
            b_gv_last = tl.load(gv + ((bos + last) * H + i_h) * V + o_v, mask=m_v, other=0.)
            b_h *= tl.exp(b_gv_last)[None, :]
            b_v = (b_v * tl.where(m_t[:, None], tl.exp(b_gv_last[None, :] - b_gv), 0.)).to(b_v.dtype)
        b_h += tl.dot(b_k, b_v.to(b_k.dtype))

    if STORE_FINAL_STATE:
        tl.store(ht + i_nh * K * V + o_kv, b_h, mask=m_kv)


@triton.heuristics({
    "USE_G": lambda args: args["g"] is not None,
    "USE_GK": lambda args: args["gk"] is not None,
    "USE_GV": lambda args: args["gv"] is not None,
    "USE_INITIAL_STATE": lambda args: args["dh0"] is not None,
    "USE_FINAL_STATE_GRADIENT": lambda args: args["dht"] is not None,
    "IS_VARLEN": lambda args: args["cu_seqlens"] is not None,
})
@autotune(_STATE_CONFIGS, key=_STATE_KEY)
@triton.jit
def chunk_bwd_dh_kernel(
    q, do, dh, g, gk, gv, dht, dh0, cu_seqlens, chunk_offsets, scale,
    T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_G: tl.constexpr, USE_GK: tl.constexpr, USE_GV: tl.constexpr,
    USE_INITIAL_STATE: tl.constexpr, USE_FINAL_STATE_GRADIENT: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    # Mirror of chunk_fwd_h_kernel walking the chunks backwards: dh[c] = dL/d(state leaving chunk c), then
    # dh_in = decay(chunk) * dh[c] + scale * (q * decay(t))^T do over the chunk.
    i_k, i_v, i_nh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_h = i_nh // H, i_nh % H
    bos, T, NT, boh = chunk_state_bounds(i_n, cu_seqlens, chunk_offsets, T, BT, IS_VARLEN)
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    o_kv = o_k[:, None] * V + o_v[None, :]

    b_dh = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_FINAL_STATE_GRADIENT:
        b_dh += tl.load(dht + i_nh * K * V + o_kv, mask=m_kv, other=0.).to(tl.float32)

    # A reversed range with a negative step is not portable across triton versions: count up, index down.
    for i_r in range(NT):
        i_t = NT - 1 - i_r
        tl.store(dh + ((boh + i_t) * H + i_h) * K * V + o_kv, b_dh.to(dh.dtype.element_ty), mask=m_kv)
        o_t = i_t * BT + tl.arange(0, BT)
        m_t = o_t < T
        last = tl.minimum(i_t * BT + BT, T) - 1
        rows = bos + o_t
        b_q = tl.load(q + (rows[None, :] * H + i_h) * K + o_k[:, None], mask=m_k[:, None] & m_t[None, :], other=0.)
        b_q = (b_q * scale).to(b_q.dtype)
        b_do = tl.load(do + (rows[:, None] * H + i_h) * V + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0.)
        if USE_G:
            b_g = tl.load(g + rows * H + i_h, mask=m_t, other=0.)
            b_g_last = tl.load(g + (bos + last) * H + i_h)
            b_dh *= tl.exp(b_g_last)
            b_q = (b_q * tl.where(m_t, tl.exp(b_g), 0.)[None, :]).to(b_q.dtype)
        if USE_GK:
            b_gk = tl.load(gk + (rows[None, :] * H + i_h) * K + o_k[:, None], mask=m_k[:, None] & m_t[None, :], other=0.)
            b_gk_last = tl.load(gk + ((bos + last) * H + i_h) * K + o_k, mask=m_k, other=0.)
            b_dh *= tl.exp(b_gk_last)[:, None]
            b_q = (b_q * tl.where(m_t[None, :], tl.exp(b_gk), 0.)).to(b_q.dtype)
        if USE_GV:
            b_gv = tl.load(gv + (rows[:, None] * H + i_h) * V + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0.)
            b_gv_last = tl.load(gv + ((bos + last) * H + i_h) * V + o_v, mask=m_v, other=0.)
            b_dh *= tl.exp(b_gv_last)[None, :]
            b_do = (b_do * tl.where(m_t[:, None], tl.exp(b_gv), 0.)).to(b_do.dtype)
        b_dh += tl.dot(b_q, b_do.to(b_q.dtype))

    if USE_INITIAL_STATE:
        tl.store(dh0 + i_nh * K * V + o_kv, b_dh, mask=m_kv)


def _state_grid(K: int, V: int, NH: int):
    return lambda meta: (triton.cdiv(K, meta["BK"]), triton.cdiv(V, meta["BV"]), NH)


def _chunk_fwd_h_triton(k, v, g=None, gk=None, gv=None, h0=None, output_final_state=False, cu_seqlens=None,
                        chunk_size=64, states_in_fp32=False):
    B, T, H, K = k.shape
    V = v.shape[-1]
    N = B if cu_seqlens is None else len(cu_seqlens) - 1
    chunk_offsets = prepare_chunk_offsets(cu_seqlens, chunk_size) if cu_seqlens is not None else None
    h = k.new_empty(B, num_chunks(T, cu_seqlens, chunk_size), H, K, V,
                    dtype=torch.float32 if states_in_fp32 else k.dtype)
    ht = k.new_empty(N, H, K, V, dtype=torch.float32) if output_final_state else None
    dot_dtype = tensor_core_dtype(k.dtype)
    k, v = k.to(dot_dtype), v.to(dot_dtype)
    chunk_fwd_h_kernel[_state_grid(K, V, N * H)](
        k, v, h, g, gk, gv, h0, ht, cu_seqlens, chunk_offsets,
        T=T, H=H, K=K, V=V, BT=chunk_size,
    )
    return h, ht


def _chunk_bwd_dh_triton(q, do, g=None, gk=None, gv=None, h0=None, dht=None, scale=1.0, cu_seqlens=None,
                         chunk_size=64, states_in_fp32=False):
    B, T, H, K = q.shape
    V = do.shape[-1]
    N = B if cu_seqlens is None else len(cu_seqlens) - 1
    chunk_offsets = prepare_chunk_offsets(cu_seqlens, chunk_size) if cu_seqlens is not None else None
    dh = q.new_empty(B, num_chunks(T, cu_seqlens, chunk_size), H, K, V,
                     dtype=torch.float32 if states_in_fp32 else q.dtype)
    dh0 = q.new_empty(N, H, K, V, dtype=torch.float32) if h0 is not None else None
    dot_dtype = tensor_core_dtype(q.dtype)
    q, do = q.to(dot_dtype), do.to(dot_dtype)
    chunk_bwd_dh_kernel[_state_grid(K, V, N * H)](
        q, do, dh, g, gk, gv, dht, dh0, cu_seqlens, chunk_offsets, scale,
        T=T, H=H, K=K, V=V, BT=chunk_size,
    )
    return dh, dh0


_chunk_fwd_h = dispatch(_chunk_fwd_h_triton, _chunk_fwd_h_torch)
_chunk_bwd_dh = dispatch(_chunk_bwd_dh_triton, _chunk_bwd_dh_torch)


def chunk_fwd_h(
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None = None,
    gk: torch.Tensor | None = None,
    gv: torch.Tensor | None = None,
    h0: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    chunk_size: int = 64,
    states_in_fp32: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """States entering every chunk.

    Args:
        k: [B, T, H, K]; v: [B, T, H, V]
        g: [B, T, H] / gk: [B, T, H, K] / gv: [B, T, H, V]   chunk-local cumsums of log gates (float32), optional
        h0: [N, H, K, V] float32 initial state, optional
        cu_seqlens: [N + 1] packed sequences (B == 1)
        states_in_fp32: store h in float32 (else in k's dtype; the running state is float32 either way)
    Returns:
        h: [B, NT, H, K, V]; ht: [N, H, K, V] float32 or None
    """
    return _chunk_fwd_h(k, v, g, gk, gv, h0, output_final_state, cu_seqlens, chunk_size, states_in_fp32)


def chunk_bwd_dh(
    q: torch.Tensor,
    do: torch.Tensor,
    g: torch.Tensor | None = None,
    gk: torch.Tensor | None = None,
    gv: torch.Tensor | None = None,
    h0: torch.Tensor | None = None,
    dht: torch.Tensor | None = None,
    scale: float = 1.0,
    cu_seqlens: torch.Tensor | None = None,
    chunk_size: int = 64,
    states_in_fp32: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gradients of the chunk states from the outputs `o_t = scale * q_t S_t` of later chunks.

    Args:
        q: [B, T, H, K]; do: [B, T, H, V]; gates as in `chunk_fwd_h`
        h0: the forward's initial state (only whether it is None matters: dh0 is returned when it is given)
        dht: [N, H, K, V] gradient of the final state, optional
    Returns:
        dh: [B, NT, H, K, V] (dh[:, c] = dL/d state leaving chunk c); dh0: [N, H, K, V] float32 or None
    """
    return _chunk_bwd_dh(q, do, g, gk, gv, h0, dht, scale, cu_seqlens, chunk_size, states_in_fp32)
