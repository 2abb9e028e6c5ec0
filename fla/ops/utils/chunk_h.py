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

from fla.ops.utils.dispatch import autotune, dispatch
from fla.ops.utils.index import prepare_chunk_offsets, sequence_spans


def _num_chunks(T: int, cu_seqlens: torch.Tensor | None, chunk_size: int) -> int:
    if cu_seqlens is None:
        return triton.cdiv(T, chunk_size)
    return int(prepare_chunk_offsets(cu_seqlens, chunk_size)[-1])


def _chunk_fwd_h_torch(k, v, g=None, gk=None, gv=None, h0=None, output_final_state=False, cu_seqlens=None,
                       chunk_size=64, states_in_fp32=False):
    B, T, H, K = k.shape
    V = v.shape[-1]
    spans = sequence_spans(cu_seqlens, B, T)
    offsets = prepare_chunk_offsets(cu_seqlens, chunk_size).tolist() if cu_seqlens is not None else None
    h = k.new_empty(B, _num_chunks(T, cu_seqlens, chunk_size), H, K, V,
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
    offsets = prepare_chunk_offsets(cu_seqlens, chunk_size).tolist() if cu_seqlens is not None else None
    dh = q.new_empty(B, _num_chunks(T, cu_seqlens, chunk_size), H, K, V,
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


# Triton kernels: written next; until then the launchers use the twins on every path.
_chunk_fwd_h = dispatch(_chunk_fwd_h_torch, _chunk_fwd_h_torch)
_chunk_bwd_dh = dispatch(_chunk_bwd_dh_torch, _chunk_bwd_dh_torch)


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
