"""`fla.ops.delta_rule`: chunk and fused recurrent (incl. a beta per value channel), Triton (interpreted on CPU) and
PyTorch paths, against the token-by-token naive recurrence: output, final state and every gradient (q, k, v, beta,
initial state, with a final-state gradient flowing in)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fla.ops.delta_rule import chunk_delta_rule, fused_recurrent_delta_rule, naive_recurrent_delta_rule
from fla.ops.utils.dispatch import use_backend
from tests.helpers import assert_close, poisoned_empty, seed

OPS = {"chunk": chunk_delta_rule, "recurrent": fused_recurrent_delta_rule}
NAMES = ("o", "ht", "dq", "dk", "dv", "dbeta", "dh0")


def run(fn, xs, do, dht, output_final_state, l2norm, cu_seqlens):
    q, k, v, beta, h0 = xs
    o, ht = fn(q, k, v, beta, initial_state=h0, output_final_state=output_final_state,
               use_qk_l2norm_in_kernel=l2norm, cu_seqlens=cu_seqlens)
    loss = (o.float() * do).sum() + ((ht * dht).sum() if output_final_state else 0.)
    leaves = [x for x in xs if x is not None]
    grads = iter(torch.autograd.grad(loss, leaves))
    return [o, ht] + [next(grads) if x is not None else None for x in xs]


CASES = [
    # op, backend, B, T, H, K, V, cu_seqlens, h0, final_state, l2norm, per-channel beta
    ("chunk", "triton", 2, 100, 2, 20, 24, None, True, True, False, False),
    ("chunk", "triton", 1, 130, 1, 32, 40, [0, 1, 50, 130], False, True, True, False),
    ("chunk", "torch", 2, 90, 2, 24, 16, None, True, False, True, False),
    ("chunk", "torch", 1, 100, 2, 16, 16, [0, 1, 64, 100], True, True, False, False),
    ("recurrent", "triton", 2, 20, 1, 20, 24, None, True, True, False, True),
    ("recurrent", "triton", 1, 24, 2, 16, 40, [0, 1, 9, 24], False, True, True, False),
    ("recurrent", "torch", 1, 40, 2, 20, 24, [0, 1, 17, 40], True, True, True, True),
]


@pytest.mark.parametrize("op,backend,B,T,H,K,V,cu,use_h0,final_state,l2norm,per_channel", CASES)
def test_matches_naive(op, backend, B, T, H, K, V, cu, use_h0, final_state, l2norm, per_channel):
    seed(op, backend, B, T, H, K, V, cu, use_h0, final_state, l2norm, per_channel)
    cu_seqlens = torch.tensor(cu, dtype=torch.int64) if cu is not None else None
    N = len(cu) - 1 if cu is not None else B
    k = torch.randn(B, T, H, K)
    xs = [torch.randn(B, T, H, K), k if l2norm else F.normalize(k, dim=-1), torch.randn(B, T, H, V),
          torch.randn(B, T, H, V).sigmoid() if per_channel else torch.randn(B, T, H).sigmoid(),
          torch.randn(N, H, K, V) if use_h0 else None]
    xs = [x.requires_grad_() if x is not None else None for x in xs]
    do, dht = torch.randn(B, T, H, V), torch.randn(N, H, K, V)
    with use_backend(backend), poisoned_empty():
        got = run(OPS[op], xs, do, dht, final_state, l2norm, cu_seqlens)
    want = run(naive_recurrent_delta_rule, xs, do, dht, final_state, l2norm, cu_seqlens)
    for name, a, b in zip(NAMES, got, want):
        if b is None:
            assert a is None, f"{name}: expected None"
            continue
        assert_close(name, a, b, 1e-4)


def test_chunk_matches_naive_at_large_beta():
    """beta near 1 and unit keys: the most contractive writes, where the triangular solve is least benign."""
    seed("large-beta")
    B, T, H, K, V = 1, 128, 2, 32, 16
    q, k, v = torch.randn(B, T, H, K), F.normalize(torch.randn(B, T, H, K), dim=-1), torch.randn(B, T, H, V)
    beta = 1 - 0.01 * torch.rand(B, T, H)
    o, ht = chunk_delta_rule(q, k, v, beta, output_final_state=True)
    o_ref, ht_ref = naive_recurrent_delta_rule(q, k, v, beta, output_final_state=True)
    assert_close("o", o, o_ref, 1e-4)
    assert_close("ht", ht, ht_ref, 1e-4)


BAD = [
    ("chunk", dict(beta=torch.rand(1, 8, 2, 16)), "beta must have 3 dims"),  # per-channel beta: recurrent only
    ("recurrent", dict(beta=torch.rand(1, 8, 2, 15)), "beta must have shape"),
    ("chunk", dict(v=torch.randn(1, 8, 4, 16)), "beta must have shape"),  # grouped v needs beta per value head
    ("recurrent", dict(cu_seqlens=torch.tensor([0, 4.0, 8])), "cu_seqlens must have dtype"),
    ("chunk", dict(initial_state=torch.zeros(2, 2, 16, 16)), "initial_state must have shape"),
]


@pytest.mark.parametrize("op,change,match", BAD)
def test_rejects_bad_input(op, change, match):
    kw = dict(q=torch.randn(1, 8, 2, 16), k=torch.randn(1, 8, 2, 16), v=torch.randn(1, 8, 2, 16),
              beta=torch.rand(1, 8, 2))
    kw.update(change)
    with pytest.raises(ValueError, match=match):
        OPS[op](**kw)


def test_recurrent_beta_defaults_to_one():
    seed("delta-beta-none")
    B, T, H, K, V = 1, 10, 2, 16, 8
    q, k, v = torch.randn(B, T, H, K), F.normalize(torch.randn(B, T, H, K), dim=-1), torch.randn(B, T, H, V)
    with use_backend("torch"):
        o, _ = fused_recurrent_delta_rule(q, k, v)
    assert_close("o", o, naive_recurrent_delta_rule(q, k, v, torch.ones(B, T, H))[0], 1e-6)
