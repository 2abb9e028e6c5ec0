"""The shared state pass (h) and its backward (dh) against a token-by-token recurrence differentiated by autograd."""
import pytest
import torch
import torch.nn.functional as F

from fla.ops.utils.chunk_h import chunk_bwd_dh, chunk_fwd_h
from fla.ops.utils.cumsum import chunk_local_cumsum
from fla.ops.utils.dispatch import use_backend
from fla.ops.utils.index import sequence_spans
from tests.helpers import assert_close, poisoned_empty, seed

BT = 16


def recurrence(q, k, v, g, gk, gv, h0, scale, cu_seqlens):
    """o_t = scale * q_t S_t with S_t = decay_t(S_{t-1}) + k_t^T v_t; returns o, final states, and the states at
    every chunk boundary (leaving each chunk) with grads retained."""
    B, T, H, K = k.shape
    V = v.shape[-1]
    o = torch.zeros(B, T, H, V)
    finals, leaving = [], []
    for i, (b, bos, eos) in enumerate(sequence_spans(cu_seqlens, B, T)):
        S = h0[i] if h0 is not None else torch.zeros(H, K, V, requires_grad=True)
        for t in range(bos, eos):
            if g is not None:
                S = S * g[b, t].exp()[:, None, None]
            if gk is not None:
                S = S * gk[b, t].exp()[:, :, None]
            if gv is not None:
                S = S * gv[b, t].exp()[:, None, :]
            S = S + k[b, t][:, :, None] * v[b, t][:, None, :]
            o[b, t] = scale * torch.einsum("hk,hkv->hv", q[b, t], S)
            if (t - bos) % BT == BT - 1 or t == eos - 1:
                # A fresh node, so its grad holds only what later chunks (and dht) send back.
                S = S.clone()
                S.retain_grad()
                leaving.append(S)
        finals.append(S)
    return o, torch.stack(finals), leaving


CASES = [
    # (B, T, cu_seqlens, H, K, V, gates)
    (2, 50, None, 2, 32, 16, "g"),
    (2, 37, None, 1, 48, 40, "gk"),
    (1, 70, [0, 1, 17, 17, 49, 70], 2, 16, 24, "gk+gv"),
    (1, 45, [0, 13, 44, 45], 2, 32, 32, "g"),
    (2, 33, None, 2, 16, 16, "none"),
]


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("use_h0", [False, True])
@pytest.mark.parametrize("B,T,cu,H,K,V,gates", CASES)
def test_state_pass_matches_recurrence(B, T, cu, H, K, V, gates, use_h0, backend):
    seed(B, T, cu, H, K, V, gates, use_h0)
    cu_seqlens = torch.tensor(cu, dtype=torch.int32) if cu is not None else None
    N = B if cu is None else len(cu) - 1
    q, k = torch.randn(B, T, H, K), torch.randn(B, T, H, K) / K**0.5
    v, do = torch.randn(B, T, H, V), torch.randn(B, T, H, V)
    g = F.logsigmoid(torch.randn(B, T, H)) if "g" in gates.split("+") else None
    gk = F.logsigmoid(torch.randn(B, T, H, K)) if "gk" in gates else None
    gv = F.logsigmoid(torch.randn(B, T, H, V)) if "gv" in gates else None
    h0 = torch.randn(N, H, K, V, requires_grad=True) if use_h0 else None
    dht = torch.randn(N, H, K, V)
    scale = K**-0.5

    o, ht_ref, leaving = recurrence(q, k, v, g, gk, gv, h0, scale, cu_seqlens)
    ((o * do).sum() + (ht_ref * dht).sum()).backward()

    cums = [chunk_local_cumsum(x, BT, cu_seqlens=cu_seqlens) if x is not None else None for x in (g, gk, gv)]
    with use_backend(backend), poisoned_empty():
        h, ht = chunk_fwd_h(k, v, *cums, h0=h0.detach() if use_h0 else None, output_final_state=True,
                            cu_seqlens=cu_seqlens, chunk_size=BT, states_in_fp32=True)
        dh, dh0 = chunk_bwd_dh(q, do, *cums, h0=h0, dht=dht, scale=scale, cu_seqlens=cu_seqlens, chunk_size=BT,
                               states_in_fp32=True)
    assert_close("ht", ht, ht_ref.detach(), 1e-5)
    # h[c] is the state entering chunk c: the state leaving chunk c-1, or h0 for a sequence's first chunk.
    flat_h, flat_dh = h.flatten(0, 1), dh.flatten(0, 1)
    assert flat_h.shape[0] == len(leaving)
    spans = sequence_spans(cu_seqlens, B, T)
    entering, i = [], 0
    for n, (_, bos, eos) in enumerate(spans):
        prev = h0[n].detach() if use_h0 else torch.zeros(H, K, V)
        for _ in range(bos, eos, BT):
            entering.append(prev)
            prev = leaving[i].detach()
            i += 1
    assert_close("h", flat_h, torch.stack(entering), 1e-5)
    assert_close("dh", flat_dh, torch.stack([s.grad for s in leaving]), 1e-5)
    if use_h0:
        assert_close("dh0", dh0, h0.grad, 1e-5)
    else:
        assert dh0 is None


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("shape,cu", [((2, 40, 3), None), ((1, 50, 2, 20), [0, 1, 19, 50])])
def test_cumsum_matches_torch(shape, cu, reverse):
    seed(shape, cu, reverse)
    g = F.logsigmoid(torch.randn(*shape))
    cu_seqlens = torch.tensor(cu, dtype=torch.int64) if cu is not None else None
    with poisoned_empty():
        got = chunk_local_cumsum(g, BT, reverse=reverse, cu_seqlens=cu_seqlens)
    want = torch.empty_like(g)
    for b, bos, eos in sequence_spans(cu_seqlens, shape[0], shape[1]):
        for s in range(bos, eos, BT):
            x = g[b, s:min(s + BT, eos)]
            want[b, s:s + len(x)] = x.flip(0).cumsum(0).flip(0) if reverse else x.cumsum(0)
    assert_close("cumsum", got, want, 1e-6)


def test_state_pass_bfloat16_matches_twin():
    """bf16 inputs: the interpreter's bf16 dots are wrong, so the launcher must upcast there; compare with the twin."""
    seed("bf16")
    q, k = torch.randn(1, 40, 2, 32).bfloat16(), torch.randn(1, 40, 2, 32).bfloat16()
    v, do = torch.randn(1, 40, 2, 24).bfloat16(), torch.randn(1, 40, 2, 24).bfloat16()
    g = chunk_local_cumsum(F.logsigmoid(torch.randn(1, 40, 2)), BT)
    with poisoned_empty():
        h, _ = chunk_fwd_h(k, v, g=g, chunk_size=BT)
        dh, _ = chunk_bwd_dh(q, do, g=g, scale=0.2, chunk_size=BT)
    with use_backend("torch"):
        h_ref, _ = chunk_fwd_h(k, v, g=g, chunk_size=BT)
        dh_ref, _ = chunk_bwd_dh(q, do, g=g, scale=0.2, chunk_size=BT)
    assert h.dtype == dh.dtype == torch.bfloat16
    assert_close("h", h.float(), h_ref.float(), 2e-2)
    assert_close("dh", dh.float(), dh_ref.float(), 2e-2)
