"""`fla.ops.kda`: chunk and fused recurrent, Triton (interpreted on CPU) and PyTorch paths, against the token-by-token
naive recurrence: output, final state and every gradient (q, k, v, g, beta, initial state, and A_log / dt_bias of
the in-kernel gate), with a final-state gradient flowing in."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fla.ops.kda import chunk_kda, fused_recurrent_kda, naive_kda_gate, naive_recurrent_kda
from fla.ops.utils.dispatch import use_backend
from tests.helpers import assert_close, poisoned_empty, seed

OPS = {"chunk": chunk_kda, "recurrent": fused_recurrent_kda}
NAMES = ("o", "ht", "dq", "dk", "dv", "dg", "dbeta", "dh0", "dA_log", "ddt_bias")


def make_inputs(B, T, H, HV, K, V, num_states, use_h0, gate, l2norm, dtype):
    """Drawn the field's way: logsigmoid gates (or a raw gate with A_log, dt_bias), unit keys, sigmoid betas."""
    q = torch.randn(B, T, H, K)
    k = torch.randn(B, T, H, K)
    if not l2norm:
        k = F.normalize(k, dim=-1)
    v = torch.randn(B, T, HV, V)
    g = torch.randn(B, T, HV, K) if gate else F.logsigmoid(torch.randn(B, T, HV, K))
    beta = torch.randn(B, T, HV).sigmoid()
    h0 = torch.randn(num_states, HV, K, V) if use_h0 else None
    A_log = torch.rand(HV) if gate else None
    dt_bias = torch.randn(HV * K) if gate else None
    xs = [q.to(dtype), k.to(dtype), v.to(dtype), g.to(dtype), beta.to(dtype), h0, A_log, dt_bias]
    return [x.requires_grad_() if x is not None else None for x in xs]


def run(fn, xs, do, dht, output_final_state, l2norm, cu_seqlens):
    q, k, v, g, beta, h0, A_log, dt_bias = xs
    gate = dict(A_log=A_log, dt_bias=dt_bias, use_gate_in_kernel=True) if A_log is not None else {}
    o, ht = fn(q, k, v, g, beta, initial_state=h0, output_final_state=output_final_state,
               use_qk_l2norm_in_kernel=l2norm, cu_seqlens=cu_seqlens, **gate)
    loss = (o.float() * do).sum() + ((ht * dht).sum() if output_final_state else 0.)
    leaves = [x for x in xs if x is not None]
    grads = iter(torch.autograd.grad(loss, leaves))
    return [o, ht] + [next(grads) if x is not None else None for x in xs]


def reference(q, k, v, g, beta, initial_state=None, output_final_state=False, use_qk_l2norm_in_kernel=False,
              cu_seqlens=None, A_log=None, dt_bias=None, use_gate_in_kernel=False):
    if use_gate_in_kernel:
        g = naive_kda_gate(g, A_log, dt_bias)
    return naive_recurrent_kda(q, k, v, g, beta, None, initial_state, output_final_state,
                               use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel, cu_seqlens=cu_seqlens)


CASES = [
    # op, backend, B, T, H, HV, K, V, cu_seqlens, h0, final_state, gate, l2norm, dtype
    ("chunk", "triton", 1, 83, 1, 2, 20, 24, [0, 1, 40, 83], True, True, True, False, "float32"),  # len 1, odd
    ("chunk", "triton", 2, 70, 1, 1, 32, 16, None, False, False, False, True, "float32"),
    ("chunk", "triton", 1, 50, 1, 1, 16, 16, [0, 17, 50], True, True, False, False, "float16"),
    ("chunk", "torch", 1, 90, 1, 2, 20, 24, [0, 1, 64, 64, 90], True, True, True, True, "float32"),  # len 0
    ("chunk", "torch", 2, 40, 1, 1, 16, 16, None, True, True, False, False, "bfloat16"),
    ("recurrent", "triton", 1, 30, 1, 2, 20, 24, [0, 1, 13, 30], True, True, True, False, "float32"),
    ("recurrent", "torch", 2, 20, 1, 1, 16, 16, None, True, True, True, True, "float32"),
]


@pytest.mark.parametrize("op,backend,B,T,H,HV,K,V,cu,use_h0,final_state,gate,l2norm,dtype", CASES)
def test_matches_naive(op, backend, B, T, H, HV, K, V, cu, use_h0, final_state, gate, l2norm, dtype):
    seed("kda", op, backend, B, T, H, HV, K, V, cu, use_h0, final_state, gate, l2norm, dtype)
    dtype = getattr(torch, dtype)
    cu_seqlens = torch.tensor(cu, dtype=torch.int32) if cu is not None else None
    N = len(cu) - 1 if cu is not None else B
    xs = make_inputs(B, T, H, HV, K, V, N, use_h0, gate, l2norm, dtype)
    do, dht = torch.randn(B, T, HV, V), torch.randn(N, HV, K, V)
    with use_backend(backend), poisoned_empty():
        got = run(OPS[op], xs, do, dht, final_state, l2norm, cu_seqlens)
    ref_xs = [x.detach().float().requires_grad_() if x is not None else None for x in xs]
    want = run(reference, ref_xs, do, dht, final_state, l2norm, cu_seqlens)
    rel = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 3e-2}[dtype]
    for name, a, b in zip(NAMES, got, want):
        if b is None:
            assert a is None, f"{name}: expected None"
            continue
        assert a.dtype == (torch.float32 if name in ("ht", "dh0", "dA_log", "ddt_bias") else dtype), name
        assert_close(name, a.float(), b, rel)


def test_chunk_matches_naive_under_strong_decay():
    """Chunk-local cumsums down to ~ -500 per key channel: no exp(G_t - G_s) ratio may overflow."""
    seed("kda-strong-decay")
    B, T, H, K, V = 1, 70, 1, 16, 16
    q, k, v = torch.randn(B, T, H, K), F.normalize(torch.randn(B, T, H, K), dim=-1), torch.randn(B, T, H, V)
    g = F.logsigmoid(torch.randn(B, T, H, K) - 3) * 8
    xs = [x.requires_grad_() for x in (q, k, v, g, torch.rand(B, T, H), torch.randn(B, H, K, V))] + [None, None]
    do, dht = torch.randn(B, T, H, V), torch.randn(B, H, K, V)
    with poisoned_empty():
        got = run(chunk_kda, xs, do, dht, True, False, None)
    want = run(reference, xs, do, dht, True, False, None)
    for name, a, b in zip(NAMES, got, want):
        if b is not None:
            assert_close(name, a, b, 1e-2 if name == "dg" else 1e-4)


def test_peer_options_state_v_first_and_beta_sigmoid():
    """state_v_first transposes the states; use_beta_sigmoid_in_kernel / allow_neg_eigval read beta as logits."""
    seed("kda-options")
    B, T, H, K, V = 1, 20, 1, 16, 16
    q, k, v = torch.randn(B, T, H, K), F.normalize(torch.randn(B, T, H, K), dim=-1), torch.randn(B, T, H, V)
    g, b, h0 = F.logsigmoid(torch.randn(B, T, H, K)), torch.randn(B, T, H), torch.randn(B, H, K, V)
    with use_backend("torch"):
        o, ht = chunk_kda(q, k, v, g, b, initial_state=h0.transpose(-1, -2), output_final_state=True,
                          state_v_first=True, use_beta_sigmoid_in_kernel=True, allow_neg_eigval=True)
    o2, ht2 = naive_recurrent_kda(q, k, v, g, 2 * b.sigmoid(), initial_state=h0, output_final_state=True)
    assert_close("o", o, o2, 1e-5)
    assert_close("ht", ht.transpose(-1, -2), ht2, 1e-5)


def _bad(name):
    B, T, H, K, V = 2, 8, 2, 16, 16
    kw = dict(q=torch.randn(B, T, H, K), k=torch.randn(B, T, H, K), v=torch.randn(B, T, H, V),
              g=torch.randn(B, T, H, K), beta=torch.rand(B, T, H))
    if name == "g_scalar":
        kw["g"] = torch.randn(B, T, H)
    elif name == "k_dtype":
        kw["k"] = kw["k"].half()
    elif name == "v_heads":
        kw["v"] = torch.randn(B, T, 3, V)
    elif name == "beta_shape":
        kw["beta"] = torch.rand(B, T, H, V)
    elif name == "gate_no_A":
        kw["use_gate_in_kernel"] = True
    elif name == "A_without_gate":
        kw["A_log"] = torch.zeros(H)
    elif name == "dt_bias_shape":
        kw.update(use_gate_in_kernel=True, A_log=torch.zeros(H), dt_bias=torch.zeros(H * K + 1))
    elif name == "lower_bound":
        kw["lower_bound"] = -5.0
    elif name == "cu_batch":
        kw["cu_seqlens"] = torch.tensor([0, 3, 8])
    elif name == "h0_shape":
        kw["initial_state"] = torch.zeros(B, H, K, V + 1)
    elif name == "neg_eigval":
        kw["allow_neg_eigval"] = True
    return kw


BAD = [("g_scalar", "g must have"), ("k_dtype", "k must have dtype"), ("v_heads", "multiple of"),
       ("beta_shape", "beta must have"), ("gate_no_A", "needs A_log"), ("A_without_gate", "only with"),
       ("dt_bias_shape", "dt_bias must have shape"), ("lower_bound", "lower_bound is not supported"),
       ("cu_batch", "batch size must be 1"), ("h0_shape", "initial_state must have shape"),
       ("neg_eigval", "allow_neg_eigval")]


@pytest.mark.parametrize("op,name,match", [(op, n, m) for op in OPS for n, m in BAD])
def test_rejects_bad_input(op, name, match):
    with pytest.raises(ValueError, match=match):
        OPS[op](**_bad(name))


@pytest.mark.parametrize("option", ["safe_gate", "return_intermediate_states", "use_graph"])
def test_chunk_refuses_peer_only_options(option):
    B, T, H, K = 1, 8, 1, 16
    x = torch.randn(B, T, H, K)
    with pytest.raises(ValueError, match=f"{option} is not supported"):
        chunk_kda(x, x, x, x, torch.rand(B, T, H), **{option: True})
