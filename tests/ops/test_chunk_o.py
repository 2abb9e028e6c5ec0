"""The intra-chunk output block (`fla/ops/utils/chunk_o.py`): Triton kernels (interpreted on CPU) and PyTorch twins
against autograd through a direct per-chunk formula, with h and dh as free inputs."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fla.ops.utils.chunk_o import chunk_bwd_dqkwg, chunk_bwd_dv, chunk_bwd_dv_local, chunk_fwd_o
from fla.ops.utils.cumsum import chunk_local_cumsum
from fla.ops.utils.dispatch import use_backend
from fla.ops.utils.index import prepare_chunk_offsets, sequence_spans
from tests.helpers import assert_close, poisoned_empty, seed

BT = 16  # small chunks: several per sequence at test sizes


def direct_loss(q, k, v, h, G, do, dh, scale, cu_seqlens, chunk_size):
    """sum(o * do) + sum_c <h_leaving_c, dh[c]>, chunk by chunk with explicit slices (no padding, no masks)."""
    B, T, H, _ = q.shape
    offsets = prepare_chunk_offsets(cu_seqlens, chunk_size).tolist() if cu_seqlens is not None else None
    loss = q.new_zeros(())
    for i, (b, bos, eos) in enumerate(sequence_spans(cu_seqlens, B, T)):
        first = offsets[i] if offsets is not None else 0
        for c, start in enumerate(range(bos, eos, chunk_size)):
            end = min(start + chunk_size, eos)
            qc, kc, vc, doc = q[b, start:end], k[b, start:end], v[b, start:end], do[b, start:end]
            hc, dhc = h[b, first + c], dh[b, first + c]
            Gc = G[b, start:end] if G is not None else torch.zeros(end - start, H, dtype=q.dtype)
            n = end - start
            causal = torch.ones(n, n, dtype=torch.bool).tril()
            D = torch.where(causal[:, :, None], (Gc[:, None] - Gc[None, :]), float("-inf")).exp()  # [t, s, H]
            A = torch.einsum("thk,shk->tsh", qc, kc) * D
            o_inter = torch.einsum("thk,hkv->thv", qc * Gc.exp()[..., None], hc)
            o = scale * (torch.einsum("tsh,shv->thv", A, vc) + o_inter)
            kg = kc * (Gc[-1:] - Gc).exp()[..., None]
            h_next = Gc[-1].exp()[:, None, None] * hc + torch.einsum("shk,shv->hkv", kg, vc)
            loss = loss + (o * doc).sum() + (h_next * dhc).sum()
    return loss


def make_inputs(B, T, H, K, V, gated, cu_seqlens, dtype=torch.float32):
    NT = int(prepare_chunk_offsets(cu_seqlens, BT)[-1]) if cu_seqlens is not None else -(-T // BT)
    q, k = torch.randn(B, T, H, K, dtype=dtype), torch.randn(B, T, H, K, dtype=dtype)
    v, do = torch.randn(B, T, H, V, dtype=dtype), torch.randn(B, T, H, V, dtype=dtype)
    h, dh = torch.randn(B, NT, H, K, V, dtype=dtype), torch.randn(B, NT, H, K, V, dtype=dtype)
    G = chunk_local_cumsum(F.logsigmoid(torch.randn(B, T, H) + 2), BT, cu_seqlens=cu_seqlens) if gated else None
    return q, k, v, do, h, dh, G


CASES = [
    # B, T, H, K, V, gated, cu_seqlens
    (2, 40, 2, 32, 16, True, None),
    (2, 33, 1, 48, 40, False, None),
    (1, 45, 2, 20, 24, True, [0, 1, 17, 17, 32, 45]),  # lengths 1, 16, 0, 15, 13
    (1, 37, 1, 80, 72, True, None),  # several key and value tiles: dg summed over key tiles
]


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("B,T,H,K,V,gated,cu,dtype", [c + ("float32",) for c in CASES] + [
    (2, 40, 2, 32, 16, True, None, "float16"),
])
def test_chunk_o_matches_autograd(backend, B, T, H, K, V, gated, cu, dtype):
    seed(B, T, H, K, V, gated, cu, dtype)
    dtype = getattr(torch, dtype)
    cu_seqlens = torch.tensor(cu, dtype=torch.int32) if cu is not None else None
    q, k, v, do, h, dh, G = make_inputs(B, T, H, K, V, gated, cu_seqlens, dtype)
    rel = 1e-5 if dtype == torch.float32 else 5e-3
    scale = K ** -0.5
    with use_backend(backend), poisoned_empty():
        o = chunk_fwd_o(q, k, v, h, G, scale, cu_seqlens, BT)
        dv = chunk_bwd_dv(q, k, do, dh, G, scale, cu_seqlens, BT)
        dv_local = chunk_bwd_dv_local(q, k, do, G, scale, cu_seqlens, BT)
        dq, dk, dw, dg = chunk_bwd_dqkwg(q, k, v, do, h, dh, G, None, None, scale, cu_seqlens, BT)
    assert dw is None and (dg is None) == (not gated)

    leaves = [x.double().requires_grad_() for x in (q, k, v, h)]
    Gd = G.double().requires_grad_() if gated else None
    loss = direct_loss(*leaves, Gd, do.double(), dh.double(), scale, cu_seqlens, BT)
    ref = torch.autograd.grad(loss, leaves + ([Gd] if gated else []))
    # o is the gradient of the loss w.r.t. do; dv_local is dv with dh = 0.
    do_leaf = do.double().requires_grad_()
    o_ref = torch.autograd.grad(direct_loss(*[x.double() for x in (q, k, v, h)], G.double() if gated else None,
                                            do_leaf, dh.double(), scale, cu_seqlens, BT), do_leaf)[0]
    v_leaf = v.double().requires_grad_()
    dv_local_ref = torch.autograd.grad(direct_loss(q.double(), k.double(), v_leaf, h.double(),
                                                   G.double() if gated else None, do.double(),
                                                   torch.zeros_like(dh, dtype=torch.float64), scale, cu_seqlens, BT),
                                       v_leaf)[0]
    assert o.dtype == dv.dtype == dq.dtype == dk.dtype == dtype
    assert_close("o", o, o_ref, rel)
    assert_close("dv_local", dv_local, dv_local_ref, rel)
    assert_close("dq", dq, ref[0], rel)
    assert_close("dk", dk, ref[1], rel)
    assert_close("dv", dv, ref[2], rel)
    if gated:
        assert dg.dtype == torch.float32
        assert_close("dg", dg, ref[4], rel)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("B,T,H,K,V,gated,cu", CASES[1:])
def test_chunk_dw_delta_branch(backend, B, T, H, K, V, gated, cu):
    """dw = -(dv h[c]^T): the gradient of w through values u - w h[c], checked by autograd."""
    seed("dw", B, T, H, K, V, gated, cu)
    cu_seqlens = torch.tensor(cu, dtype=torch.int32) if cu is not None else None
    q, k, v, do, h, dh, G = make_inputs(B, T, H, K, V, gated, cu_seqlens)
    w, dv = torch.randn_like(q), torch.randn_like(v)
    with use_backend(backend), poisoned_empty():
        dq, dk, dw, dg = chunk_bwd_dqkwg(q, k, v, do, h, dh, G, w, dv, 0.5, cu_seqlens, BT)
    w_leaf = w.double().requires_grad_()
    offsets = prepare_chunk_offsets(cu_seqlens, BT).tolist() if cu_seqlens is not None else None
    loss = 0
    for i, (b, bos, eos) in enumerate(sequence_spans(cu_seqlens, B, T)):
        first = offsets[i] if offsets is not None else 0
        for c, start in enumerate(range(bos, eos, BT)):
            end = min(start + BT, eos)
            u = -torch.einsum("thk,hkv->thv", w_leaf[b, start:end], h[b, first + c].double())
            loss = loss + (u * dv[b, start:end].double()).sum()
    assert_close("dw", dw, torch.autograd.grad(loss, w_leaf)[0], 1e-5)
