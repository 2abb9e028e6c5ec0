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

Layouts as in `chunk_h.py`: h, dh [B, NT, H, K, V] (or [1, NT_total, H, K, V] under cu_seqlens); h0, ht, dht, dh0
float32 [N, H, K, V]; k, w, q [B, T, H, K]; u, v_new, do, dv [B, T, H, V]; g [B, T, H] float32 cumsum.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fla.ops.utils.dispatch import autotune, dispatch
from fla.ops.utils.index import prepare_chunk_offsets, sequence_spans


def _num_chunks(T: int, cu_seqlens: torch.Tensor | None, chunk_size: int) -> int:
    if cu_seqlens is None:
        return triton.cdiv(T, chunk_size)
    return int(prepare_chunk_offsets(cu_seqlens, chunk_size)[-1])


def _chunks_of(cu_seqlens, B, T, chunk_size):
    """[(batch row, first flat chunk, [(start, end), ...])] per sequence."""
    spans = sequence_spans(cu_seqlens, B, T)
    offsets = prepare_chunk_offsets(cu_seqlens, chunk_size).tolist() if cu_seqlens is not None else [0] * len(spans)
    return [(b, offsets[i], [(s, min(s + chunk_size, eos)) for s in range(bos, eos, chunk_size)])
            for i, (b, bos, eos) in enumerate(spans)]


def _fwd_h_torch(k, w, u, g=None, h0=None, output_final_state=False, cu_seqlens=None, chunk_size=64):
    B, T, H, K = k.shape
    V = u.shape[-1]
    h = k.new_empty(B, _num_chunks(T, cu_seqlens, chunk_size), H, K, V)
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
            state = state + torch.einsum("thk,thv->hkv", kc, vn)
        if ht is not None:
            ht[i] = state
    return h, v_new, ht


def _bwd_dhu_torch(q, k, w, do, dv, g=None, h0=None, dht=None, scale=1.0, cu_seqlens=None, chunk_size=64):
    B, T, H, K = q.shape
    V = do.shape[-1]
    dh = q.new_empty(B, _num_chunks(T, cu_seqlens, chunk_size), H, K, V)
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
            dvn = dvc + torch.einsum("thk,hkv->thv", kc, grad)
            dv2[b, s:e] = dvn
            if g is not None:
                grad = grad * gc[-1].exp()[:, None, None]
            grad = grad + torch.einsum("thk,thv->hkv", qc, doc) - torch.einsum("thk,thv->hkv", wc, dvn)
        if dh0 is not None:
            dh0[i] = grad
    return dh, dh0, dv2


_fwd_h = dispatch(_fwd_h_torch, _fwd_h_torch)
_bwd_dhu = dispatch(_bwd_dhu_torch, _bwd_dhu_torch)


def chunk_gated_delta_rule_fwd_h(k, w, u, g=None, h0=None, output_final_state=False, cu_seqlens=None,
                                 chunk_size=64):
    """States entering every chunk and the values each chunk writes.

    Args:
        k, w: [B, T, H, K]; u: [B, T, H, V]; g: [B, T, H] float32 chunk-local cumsum or None
        h0: [N, H, K, V] float32 or None
    Returns:
        h: [B, NT, H, K, V] (k's dtype); v_new: [B, T, H, V] (u's dtype); ht: [N, H, K, V] float32 or None
    """
    return _fwd_h(k, w, u, g, h0, output_final_state, cu_seqlens, chunk_size)


def chunk_gated_delta_rule_bwd_dhu(q, k, w, do, dv, g=None, h0=None, dht=None, scale=1.0, cu_seqlens=None,
                                   chunk_size=64):
    """State gradients and the full gradient of v_new.

    Args:
        q, k, w: [B, T, H, K]; do: [B, T, H, V]; dv: [B, T, H, V] dv_local (v_new's gradient through the chunk's
        own output); g as in the forward; h0: only whether it is None matters; dht: [N, H, K, V] or None
    Returns:
        dh: [B, NT, H, K, V] (dh[:, c] = dL/d state leaving chunk c); dh0: [N, H, K, V] float32 or None;
        dv_new: [B, T, H, V]
    """
    return _bwd_dhu(q, k, w, do, dv, g, h0, dht, scale, cu_seqlens, chunk_size)
