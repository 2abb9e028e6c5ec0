"""`fla.ops.hgrn`: chunk and fused recurrent, Triton (interpreted on CPU) and PyTorch paths, against the token by
token naive recurrence: output, final state and every gradient (x, g, initial state, with a final-state gradient
flowing in); fixed length and packed (a length-1, an empty and odd-length sequences)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fla.ops.hgrn import chunk_hgrn, fused_recurrent_hgrn, naive_chunk_hgrn, naive_recurrent_hgrn
from fla.ops.utils.dispatch import use_backend
from tests.helpers import assert_close, poisoned_empty, seed

OPS = {"chunk": chunk_hgrn, "recurrent": fused_recurrent_hgrn}
NAMES = ("o", "ht", "dx", "dg", "dh0")


def run(fn, xs, do, dht, output_final_state, cu_seqlens):
    x, g, h0 = xs
    o, ht = fn(x, g, h0, output_final_state, cu_seqlens=cu_seqlens)
    loss = (o.float() * do).sum() + ((ht * dht).sum() if output_final_state else 0.)
    leaves = [t for t in xs if t is not None]
    grads = iter(torch.autograd.grad(loss, leaves))
    return [o, ht] + [next(grads) if t is not None else None for t in xs]


CASES = [
    # op, backend, B, T, D, cu_seqlens, h0, final_state, dtype
    # (the interpreter's chunks are 16 tokens: see fla.ops.hgrn.chunk.CHUNK_SIZE)
    ("chunk", "triton", 2, 40, 20, None, True, True, "float32"),  # 3 chunks, 2 channel blocks
    ("chunk", "triton", 1, 45, 16, [0, 1, 20, 20, 45], False, True, "float32"),
    ("chunk", "triton", 1, 35, 8, [0, 17, 35], True, False, "float16"),
    ("recurrent", "triton", 2, 20, 40, None, True, True, "float32"),
    ("recurrent", "triton", 1, 25, 24, [0, 1, 12, 12, 25], True, True, "float16"),
    ("chunk", "torch", 1, 150, 24, [0, 1, 70, 70, 150], True, True, "float32"),
    ("recurrent", "torch", 2, 30, 16, None, False, True, "float32"),
]


@pytest.mark.parametrize("op,backend,B,T,D,cu,use_h0,final_state,dtype", CASES)
def test_matches_naive(op, backend, B, T, D, cu, use_h0, final_state, dtype):
    seed("hgrn", op, backend, B, T, D, cu, use_h0, final_state, dtype)
    dtype = getattr(torch, dtype)
    cu_seqlens = torch.tensor(cu, dtype=torch.int32) if cu is not None else None
    N = len(cu) - 1 if cu is not None else B
    xs = [torch.randn(B, T, D).to(dtype), F.logsigmoid(torch.randn(B, T, D) + 1).to(dtype),
          torch.randn(N, D) if use_h0 else None]
    xs = [t.requires_grad_() if t is not None else None for t in xs]
    do, dht = torch.randn(B, T, D), torch.randn(N, D)
    with use_backend(backend), poisoned_empty():
        got = run(OPS[op], xs, do, dht, final_state, cu_seqlens)
    ref_xs = [t.detach().float().requires_grad_() if t is not None else None for t in xs]
    want = run(naive_recurrent_hgrn, ref_xs, do, dht, final_state, cu_seqlens)
    rel = 1e-5 if dtype == torch.float32 else 2e-3
    for name, a, b in zip(NAMES, got, want):
        if b is None:
            assert a is None, f"{name}: expected None"
            continue
        assert a.dtype == (torch.float32 if name in ("ht", "dh0") else dtype), f"{name}: dtype {a.dtype}"
        assert_close(name, a.float(), b, rel)


def test_naive_chunk_is_the_recurrence():
    seed("hgrn-naive-chunk")
    x, g, h0 = torch.randn(2, 128, 8), F.logsigmoid(torch.randn(2, 128, 8)), torch.randn(2, 8)
    o, ht = naive_chunk_hgrn(x, g, h0, True)
    want_o, want_ht = naive_recurrent_hgrn(x, g, h0, True)
    assert_close("o", o, want_o, 1e-6)
    assert_close("ht", ht, want_ht, 1e-6)


@pytest.mark.parametrize("op", ["chunk", "recurrent"])
@pytest.mark.parametrize("name,match", [
    ("x_rank", "x must have 3 dims"), ("g_shape", "g must have shape"), ("cu_batch", "batch size must be 1"),
    ("cu_end", "cu_seqlens must end"), ("h0_shape", "initial_state must have shape"),
    ("h0_dtype", "initial_state must have dtype"),
])
def test_rejects_bad_input(op, name, match):
    B, T, D = 2, 8, 16
    kw = dict(x=torch.randn(B, T, D), g=torch.randn(B, T, D))
    if name == "x_rank":
        kw["x"] = torch.randn(B, T, 2, D)
    elif name == "g_shape":
        kw["g"] = torch.randn(B, T, D + 1)
    elif name == "cu_batch":
        kw["cu_seqlens"] = torch.tensor([0, 3, 8])
    elif name == "cu_end":
        kw = {n: t[:1] for n, t in kw.items()}
        kw["cu_seqlens"] = torch.tensor([0, 3, 7])
    elif name == "h0_shape":
        kw["initial_state"] = torch.zeros(B, D + 1)
    elif name == "h0_dtype":
        kw["initial_state"] = torch.zeros(B, D, dtype=torch.float64)
    with pytest.raises(ValueError, match=match):
        OPS[op](**kw)
