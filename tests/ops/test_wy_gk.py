"""The per-key-channel gate blocks of `fla/ops/utils` (`wy_gk.py`: the gated K K^T and its backward, w/u and the WY
backward; `delta_h.py` with gk), on both paths, against autograd through direct per-chunk formulas (explicit
slices, torch.linalg.inv, no padding, no sub-chunks)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fla.ops.utils.cumsum import chunk_local_cumsum
from fla.ops.utils.delta_h import chunk_gated_delta_rule_bwd_dhu, chunk_gated_delta_rule_fwd_h
from fla.ops.utils.dispatch import use_backend
from fla.ops.utils.wy import solve_tril
from fla.ops.utils.wy_gk import chunk_kkt_gk_bwd, chunk_kkt_gk_fwd, prepare_wy_repr_gk_bwd, recompute_w_u_gk_fwd
from tests.helpers import assert_close, poisoned_empty, seed
from tests.ops.test_wy import chunks


def direct_kkt(q, k, G, beta, strict, cu_seqlens, BT):
    """M [B, T, H, BT] row layout: [beta_t] sum_c q_tc k_sc exp(G_tc - G_sc) on s < t (s <= t); differentiable."""
    B, T, H, K = k.shape
    M = torch.zeros(B, T, H, BT)
    for _, b, _, s, e in chunks(cu_seqlens, B, T, BT):
        n = e - s
        mask = torch.ones(n, n, dtype=torch.bool).tril(-1 if strict else 0)
        diff = (G[b, s:e, None] - G[b, s:e][None]).masked_fill(~mask[:, :, None, None], -1e30)  # [t, s, H, K]
        Mc = torch.einsum("thk,shk,tshk->ths", q[b, s:e], k[b, s:e], diff.exp())
        if beta is not None:
            Mc = Mc * beta[b, s:e, :, None]
        M[b, s:e, :, :n] = Mc
    return M


def direct_wy(k, v, beta, G, cu_seqlens, BT):
    B, T, H, K = k.shape
    M = direct_kkt(k, k, G, beta, True, cu_seqlens, BT)
    w, u = torch.zeros_like(k), torch.zeros_like(v)
    A = torch.zeros(B, T, H, BT)
    for _, b, _, s, e in chunks(cu_seqlens, B, T, BT):
        n = e - s
        Ac = torch.linalg.inv(torch.eye(n) + M[b, s:e, :, :n].transpose(0, 1))  # [H, t, s]
        A[b, s:e, :, :n] = Ac.transpose(0, 1)
        bc = beta[b, s:e, :, None]
        w[b, s:e] = torch.einsum("hts,shk->thk", Ac, k[b, s:e] * bc * G[b, s:e].exp())
        u[b, s:e] = torch.einsum("hts,shv->thv", Ac, v[b, s:e] * bc)
    return A, w, u


def gates(B, T, H, K, cu_seqlens, BT):
    return chunk_local_cumsum(F.logsigmoid(torch.randn(B, T, H, K)) * 2, BT, cu_seqlens=cu_seqlens)


KKT_CASES = [
    # B, T, H, K, cu_seqlens, chunk_size, two operands, strict, beta
    (1, 70, 2, 20, [0, 1, 33, 70], 64, True, False, True),
    (2, 40, 1, 40, None, 32, False, True, False),  # two key tiles of 32
]


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("B,T,H,K,cu,BT,two,strict,use_beta", KKT_CASES)
def test_kkt_gk_matches_direct(backend, B, T, H, K, cu, BT, two, strict, use_beta):
    seed("kkt-gk", backend, B, T, H, K, cu, BT, two, strict, use_beta)
    cu_seqlens = torch.tensor(cu, dtype=torch.int32) if cu is not None else None
    k = torch.randn(B, T, H, K).requires_grad_()
    q = torch.randn(B, T, H, K).requires_grad_() if two else None
    G = gates(B, T, H, K, cu_seqlens, BT).requires_grad_()
    beta = torch.rand(B, T, H) if use_beta else None
    want = direct_kkt(q if two else k, k, G, beta, strict, cu_seqlens, BT)
    dM = torch.randn_like(want) * (want != 0)
    leaves = [k, G] + ([q] if two else [])
    dk, dG, *dq = torch.autograd.grad((want * dM).sum(), leaves)
    with use_backend(backend), poisoned_empty():
        got = chunk_kkt_gk_fwd(k.detach(), G.detach(), beta, q.detach() if two else None, cu_seqlens, BT, strict)
        if use_beta:
            dM = dM * beta[..., None]  # the backward is of the un-scaled M
        gdk, gdq, gdG = chunk_kkt_gk_bwd(k.detach(), G.detach(), dM, q.detach() if two else None, cu_seqlens, BT)
    assert_close("M", got, want, 1e-5)
    assert_close("dk", gdk, dk, 1e-5)
    assert_close("dG", gdG, dG, 1e-5)
    if two:
        assert_close("dq", gdq, dq[0], 1e-5)


WY_CASES = [
    # B, T, H, K, V, cu_seqlens, chunk_size
    (1, 90, 2, 20, 24, [0, 1, 64, 90], 64),
    (2, 40, 1, 16, 40, None, 16),
]


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("B,T,H,K,V,cu,BT", WY_CASES)
def test_wy_gk_matches_direct(backend, B, T, H, K, V, cu, BT):
    seed("wy-gk", backend, B, T, H, K, V, cu, BT)
    cu_seqlens = torch.tensor(cu, dtype=torch.int32) if cu is not None else None
    k = F.normalize(torch.randn(B, T, H, K), dim=-1).requires_grad_()
    v = torch.randn(B, T, H, V).requires_grad_()
    beta = torch.rand(B, T, H).requires_grad_()
    G = gates(B, T, H, K, cu_seqlens, BT).requires_grad_()
    A, w, u = direct_wy(k, v, beta, G, cu_seqlens, BT)
    dw, du = torch.randn_like(w), torch.randn_like(u)
    want = torch.autograd.grad((w * dw).sum() + (u * du).sum(), [k, v, beta, G])
    args = [x.detach() for x in (k, v, beta)]
    with use_backend(backend), poisoned_empty():
        gA = solve_tril(chunk_kkt_gk_fwd(args[0], G.detach(), args[2], cu_seqlens=cu_seqlens, chunk_size=BT),
                        cu_seqlens, BT)
        gw, gu = recompute_w_u_gk_fwd(*args, gA, G.detach(), cu_seqlens, BT)
        got = prepare_wy_repr_gk_bwd(*args, gA, G.detach(), dw, du, cu_seqlens=cu_seqlens, chunk_size=BT)
    assert_close("A", gA, A, 1e-5)
    assert_close("w", gw, w, 1e-5)
    assert_close("u", gu, u, 1e-5)
    for name, a, b in zip(("dk", "dv", "dbeta", "dG"), got, want):
        assert_close(name, a, b, 1e-5)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_delta_h_gk_matches_direct(backend):
    """h, v_new and ht with a per-key gate against the chunk recurrence written out; the backward's dh0 and dv_new
    against autograd of that recurrence (dv given as the gradient of v_new through each chunk's own output: zero)."""
    seed("delta-h-gk", backend)
    B, T, H, K, V, BT = 1, 90, 2, 20, 24, 32
    cu_seqlens = torch.tensor([0, 1, 50, 90], dtype=torch.int32)
    k = F.normalize(torch.randn(B, T, H, K), dim=-1)
    w, u = torch.randn(B, T, H, K) * 0.3, torch.randn(B, T, H, V)
    G = gates(B, T, H, K, cu_seqlens, BT)
    h0 = torch.randn(3, H, K, V).requires_grad_()
    u.requires_grad_()
    hs, vns, finals = [], torch.zeros(B, T, H, V), []
    for i, b, c, s, e in chunks(cu_seqlens, B, T, BT):
        if s == int(cu_seqlens[i]):
            state = h0[i]
        hs.append(state)
        vn = u[b, s:e] - torch.einsum("thk,hkv->thv", w[b, s:e], state)
        vns[b, s:e] = vn
        Gc = G[b, s:e]
        state = state * Gc[-1].exp()[..., None] + torch.einsum("thk,thv->hkv", k[b, s:e] * (Gc[-1] - Gc).exp(), vn)
        if e == int(cu_seqlens[i + 1]):
            finals.append(state)
    ht = torch.stack(finals)
    dht = torch.randn_like(ht)
    dh0, du = torch.autograd.grad((ht * dht).sum(), [h0, u])
    with use_backend(backend), poisoned_empty():
        h, v_new, got_ht = chunk_gated_delta_rule_fwd_h(k, w, u.detach(), None, h0.detach(), True, cu_seqlens, BT,
                                                        gk=G)
        zeros = torch.zeros(B, T, H, V)
        _, got_dh0, dv_new = chunk_gated_delta_rule_bwd_dhu(torch.zeros_like(k), k, w, zeros, zeros, None, h0, dht,
                                                            1.0, cu_seqlens, BT, gk=G)
    assert_close("h", h[0], torch.stack(hs), 1e-5)
    assert_close("v_new", v_new, vns, 1e-5)
    assert_close("ht", got_ht, ht, 1e-5)
    assert_close("dh0", got_dh0, dh0, 1e-5)
    assert_close("dv_new", dv_new, du, 1e-5)  # u enters only through v_new, so du = dL/dv_new
