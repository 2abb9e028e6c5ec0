"""`fla.ops.gated_delta_product`: the chunk op (Triton interpreted on CPU, and the PyTorch path) against the token by
token naive recurrence: output, final state and every gradient (q, k, v, g, beta, initial state, with a final-state
gradient flowing in); fixed length and packed (a length-1 and odd-length sequences), with and without a gate."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fla.ops.gated_delta_product import chunk_gated_delta_product, naive_recurrent_gated_delta_product
from fla.ops.utils.dispatch import use_backend
from tests.helpers import assert_close, poisoned_empty, seed

NAMES = ("o", "ht", "dq", "dk", "dv", "dg", "dbeta", "dh0")


def make_inputs(B, T, H, HV, K, V, n, num_states, use_g, use_h0, l2norm, dtype):
    q = torch.randn(B, T, H, K)
    k = torch.randn(B, T * n, H, K)
    if not l2norm:
        k = F.normalize(k, dim=-1)  # stable only for ||k||^2 beta <= ~2
    v = torch.randn(B, T * n, HV, V)
    g = F.logsigmoid(torch.randn(B, T, HV)) if use_g else None
    beta = torch.rand(B, T * n, HV) * 2  # negative eigenvalues allowed, as the layer's default
    h0 = torch.randn(num_states, HV, K, V) if use_h0 else None
    xs = [q.to(dtype), k.to(dtype), v.to(dtype), None if g is None else g.to(dtype), beta.to(dtype), h0]
    return [x.requires_grad_() if x is not None else None for x in xs]


def run(fn, xs, n, do, dht, l2norm, cu_seqlens):
    q, k, v, g, beta, h0 = xs
    if fn is naive_recurrent_gated_delta_product:
        o, ht = fn(q, k, v, g, beta, None, cu_seqlens, h0, True, n, use_qk_l2norm_in_kernel=l2norm)
    else:
        o, ht = fn(q, k, v, g, beta, n, initial_state=h0, output_final_state=True, use_qk_l2norm_in_kernel=l2norm,
                   cu_seqlens=cu_seqlens)
    loss = (o.float() * do).sum() + (ht * dht).sum()
    leaves = [x for x in xs if x is not None]
    grads = iter(torch.autograd.grad(loss, leaves))
    return [o, ht] + [next(grads) if x is not None else None for x in xs]


CASES = [
    # backend, B, T, H, HV, K, V, n, cu_seqlens, gate, h0, l2norm, dtype
    ("triton", 2, 37, 1, 2, 20, 24, 2, None, True, True, False, "float32"),  # grouped values, 74 rows: 2 chunks
    ("triton", 1, 45, 2, 2, 32, 16, 3, [0, 1, 22, 45], True, False, True, "float32"),  # length 1, odd lengths
    ("triton", 1, 40, 1, 1, 16, 16, 2, [0, 17, 40], True, True, False, "float16"),
    ("torch", 1, 50, 2, 2, 16, 24, 3, [0, 1, 20, 20, 50], True, True, True, "float32"),  # and a length 0
    ("torch", 2, 40, 1, 1, 16, 16, 2, None, False, True, False, "float32"),  # no gate: DeltaProduct
    ("torch", 2, 30, 1, 1, 16, 16, 1, None, True, False, False, "float32"),  # n = 1: the gated delta rule
]


@pytest.mark.parametrize("backend,B,T,H,HV,K,V,n,cu,gate,use_h0,l2norm,dtype", CASES)
def test_chunk_matches_naive(backend, B, T, H, HV, K, V, n, cu, gate, use_h0, l2norm, dtype):
    seed("gdp", backend, B, T, H, HV, K, V, n, cu, gate, use_h0, l2norm, dtype)
    dtype = getattr(torch, dtype)
    cu_seqlens = torch.tensor(cu, dtype=torch.int32) if cu is not None else None
    N = len(cu) - 1 if cu is not None else B
    xs = make_inputs(B, T, H, HV, K, V, n, N, gate, use_h0, l2norm, dtype)
    do, dht = torch.randn(B, T, HV, V), torch.randn(N, HV, K, V)
    with use_backend(backend), poisoned_empty():
        got = run(chunk_gated_delta_product, xs, n, do, dht, l2norm, cu_seqlens)
    ref_xs = [x.detach().float().requires_grad_() if x is not None else None for x in xs]
    want = run(naive_recurrent_gated_delta_product, ref_xs, n, do, dht, l2norm, cu_seqlens)
    rel = 1e-4 if dtype == torch.float32 else 1e-2
    for name, a, b in zip(NAMES, got, want):
        if b is None:
            assert a is None, f"{name}: expected None"
            continue
        assert a.dtype == (torch.float32 if name in ("ht", "dh0") else dtype), f"{name}: dtype {a.dtype}"
        assert_close(name, a.float(), b, rel)


def test_varlen_equals_per_sequence_and_host_copy():
    """Packed sequences give each sequence's own run; cu_seqlens_cpu (no device read) gives the same."""
    seed("gdp-varlen")
    lens, n, H, K, V = [5, 1, 12], 2, 2, 16, 16
    T = sum(lens)
    q, k = torch.randn(1, T, H, K), F.normalize(torch.randn(1, T * n, H, K), dim=-1)
    v, g, beta = torch.randn(1, T * n, H, V), F.logsigmoid(torch.randn(1, T, H)), torch.rand(1, T * n, H)
    cu = torch.tensor([0, 5, 6, 18])
    with use_backend("torch"):
        o, ht = chunk_gated_delta_product(q, k, v, g, beta, n, output_final_state=True, cu_seqlens=cu,
                                          cu_seqlens_cpu=cu.clone())
        for i, (bos, eos) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
            o_i, ht_i = chunk_gated_delta_product(q[:, bos:eos], k[:, n * bos:n * eos], v[:, n * bos:n * eos],
                                                  g[:, bos:eos], beta[:, n * bos:n * eos], n,
                                                  output_final_state=True)
            assert_close(f"o[{i}]", o[:, bos:eos], o_i, 1e-5)
            assert_close(f"ht[{i}]", ht[i:i + 1], ht_i, 1e-5)


def _bad(name):
    B, T, H, K, V, n = 1, 6, 2, 16, 16, 2
    kw = dict(q=torch.randn(B, T, H, K), k=torch.randn(B, T * n, H, K), v=torch.randn(B, T * n, H, V),
              g=torch.randn(B, T, H), beta=torch.rand(B, T * n, H), num_householder=n)
    if name == "k_rows":
        kw["k"] = torch.randn(B, T, H, K)
    elif name == "g_per_step":
        kw["g"] = torch.randn(B, T * n, H)
    elif name == "beta_rows":
        kw["beta"] = torch.rand(B, T, H)
    elif name == "n":
        kw["num_householder"] = 0
    elif name == "cu_end":
        kw["cu_seqlens"] = torch.tensor([0, 3, 5])
    elif name == "h0":
        kw["initial_state"] = torch.zeros(2, H, K, V)
    return kw


@pytest.mark.parametrize("name,match", [
    ("k_rows", r"k must have shape \[B, T \* num_householder"), ("g_per_step", "one gate per token"),
    ("beta_rows", "beta must have shape"), ("n", "num_householder must be a positive int"),
    ("cu_end", "cu_seqlens must end"), ("h0", "initial_state must have shape"),
])
def test_rejects_bad_input(name, match):
    with pytest.raises(ValueError, match=match):
        chunk_gated_delta_product(**_bad(name))
