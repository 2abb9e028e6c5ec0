"""Inputs the peer library takes, every public op takes too: q/k/v/gates that are not contiguous (a head-first tensor
transposed into [B, T, H, K]) are copied, and a float16/bfloat16 initial_state is cast to float32, with results and
gradients equal to the contiguous float32 call (the initial state's gradient in its own dtype)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fla.ops.attn import parallel_attn
from fla.ops.delta_rule import chunk_delta_rule, fused_recurrent_delta_rule
from fla.ops.gated_delta_rule import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule
from fla.ops.gla import chunk_gla, fused_recurrent_gla
from fla.ops.linear_attn import chunk_linear_attn, fused_recurrent_linear_attn
from fla.ops.retention import chunk_retention, fused_recurrent_retention
from fla.ops.simple_gla import chunk_simple_gla, fused_recurrent_simple_gla
from fla.ops.utils.dispatch import use_backend
from tests.helpers import assert_close, seed

B, T, H, K, V = 2, 20, 2, 16, 8


def head_first(*shape):
    """A [B, T, H, D] view of a [B, H, T, D] tensor: right shape, not contiguous."""
    b, t, h, *rest = shape
    return torch.randn(b, h, t, *rest).transpose(1, 2)


def inputs(op: str) -> dict:
    x = dict(q=head_first(B, T, H, K), k=head_first(B, T, H, K), v=head_first(B, T, H, V))
    if op.endswith("delta_rule"):
        x["k"] = F.normalize(x["k"], dim=-1)
        x["beta"] = torch.rand(B, H, T).transpose(1, 2)
    if op.endswith(("simple_gla", "gated_delta_rule")):
        x["g"] = F.logsigmoid(torch.randn(B, H, T)).transpose(1, 2)
    if op.endswith("_gla") and "simple" not in op:
        x["gk" if op.startswith("fused") else "g"] = F.logsigmoid(head_first(B, T, H, K))
    return x


OPS = {
    "chunk_simple_gla": chunk_simple_gla, "fused_recurrent_simple_gla": fused_recurrent_simple_gla,
    "chunk_gla": chunk_gla, "fused_recurrent_gla": fused_recurrent_gla,
    "chunk_retention": chunk_retention, "fused_recurrent_retention": fused_recurrent_retention,
    "chunk_linear_attn": chunk_linear_attn, "fused_recurrent_linear_attn": fused_recurrent_linear_attn,
    "chunk_delta_rule": chunk_delta_rule, "fused_recurrent_delta_rule": fused_recurrent_delta_rule,
    "chunk_gated_delta_rule": chunk_gated_delta_rule,
    "fused_recurrent_gated_delta_rule": fused_recurrent_gated_delta_rule,
}


def run(fn, x: dict, h0: torch.Tensor):
    leaves = {n: t.detach().clone().requires_grad_() for n, t in x.items()}
    h0 = h0.detach().clone().requires_grad_()
    extra = dict(normalize=False) if "linear_attn" in fn.__name__ else {}
    o, ht = fn(**leaves, initial_state=h0, output_final_state=True, **extra)
    (o.sum() + ht.sum()).backward()
    return o, ht, {n: t.grad for n, t in leaves.items()}, h0.grad


@pytest.mark.parametrize("state_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("op", OPS)
def test_non_contiguous_inputs_and_half_initial_state(op, state_dtype):
    seed("peer-inputs", op, state_dtype)
    x = inputs(op)
    h0 = torch.randn(B, H, K, V).to(state_dtype)
    with use_backend("torch"):
        o, ht, grads, dh0 = run(OPS[op], x, h0)
        o_ref, ht_ref, grads_ref, dh0_ref = run(OPS[op], {n: t.contiguous() for n, t in x.items()}, h0.float())
    assert ht.dtype == torch.float32 and dh0.dtype == state_dtype
    assert_close("o", o, o_ref, 1e-6)
    assert_close("ht", ht, ht_ref, 1e-6)
    for name in grads:
        assert_close("d" + name, grads[name], grads_ref[name], 1e-6)
    assert_close("dh0", dh0.float(), dh0_ref.to(state_dtype).float(), 0)


def test_triton_path_takes_them_too():
    """The same through the interpreted kernels, for one chunked and one recurrent op."""
    seed("peer-inputs-triton")
    for op in ("chunk_gated_delta_rule", "fused_recurrent_simple_gla"):
        x = inputs(op)
        h0 = torch.randn(B, H, K, V).to(torch.bfloat16)
        with use_backend("triton"):
            o, ht, _, dh0 = run(OPS[op], x, h0)
        with use_backend("torch"):
            o_ref, ht_ref, _, _ = run(OPS[op], {n: t.contiguous() for n, t in x.items()}, h0.float())
        assert dh0.dtype == torch.bfloat16
        assert_close("o", o, o_ref, 1e-4)
        assert_close("ht", ht, ht_ref, 1e-4)


def test_parallel_attn_takes_non_contiguous_inputs():
    seed("peer-inputs-attn")
    q, k, v = head_first(B, T, H, K), head_first(B, T, H, K), head_first(B, T, H, K)
    with use_backend("torch"):
        assert_close("o", parallel_attn(q, k, v), parallel_attn(q.contiguous(), k.contiguous(), v.contiguous()), 0)
