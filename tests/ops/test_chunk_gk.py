"""The shared per-key-gate intra-chunk blocks (fla/ops/utils/chunk_gk.py) against autograd of the chunk formula.

With h (state entering each chunk) and dh (gradient of the state leaving it) held fixed, the blocks' outputs are the
gradients of  L = sum_c [ <o_c, do_c> + <h_leave_c, dh_c> ]  where, per chunk, G = cumsum(g) and
    o_t = scale * ((q_t exp(G_t)) h + sum_{s <= t} (sum_k q_tk k_sk exp(G_tk - G_sk)) v_s)
    h_leave = exp(G_L) h + sum_s (k_s exp(G_L - G_s))^T v_s.
The reference builds that loss in float64 and lets autograd differentiate it (no hand-derived gradient in it).
"""
import pytest
import torch
import torch.nn.functional as F

from fla.ops.utils.chunk_gk import chunk_gk_bwd_dqkg, chunk_gk_bwd_dv, chunk_gk_fwd_o
from fla.ops.utils.cumsum import chunk_local_cumsum
from fla.ops.utils.dispatch import use_backend
from fla.ops.utils.index import prepare_chunk_offsets, sequence_spans
from tests.helpers import assert_close, device, poisoned_empty, seed


def reference(q, k, v, g, h, do, dh, scale, cu_seqlens, chunk_size):
    """o and the gradients (q, k, v, raw g) of the loss above, float64 autograd, one chunk at a time."""
    q, k, v, g = (x.double().requires_grad_() for x in (q, k, v, g))
    o = torch.zeros_like(v)
    loss = 0.
    offsets = prepare_chunk_offsets(cu_seqlens, chunk_size).tolist() if cu_seqlens is not None else None
    for i, (b, bos, eos) in enumerate(sequence_spans(cu_seqlens, q.shape[0], q.shape[1])):
        for c, start in enumerate(range(bos, eos, chunk_size)):
            end = min(start + chunk_size, eos)
            c += offsets[i] if offsets is not None else 0
            qc, kc, vc = q[b, start:end], k[b, start:end], v[b, start:end]
            G = g[b, start:end].cumsum(0)
            L = end - start
            causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()[:, :, None, None]
            D = torch.where(causal, (G[:, None] - G[None, :]).clamp(max=0), -torch.inf).exp()
            A = torch.einsum("thk,shk,tshk->hts", qc, kc, D)
            hc = h[b, c].double()
            oc = scale * (torch.einsum("thk,hkv->thv", qc * G.exp(), hc) + torch.einsum("hts,shv->thv", A, vc))
            h_leave = G[-1].exp()[..., None] * hc + torch.einsum("shk,shv->hkv", kc * (G[-1] - G).exp(), vc)
            o[b, start:end] = oc.detach()
            loss = loss + (oc * do[b, start:end].double()).sum() + (h_leave * dh[b, c].double()).sum()
    return (o, *torch.autograd.grad(loss, (q, k, v, g)))


CASES = [
    # (B, T, cu_seqlens, H, K, V, chunk_size, decay)
    (2, 45, None, 1, 48, 40, 16, "logsigmoid"),
    (1, 75, [0, 1, 20, 20, 75], 2, 16, 24, 32, "strong"),
    (1, 70, [0, 64, 70], 1, 32, 16, 64, "very strong"),
    (1, 40, None, 1, 80, 72, 16, "logsigmoid"),  # several K and V blocks in every kernel
]


def decays(shape, kind):
    g = F.logsigmoid(torch.randn(shape))
    if kind == "strong":
        g[..., ::3] = -5 + 0.1 * torch.randn_like(g[..., ::3])
    if kind == "very strong":
        # G reaches ~ -5 * 64 = -320 over a chunk: exp(-G) alone would overflow float32
        g = -5 + 0.5 * torch.randn(shape)
    return g


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("B,T,cu,H,K,V,chunk_size,decay", CASES)
def test_blocks_match_autograd(B, T, cu, H, K, V, chunk_size, decay, backend):
    seed(B, T, cu, H, K, V, chunk_size, decay)
    cu_seqlens = torch.tensor(cu, dtype=torch.int32, device=device()) if cu is not None else None
    NT = triton_cdiv(T, chunk_size) if cu is None else int(prepare_chunk_offsets(cu_seqlens, chunk_size)[-1])
    q, k, v = torch.randn(B, T, H, K), torch.randn(B, T, H, K), torch.randn(B, T, H, V)
    g = decays((B, T, H, K), decay)
    h, dh = torch.randn(B, NT, H, K, V), torch.randn(B, NT, H, K, V)
    do = torch.randn(B, T, H, V)
    q, k, v, g, h, dh, do = (x.to(device()) for x in (q, k, v, g, h, dh, do))  # compiled kernels on a GPU machine
    scale = K ** -0.5
    o_ref, dq_ref, dk_ref, dv_ref, dg_ref = reference(q, k, v, g, h, do, dh, scale, cu_seqlens, chunk_size)
    with use_backend(backend), poisoned_empty():
        gc = chunk_local_cumsum(g, chunk_size, cu_seqlens=cu_seqlens)
        o = chunk_gk_fwd_o(q, k, v, gc, h, scale, cu_seqlens, chunk_size)
        dv = chunk_gk_bwd_dv(q, k, gc, do, dh, scale, cu_seqlens, chunk_size)
        dq, dk, dg = chunk_gk_bwd_dqkg(q, k, v, gc, h, do, dh, scale, cu_seqlens, chunk_size, g_dtype=g.dtype)
    for name, got, want in [("o", o, o_ref), ("dq", dq, dq_ref), ("dk", dk, dk_ref), ("dv", dv, dv_ref)]:
        assert_close(name, got, want, 1e-5)
    # dg is a reverse sum of q dq - k dk, terms that largely cancel under very strong decays: float32 keeps ~5e-5
    # there (the torch twin, in plain float32 einsums, shows the same)
    assert_close("dg", dg, dg_ref, 2e-4 if decay == "very strong" else 1e-5)


def triton_cdiv(a, b):
    return -(-a // b)
