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


STATE_V_FIRST_OPS = ["chunk_simple_gla", "fused_recurrent_simple_gla", "chunk_gla", "fused_recurrent_gla",
                     "fused_recurrent_retention", "chunk_gated_delta_rule", "fused_recurrent_gated_delta_rule"]


@pytest.mark.parametrize("op", STATE_V_FIRST_OPS)
def test_state_v_first_is_the_transposed_state(op):
    """state_v_first=True: initial and final states are [N, H, V, K]; the same numbers as [N, H, K, V] transposed,
    gradients included."""
    seed("state-v-first", op)
    x = {n: t.contiguous() for n, t in inputs(op).items()}
    h0 = torch.randn(B, H, K, V)
    with use_backend("torch"):
        o, ht, grads, dh0 = run(OPS[op], x, h0)
        leaves = {n: t.detach().clone().requires_grad_() for n, t in x.items()}
        h0_vk = h0.transpose(-1, -2).contiguous().requires_grad_()
        o_vk, ht_vk = OPS[op](**leaves, initial_state=h0_vk, output_final_state=True, state_v_first=True)
        (o_vk.sum() + ht_vk.sum()).backward()
    assert ht_vk.shape == (B, H, V, K)
    assert_close("o", o_vk, o, 0)
    assert_close("ht", ht_vk.transpose(-1, -2), ht, 0)
    assert_close("dh0", h0_vk.grad.transpose(-1, -2), dh0, 0)
    for name, leaf in leaves.items():
        assert_close("d" + name, leaf.grad, grads[name], 0)


def test_cu_seqlens_cpu_is_taken_and_checked():
    seed("cu-cpu")
    q, k, v = (torch.randn(1, 12, H, K) for _ in range(3))
    g = F.logsigmoid(torch.randn(1, 12, H))
    cu = torch.tensor([0, 5, 12], dtype=torch.int32)
    with use_backend("torch"):
        want = chunk_simple_gla(q, k, v, g, cu_seqlens=cu)[0]
        assert_close("o", chunk_simple_gla(q, k, v, g, cu_seqlens=cu, cu_seqlens_cpu=cu.clone())[0], want, 0)
        with pytest.raises(ValueError, match="without cu_seqlens"):
            chunk_simple_gla(q, k, v, g, cu_seqlens_cpu=cu)
        with pytest.raises(ValueError, match="shape of cu_seqlens"):
            chunk_simple_gla(q, k, v, g, cu_seqlens=cu, cu_seqlens_cpu=cu[:2])


@pytest.mark.parametrize("op", ["chunk_gated_delta_rule", "fused_recurrent_gated_delta_rule"])
def test_gated_delta_rule_raw_gate_and_beta_options(op):
    """use_gate_in_kernel (g = -exp(A_log) softplus(g + dt_bias)), use_beta_sigmoid_in_kernel and allow_neg_eigval
    equal passing the transformed g and beta, gradients to the raw inputs and A_log / dt_bias included."""
    from fla.ops.gated_delta_rule.gate import naive_gdn_gate

    seed("gdr-options", op)
    fn = OPS[op]
    x = {n: t.contiguous() for n, t in inputs(op).items()}
    g_raw, beta_raw = torch.randn(B, T, H, requires_grad=True), torch.randn(B, T, H, requires_grad=True)
    A_log, dt_bias = torch.randn(H, requires_grad=True), torch.randn(H, requires_grad=True)
    q, k, v = x["q"], x["k"], x["v"]
    with use_backend("torch"):
        o, _ = fn(q, k, v, g=g_raw, beta=beta_raw, use_gate_in_kernel=True, A_log=A_log, dt_bias=dt_bias,
                  use_beta_sigmoid_in_kernel=True, allow_neg_eigval=True)
        o.sum().backward()
        got = [t.grad.clone() for t in (g_raw, beta_raw, A_log, dt_bias)]
        for t in (g_raw, beta_raw, A_log, dt_bias):
            t.grad = None
        g = -A_log.exp() * F.softplus(g_raw + dt_bias)
        want, _ = fn(q, k, v, g=g, beta=2 * torch.sigmoid(beta_raw))
        want.sum().backward()
        assert_close("o", o, want, 1e-6)
        for name, a, t in zip(("dg", "dbeta", "dA_log", "ddt_bias"), got, (g_raw, beta_raw, A_log, dt_bias)):
            assert_close(name, a, t.grad, 1e-5)
        assert_close("gate", naive_gdn_gate(g_raw, A_log, dt_bias), g, 1e-6)
        with pytest.raises(ValueError, match="A_log"):
            fn(q, k, v, g=g_raw, beta=beta_raw, use_gate_in_kernel=True)
        with pytest.raises(ValueError, match="use_beta_sigmoid_in_kernel"):
            fn(q, k, v, g=g, beta=beta_raw, allow_neg_eigval=True)
        with pytest.raises(ValueError, match="only with use_gate_in_kernel"):
            fn(q, k, v, g=g, beta=beta_raw, A_log=A_log)
