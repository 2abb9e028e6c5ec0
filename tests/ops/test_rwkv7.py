"""`fla.ops.rwkv7`: the RWKV-7 names over the DPLR delta rule (r for q, w the log decay for gk, the peer's defaults),
against the naive DPLR recurrence with the low-rank terms RWKV-7 builds (a = -kk, b = kk * iclr)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fla.ops.generalized_delta_rule import naive_recurrent_dplr_delta_rule
from fla.ops.rwkv7 import chunk_rwkv7, fused_mul_recurrent_rwkv7, fused_recurrent_rwkv7
from fla.ops.utils.dispatch import use_backend
from tests.helpers import assert_close, poisoned_empty, seed

NAMES = ("o", "ht", "dr", "dw", "dk", "dv", "dkk", "diclr", "dh0")


def make_inputs(B, T, H, K, V, N):
    r, k, v = torch.randn(B, T, H, K), torch.randn(B, T, H, K) * 0.3, torch.randn(B, T, H, V)
    # the RWKV-7 layer's decay: w = -exp(-0.5) * sigmoid(x), in (-0.61, 0)
    w = -0.6065306597126334 * torch.randn(B, T, H, K).sigmoid()
    kk = F.normalize(torch.randn(B, T, H, K), dim=-1)
    iclr = torch.rand(B, T, H, K)
    return [x.requires_grad_() for x in (r, w, k, v, kk, iclr, torch.randn(N, H, K, V))]


def grads(o, ht, do, dht, xs):
    return [o, ht, *torch.autograd.grad((o.float() * do).sum() + (ht * dht).sum(), xs)]


def reference(xs, do, dht, scale, cu_seqlens):
    r, w, k, v, kk, iclr, h0 = xs
    o, ht = naive_recurrent_dplr_delta_rule(r, k, v, -kk, kk * iclr, w, scale, h0, True, cu_seqlens)
    return grads(o, ht, do, dht, xs)


# the kernels themselves are covered by tests/ops/test_dplr.py: here the names, defaults and the kk / a form
@pytest.mark.parametrize("op,backend", [("chunk", "torch"), ("mul_recurrent", "triton"), ("recurrent", "torch")])
def test_matches_naive(op, backend):
    seed("rwkv7", op, backend)
    cu = [0, 1, 20, 37]
    cu_seqlens = torch.tensor(cu, dtype=torch.int32)
    B, T, H, K, V, N = 1, 37, 1, 16, 16, 3
    xs = make_inputs(B, T, H, K, V, N)
    r, w, k, v, kk, iclr, h0 = xs
    do, dht = torch.randn(B, T, H, V), torch.randn(N, H, K, V)
    with use_backend(backend), poisoned_empty():
        if op == "chunk":  # scale defaults to 1.0
            o, ht = chunk_rwkv7(r, w, k, v, -kk, kk * iclr, initial_state=h0, output_final_state=True,
                                cu_seqlens=cu_seqlens)
            scale = 1.0
        elif op == "mul_recurrent":  # kk and the rate, scale 1.0
            o, ht = fused_mul_recurrent_rwkv7(r, w, k, v, kk, iclr, initial_state=h0, output_final_state=True,
                                              cu_seqlens=cu_seqlens)
            scale = 1.0
        else:  # scale defaults to K ** -0.5 and the final state is returned by default
            o, ht = fused_recurrent_rwkv7(r, w, k, v, -kk, kk * iclr, initial_state=h0, cu_seqlens=cu_seqlens)
            scale = K ** -0.5
        got = grads(o, ht, do, dht, xs)
    want = reference(xs, do, dht, scale, cu_seqlens)
    for name, x, y in zip(NAMES, got, want):
        assert_close(name, x, y, 1e-4)


def test_defaults_follow_the_peer():
    """chunk_rwkv7: scale 1.0, no final state unless asked; fused_recurrent_rwkv7: K ** -0.5 and a final state."""
    seed("rwkv7-defaults")
    r, w, k, v, kk, iclr, _ = (x.detach() for x in make_inputs(1, 5, 1, 16, 16, 1))
    with use_backend("torch"):
        o, ht = chunk_rwkv7(r, w, k, v, -kk, kk * iclr)
        assert ht is None
        assert_close("chunk", o, naive_recurrent_dplr_delta_rule(r, k, v, -kk, kk * iclr, w, 1.0)[0], 1e-5)
        o, ht = fused_recurrent_rwkv7(r, w, k, v, -kk, kk * iclr)
        assert ht is not None
        assert_close("recurrent", o, naive_recurrent_dplr_delta_rule(r, k, v, -kk, kk * iclr, w)[0], 1e-5)


def test_rejects_bad_input():
    r = torch.randn(1, 4, 1, 16)
    with pytest.raises(ValueError, match="w must have"):
        chunk_rwkv7(r, torch.randn(1, 4, 1), r, r, r, r)
    with pytest.raises(ValueError, match="kk and a must be"):
        fused_mul_recurrent_rwkv7(r, r, r, r, None, r)
