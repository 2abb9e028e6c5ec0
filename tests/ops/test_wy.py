"""The delta-rule blocks of `fla/ops/utils`: the WY representation (`wy.py`: K K^T with beta and gates, the
triangular solve, w/u and their backward) and the delta state pass (`delta_h.py`: h, v_new and dh, dh0, dv_new), on
both paths, against autograd through direct per-chunk formulas (explicit slices, torch.linalg.inv, no padding)."""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from fla.ops.utils.cumsum import chunk_local_cumsum
from fla.ops.utils.delta_h import chunk_gated_delta_rule_bwd_dhu, chunk_gated_delta_rule_fwd_h
from fla.ops.utils.dispatch import use_backend
from fla.ops.utils.index import prepare_chunk_offsets, sequence_spans
from fla.ops.utils.wy import (chunk_kkt_solve, chunk_scaled_dot_kkt_fwd, prepare_wy_repr_bwd, recompute_w_u_fwd,
                              solve_tril)
from tests.helpers import assert_close, poisoned_empty, seed


def chunks(cu_seqlens, B, T, BT):
    """(batch row, flat chunk index, start, end) of every chunk."""
    offsets = prepare_chunk_offsets(cu_seqlens, BT).tolist() if cu_seqlens is not None else None
    for i, (b, bos, eos) in enumerate(sequence_spans(cu_seqlens, B, T)):
        for c, s in enumerate(range(bos, eos, BT)):
            yield i, b, (offsets[i] if offsets is not None else 0) + c, s, min(s + BT, eos)


def direct_wy(k, v, beta, G, cu_seqlens, BT):
    """L and A in row layout, w, u; differentiable."""
    B, T, H, K = k.shape
    L = torch.zeros(B, T, H, BT)
    A = torch.zeros(B, T, H, BT)
    w, u = torch.zeros_like(k), torch.zeros_like(v)
    for _, b, _, s, e in chunks(cu_seqlens, B, T, BT):
        n = e - s
        kc, vc, bc = k[b, s:e].transpose(0, 1), v[b, s:e].transpose(0, 1), beta[b, s:e].T  # [H, n, *]
        Gc = G[b, s:e].T if G is not None else torch.zeros(H, n)
        ratio = (Gc[:, :, None] - Gc[:, None, :]).masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(-1), -1e30)
        Lc = bc[:, :, None] * (kc @ kc.transpose(1, 2)) * ratio.exp()
        Ac = torch.linalg.inv(torch.eye(n) + Lc)
        L[b, s:e, :, :n] = Lc.transpose(0, 1)
        A[b, s:e, :, :n] = Ac.transpose(0, 1)
        w[b, s:e] = (Ac @ (kc * (bc * Gc.exp())[..., None])).transpose(0, 1)
        u[b, s:e] = (Ac @ (vc * bc[..., None])).transpose(0, 1)
    return L, A, w, u


WY_CASES = [
    # B, T, H, K, V, gated, cu_seqlens, chunk_size
    (2, 100, 2, 20, 24, True, None, 64),
    (1, 150, 1, 72, 40, True, [0, 1, 70, 150], 64),  # several key tiles, a length-1 sequence
    (2, 50, 2, 16, 16, False, None, 16),
    (1, 60, 2, 32, 20, False, [0, 13, 45, 60], 32),
]


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("B,T,H,K,V,gated,cu,BT", WY_CASES)
def test_wy_matches_direct(backend, B, T, H, K, V, gated, cu, BT):
    seed("wy", backend, B, T, H, K, V, gated, cu, BT)
    cu_seqlens = torch.tensor(cu, dtype=torch.int32) if cu is not None else None
    k = F.normalize(torch.randn(B, T, H, K), dim=-1).requires_grad_()
    v = torch.randn(B, T, H, V).requires_grad_()
    beta = torch.randn(B, T, H).sigmoid().requires_grad_()
    G = chunk_local_cumsum(F.logsigmoid(torch.randn(B, T, H)), BT, cu_seqlens=cu_seqlens).requires_grad_() \
        if gated else None
    dw, du = torch.randn(B, T, H, K), torch.randn(B, T, H, V)
    L_ref, A_ref, w_ref, u_ref = direct_wy(k, v, beta, G, cu_seqlens, BT)
    leaves = [x for x in (k, v, beta, G) if x is not None]
    grads_ref = torch.autograd.grad((w_ref * dw).sum() + (u_ref * du).sum(), leaves)
    with use_backend(backend), poisoned_empty(), torch.no_grad():
        L = chunk_scaled_dot_kkt_fwd(k, beta, G, cu_seqlens, BT)
        A = solve_tril(L, cu_seqlens, BT)
        A_fused = chunk_kkt_solve(k, beta, G, cu_seqlens, BT)  # the same A, L kept in registers
        w, u = recompute_w_u_fwd(k, v, beta, A, G, cu_seqlens, BT)
        dk, dv, dbeta, dG = prepare_wy_repr_bwd(k, v, beta, A, dw, du, G, cu_seqlens, BT)
    for name, a, b in zip(("L", "A", "A fused", "w", "u"), (L, A, A_fused, w, u), (L_ref, A_ref, A_ref, w_ref, u_ref)):
        assert_close(name, a, b, 1e-5)
    for name, a, b in zip(("dk", "dv", "dbeta", "dG"), (dk, dv, dbeta, dG), grads_ref):
        assert_close(name, a, b, 1e-5)
    assert (dG is None) == (G is None)


def direct_state_pass(q, k, w, u, G, h0, do, dv, dht, scale, cu_seqlens, BT, num_chunks):
    """States, v_new and the loss whose gradients the backward block returns: the inter-chunk output term,
    sum(v_new * dv) and <ht, dht>. Zero perturbations z (on v_new) and e (on each chunk's leaving state) expose
    dv_new and dh through autograd."""
    B, T, H, K = k.shape
    V = u.shape[-1]
    z = torch.zeros_like(u, requires_grad=True)
    e = torch.zeros(B, num_chunks, H, K, V, requires_grad=True)
    h = torch.zeros(B, num_chunks, H, K, V)
    v_new = torch.zeros_like(u)
    finals, loss = {}, 0.
    for i, b, c, s, t in chunks(cu_seqlens, B, T, BT):
        state = finals.get(i, h0[i] if h0 is not None else torch.zeros(H, K, V))
        h[b, c] = state
        Gc = G[b, s:t] if G is not None else torch.zeros(t - s, H)
        vn = u[b, s:t] - torch.einsum("thk,hkv->thv", w[b, s:t], state) + z[b, s:t]
        v_new[b, s:t] = vn
        o_inter = scale * torch.einsum("thk,hkv->thv", q[b, s:t] * Gc.exp()[..., None], state)
        loss = loss + (o_inter * do[b, s:t]).sum() + (vn * dv[b, s:t]).sum()
        kg = k[b, s:t] * (Gc[-1] - Gc).exp()[..., None]
        finals[i] = Gc[-1].exp()[:, None, None] * state + torch.einsum("thk,thv->hkv", kg, vn) + e[b, c]
    ht = torch.stack([finals[i] for i in sorted(finals)])
    loss = loss + (ht * dht).sum()
    return h, v_new, ht, loss, z, e


STATE_CASES = [
    # B, T, H, K, V, gated, cu_seqlens, chunk_size, h0
    (2, 100, 2, 20, 24, True, None, 64, True),
    (1, 150, 1, 100, 40, True, [0, 1, 70, 150], 64, True),  # K > 64: one 128-wide key block
    (2, 50, 2, 16, 16, False, None, 16, False),
    (1, 60, 2, 32, 20, True, [0, 13, 45, 60], 32, False),
]


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("B,T,H,K,V,gated,cu,BT,use_h0", STATE_CASES)
def test_state_pass_matches_direct(backend, B, T, H, K, V, gated, cu, BT, use_h0):
    seed("delta_h", backend, B, T, H, K, V, gated, cu, BT, use_h0)
    cu_seqlens = torch.tensor(cu, dtype=torch.int64) if cu is not None else None
    N = len(cu) - 1 if cu is not None else B
    NT = int(prepare_chunk_offsets(cu_seqlens, BT)[-1]) if cu is not None else -(-T // BT)
    q, k = torch.randn(B, T, H, K), F.normalize(torch.randn(B, T, H, K), dim=-1)
    w, u = 0.3 * torch.randn(B, T, H, K), torch.randn(B, T, H, V)
    G = chunk_local_cumsum(F.logsigmoid(torch.randn(B, T, H)), BT, cu_seqlens=cu_seqlens) if gated else None
    h0 = torch.randn(N, H, K, V).requires_grad_() if use_h0 else None
    do, dv, dht = torch.randn(B, T, H, V), torch.randn(B, T, H, V), torch.randn(N, H, K, V)
    scale = 0.4
    h_ref, vn_ref, ht_ref, loss, z, e = direct_state_pass(q, k, w, u, G, h0, do, dv, dht, scale, cu_seqlens, BT, NT)
    grads = torch.autograd.grad(loss, [z, e] + ([h0] if use_h0 else []))
    with use_backend(backend), poisoned_empty(), torch.no_grad():
        h, v_new, ht = chunk_gated_delta_rule_fwd_h(k, w, u, G, h0, True, cu_seqlens, BT)
        dh, dh0, dv_new = chunk_gated_delta_rule_bwd_dhu(q, k, w, do, dv, G, h0, dht, scale, cu_seqlens, BT)
    for name, a, b in zip(("h", "v_new", "ht", "dv_new", "dh"), (h, v_new, ht, dv_new, dh),
                          (h_ref, vn_ref, ht_ref, *grads[:2])):
        assert_close(name, a, b, 1e-5)
    if use_h0:
        assert_close("dh0", dh0, grads[2], 1e-5)
    else:
        assert dh0 is None
