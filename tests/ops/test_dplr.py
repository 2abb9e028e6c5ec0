"""`fla.ops.generalized_delta_rule`: chunk and fused recurrent DPLR delta rule, Triton (interpreted on CPU) and
PyTorch paths, against the token-by-token naive recurrence: output, final state and every gradient (q, k, v, a, b,
gk, initial state, with a final-state gradient flowing in). Inputs are drawn as RWKV-7 draws them: logsigmoid
per-channel decays, unit keys, a = -kk and b = kk * rate with kk a unit vector and the rate in (0, 1), so every
transition diag(exp(gk)) + b^T a is a contraction."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fla.ops.generalized_delta_rule import (chunk_dplr_delta_rule, fused_recurrent_dplr_delta_rule,
                                          naive_recurrent_dplr_delta_rule)
from fla.ops.utils.dispatch import use_backend
from tests.helpers import assert_close, poisoned_empty, seed

OPS = {"chunk": chunk_dplr_delta_rule, "recurrent": fused_recurrent_dplr_delta_rule}
NAMES = ("o", "ht", "dq", "dk", "dv", "da", "db", "dgk", "dh0")


def make_inputs(B, T, H, K, V, num_states, use_h0, dtype, gate_shift=0., gate_mult=1.):
    q = torch.randn(B, T, H, K)
    k = F.normalize(torch.randn(B, T, H, K), dim=-1)
    v = torch.randn(B, T, H, V)
    kk = F.normalize(torch.randn(B, T, H, K), dim=-1)
    a, b = -kk, kk * torch.rand(B, T, H, K)
    gk = F.logsigmoid(torch.randn(B, T, H, K) + gate_shift) * gate_mult
    h0 = torch.randn(num_states, H, K, V) if use_h0 else None
    xs = [x.to(dtype) for x in (q, k, v, a, b, gk)] + [h0]
    return [x.requires_grad_() if x is not None else None for x in xs]


def run(fn, xs, do, dht, output_final_state, cu_seqlens, **kw):
    q, k, v, a, b, gk, h0 = xs
    o, ht = fn(q, k, v, a, b, gk, initial_state=h0, output_final_state=output_final_state, cu_seqlens=cu_seqlens,
               **kw)
    loss = (o.float() * do).sum() + ((ht * dht).sum() if output_final_state else 0.)
    leaves = [x for x in xs if x is not None]
    grads = iter(torch.autograd.grad(loss, leaves))
    return [o, ht] + [next(grads) if x is not None else None for x in xs]


def naive(q, k, v, a, b, gk, initial_state, output_final_state, cu_seqlens):
    return naive_recurrent_dplr_delta_rule(q, k, v, a, b, gk, None, initial_state, output_final_state, cu_seqlens)


CASES = [
    # op, backend, B, T, H, K, V, cu_seqlens, h0, final_state, dtype
    ("chunk", "triton", 2, 37, 1, 32, 24, None, True, True, "float32"),
    ("chunk", "triton", 1, 47, 1, 20, 16, [0, 1, 18, 18, 47], True, True, "float32"),  # lengths 1, 17, 0, 29
    ("chunk", "triton", 1, 33, 1, 48, 32, None, False, True, "float16"),  # two key blocks
    ("chunk", "torch", 1, 77, 2, 20, 24, [0, 1, 40, 77], True, True, "float32"),
    ("chunk", "torch", 2, 50, 2, 32, 16, None, False, False, "float32"),
    ("recurrent", "triton", 1, 24, 2, 32, 16, [0, 1, 9, 9, 24], False, True, "float32"),
    ("recurrent", "torch", 1, 40, 1, 20, 24, [0, 1, 17, 40], True, True, "float32"),
]


@pytest.mark.parametrize("op,backend,B,T,H,K,V,cu,use_h0,final_state,dtype", CASES)
def test_matches_naive(op, backend, B, T, H, K, V, cu, use_h0, final_state, dtype):
    seed("dplr", op, backend, B, T, H, K, V, cu, use_h0, final_state, dtype)
    dtype = getattr(torch, dtype)
    cu_seqlens = torch.tensor(cu, dtype=torch.int32) if cu is not None else None
    N = len(cu) - 1 if cu is not None else B
    xs = make_inputs(B, T, H, K, V, N, use_h0, dtype)
    do, dht = torch.randn(B, T, H, V), torch.randn(N, H, K, V)
    with use_backend(backend), poisoned_empty():
        got = run(OPS[op], xs, do, dht, final_state, cu_seqlens)
    # the reference sees the same (possibly float16-rounded) inputs in float32
    ref_xs = [x.detach().float().requires_grad_() if x is not None else None for x in xs]
    want = run(naive, ref_xs, do, dht, final_state, cu_seqlens)
    rel = 1e-4 if dtype == torch.float32 else 1e-2
    for name, x, y in zip(NAMES, got, want):
        if y is None:
            assert x is None, f"{name}: expected None"
            continue
        assert x.dtype == (torch.float32 if name in ("ht", "dh0") else dtype), f"{name}: dtype {x.dtype}"
        assert_close(name, x.float(), y, rel)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_recurrent_reverse_matches_flipped_naive(backend):
    """reverse=True walks each packed sequence from its end: the naive recurrence on the time-flipped sequences."""
    seed("dplr-reverse", backend)
    cu = [0, 1, 9, 20]
    cu_seqlens = torch.tensor(cu)
    xs = make_inputs(1, 20, 1, 16, 16, 3, True, torch.float32)
    do, dht = torch.randn(1, 20, 1, 16), torch.randn(3, 1, 16, 16)
    flip = torch.cat([torch.arange(e - 1, s - 1, -1) for s, e in zip(cu[:-1], cu[1:])])
    with use_backend(backend):
        got = run(fused_recurrent_dplr_delta_rule, xs, do, dht, True, cu_seqlens, reverse=True)
    ref_xs = [x.detach().clone().requires_grad_() for x in xs]
    flipped = [x[:, flip] for x in ref_xs[:6]] + [ref_xs[6]]
    o, ht = naive(*flipped, True, cu_seqlens)
    grads = torch.autograd.grad((o[:, flip] * do).sum() + (ht * dht).sum(), ref_xs)
    for name, x, y in zip(NAMES, got, [o[:, flip], ht, *grads]):
        assert_close(name, x, y, 1e-4)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_chunk_matches_naive_under_strong_decay(backend):
    """Per-channel log decays down to ~ -20 a token (chunk cumsums to ~ -300): the element-wise intra-chunk decays and
    the <= 1 inter-chunk factors stay finite, and the gradients hold (the PyTorch form leaves its split decays for
    the element-wise ones here)."""
    seed("dplr-strong-decay", backend)
    xs = make_inputs(1, 40, 1, 16, 16, 1, True, torch.float32, gate_shift=-3., gate_mult=4.)
    do, dht = torch.randn(1, 40, 1, 16), torch.randn(1, 1, 16, 16)
    with use_backend(backend), poisoned_empty():
        got = run(chunk_dplr_delta_rule, xs, do, dht, True, None)
    want = run(naive, xs, do, dht, True, None)
    for name, x, y in zip(NAMES, got, want):
        assert_close(name, x, y, 1e-4)


def _bad(name):
    B, T, H, K, V = 2, 8, 2, 16, 16
    kw = dict(q=torch.randn(B, T, H, K), k=torch.randn(B, T, H, K), v=torch.randn(B, T, H, V),
              a=torch.randn(B, T, H, K), b=torch.randn(B, T, H, K), gk=-torch.rand(B, T, H, K))
    if name == "q_rank":
        kw["q"] = kw["q"][0]
    elif name == "a_shape":
        kw["a"] = torch.randn(B, T, H, K + 1)
    elif name == "b_dtype":
        kw["b"] = kw["b"].half()
    elif name == "v_heads":
        kw["v"] = torch.randn(B, T, 3, V)
    elif name == "gk_shape":
        kw["gk"] = torch.randn(B, T, H)
    elif name == "head_dim":
        kw = {n: torch.randn(B, T, H, 300) if n != "v" else x for n, x in kw.items()}
    elif name == "cu_batch":
        kw["cu_seqlens"] = torch.tensor([0, 3, 8])
    elif name == "cu_end":
        kw = {n: x[:1] for n, x in kw.items()}
        kw["cu_seqlens"] = torch.tensor([0, 3, 7])
    elif name == "h0_shape":
        kw["initial_state"] = torch.zeros(B, H, K, V + 1)
    elif name == "scale":
        kw["scale"] = torch.tensor(0.5)
    return kw


BAD = [
    ("q_rank", "q must have 4 dims"), ("a_shape", "a must have shape"), ("b_dtype", "b must have dtype"),
    ("v_heads", "v must have shape"), ("gk_shape", "gk must have 4 dims"), ("head_dim", "head dim"),
    ("cu_batch", "batch size must be 1"), ("cu_end", "cu_seqlens must end"),
    ("h0_shape", "initial_state must have shape"), ("scale", "scale must be"),
]


@pytest.mark.parametrize("op,name,match", [(op, name, match) for op in OPS for name, match in BAD])
def test_rejects_bad_input(op, name, match):
    with pytest.raises(ValueError, match=match):
        OPS[op](**_bad(name))


def test_chunk_refuses_context_parallelism():
    kw = _bad("none")
    with pytest.raises(ValueError, match="cp_context"):
        chunk_dplr_delta_rule(**kw, cp_context=object())


def test_peer_references_are_head_first():
    """dplr_recurrence / dplr_chunkwise keep the peer's layout ([B, H, T, *]) and defaults (scale K ** -0.5, the
    final state returned), at its import path too; the chunkwise one refuses a T its chunks do not divide."""
    from fla.ops.generalized_delta_rule.dplr.naive import dplr_chunkwise, dplr_recurrence

    seed("dplr-peer-refs")
    q, k, v, a, b, gk, h0 = (x.detach() for x in make_inputs(2, 32, 2, 16, 8, 2, True, torch.float32))
    want, want_ht = naive_recurrent_dplr_delta_rule(q, k, v, a, b, gk, None, h0, True)
    hf = [x.transpose(1, 2) for x in (q, k, v, a, b, gk)]
    for fn in (dplr_recurrence, dplr_chunkwise):
        o, ht = fn(*hf, h0)
        assert_close(fn.__name__, o.transpose(1, 2), want, 1e-6)
        assert_close(fn.__name__ + " ht", ht, want_ht, 1e-6)
    assert dplr_recurrence(*hf, output_final_state=False)[1] is None
    with pytest.raises(ValueError, match="chunk_size"):
        dplr_chunkwise(*[x[:, :, :30] for x in hf])
