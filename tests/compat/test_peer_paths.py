"""What the peer library's own tests import from its paths works here and computes what the peer's does: the
re-export files (`fla.ops.<family>.fused_chunk`), the standalone `fused_gdn_gate`, the functional short
convolution (`causal_conv1d`, `causal_conv1d_update`) and the `chunk_indices` the modules accept."""
from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F

from fla.ops.gated_delta_rule.gate import fused_gdn_gate, naive_gdn_gate
from fla.ops.utils.dispatch import use_backend
from tests.helpers import assert_close, poisoned_empty, seed


@pytest.mark.parametrize("family", ["simple_gla", "retention", "linear_attn", "gla", "delta_rule"])
def test_fused_chunk_files_are_the_family_functions(family):
    name = f"fused_chunk_{family}"
    assert getattr(importlib.import_module(f"fla.ops.{family}.fused_chunk"), name) is \
        getattr(importlib.import_module(f"fla.ops.{family}"), name)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("has_bias, dtype", [(True, torch.float32), (False, torch.float16)])
def test_fused_gdn_gate_matches_naive(backend, has_bias, dtype):
    seed("gdn-gate", backend, has_bias, dtype)
    g = (3 * torch.randn(2, 37, 3)).to(dtype).requires_grad_()  # |g| up to ~10: both softplus tails
    A_log = torch.rand(3).mul(3).requires_grad_()
    dt_bias = torch.randn(3, requires_grad=True) if has_bias else None
    leaves = [t for t in (g, A_log, dt_bias) if t is not None]
    dy = torch.randn(2, 37, 3)
    with use_backend(backend), poisoned_empty():
        y = fused_gdn_gate(g, A_log, dt_bias)
        got = torch.autograd.grad(y, leaves, dy)
    want_y = naive_gdn_gate(*[t.double() if t is not None else None for t in (g, A_log, dt_bias)], torch.float64)
    want = torch.autograd.grad(want_y, leaves, dy.double())
    assert y.dtype == torch.float32
    assert_close("y", y, want_y, 1e-6)
    for name, a, b in zip(("dg", "dA_log", "dt_bias"), got, want):
        assert a.dtype == b.dtype
        assert_close(name, a, b, 1e-3 if dtype == torch.float16 and name == "dg" else 1e-5)
    assert fused_gdn_gate(g, A_log, dt_bias, torch.bfloat16).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="A_log"):
        fused_gdn_gate(g, torch.zeros(4))


def conv_reference(x, weight, bias, prefix, activation):
    """float64 depthwise causal conv over [prefix (W inputs), x] per sequence row: x [B, T, D], prefix [B, D, W]."""
    W = weight.shape[1]
    full = torch.cat([prefix.transpose(1, 2).double(), x.double()], 1)  # [B, W + T, D]
    y = F.conv1d(full.transpose(1, 2), weight.double()[:, None], None if bias is None else bias.double(),
                 groups=x.shape[-1]).transpose(1, 2)[:, 1:]
    return F.silu(y) if activation else y


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_causal_conv1d_functional(backend):
    from fla.modules.convolution import causal_conv1d, causal_conv1d_update
    seed("causal-conv1d", backend)
    B, T, D, W = 2, 37, 24, 4
    x, res = torch.randn(B, T, D, requires_grad=True), torch.randn(B, T, D)
    weight, bias, h0 = torch.randn(D, W, requires_grad=True), torch.randn(D, requires_grad=True), torch.randn(B, D, W)
    with use_backend(backend), poisoned_empty():
        y, final = causal_conv1d(x, weight, bias, res, h0, True, "silu")
        grads = torch.autograd.grad(y, (x, weight, bias), res)
    want = conv_reference(x, weight, bias, h0, True) + res.double()
    want_grads = torch.autograd.grad(want, (x, weight, bias), res.double())
    assert_close("y", y, want, 1e-6)
    for name, a, b in zip(("dx", "dw", "db"), grads, want_grads):
        assert_close(name, a, b, 1e-5)
    assert_close("final", final, x.detach()[:, -W:].transpose(1, 2), 0)
    # packed: the same two rows as sequences of one batch row (lengths 37 and 1)
    cu = torch.tensor([0, T, T + 1], dtype=torch.int32)
    xp = torch.cat([x.detach()[0], x.detach()[1, :1]])[None]
    with use_backend(backend):
        yp, fp = causal_conv1d(xp, weight.detach(), None, None, h0, True, None, cu_seqlens=cu, cu_seqlens_cpu=cu)
    want0 = conv_reference(x.detach()[:1], weight.detach(), None, h0[:1], False)
    want1 = conv_reference(x.detach()[1:, :1], weight.detach(), None, h0[1:], False)
    assert_close("varlen y", yp, torch.cat([want0, want1], 1), 1e-6)
    assert_close("varlen final", fp[1], torch.cat([h0[1, :, 1:], x.detach()[1, :1].t()], 1), 0)
    # one decode step per sequence ([N, 1, D] and [N, D]) after the prefix
    for shape in ((B, 1, D), (B, D)):
        cache = final.clone()
        step = torch.randn(*shape)
        with use_backend(backend):
            ys, out = causal_conv1d_update(step, cache, None, weight.detach(), bias.detach(), "silu")
        want = conv_reference(step.reshape(B, 1, D), weight.detach(), bias.detach(), final, True)
        assert out is cache and ys.shape == step.shape
        assert_close("step", ys.reshape(B, 1, D), want, 1e-6)
        assert_close("cache", cache[..., -1], step.reshape(B, D), 0)
    with pytest.raises(ValueError, match="seq_idx"):
        causal_conv1d(x, weight, seq_idx=torch.zeros(1))
    with pytest.raises(ValueError, match="weight"):
        causal_conv1d(x)


def test_peer_keywords_through_kwargs():
    """chunk_size (a power of 2, no effect on the result), transpose_state_layout (state_v_first, deprecated) and
    head_first (removed: raises), on the ops whose peer counterparts read them from **kwargs; others refuse them."""
    from fla.ops.gla import chunk_gla
    from fla.ops.retention import chunk_retention
    from fla.ops.simple_gla import fused_recurrent_simple_gla
    seed("peer-keywords")
    q, k, v = torch.randn(1, 40, 2, 8), torch.randn(1, 40, 2, 8), torch.randn(1, 40, 2, 4)
    g, h0 = F.logsigmoid(torch.randn(1, 40, 2)), torch.randn(1, 2, 4, 8)
    with use_backend("torch"):
        assert_close("chunk_size", chunk_retention(q, k, v, chunk_size=16)[0], chunk_retention(q, k, v)[0], 1e-6)
        with pytest.raises(ValueError, match="power of 2"):
            chunk_retention(q, k, v, chunk_size=24)
        with pytest.raises(DeprecationWarning, match="head_first"):
            chunk_retention(q, k, v, head_first=True)
        with pytest.warns(DeprecationWarning, match="state_v_first"):
            got = fused_recurrent_simple_gla(q, k, v, g, initial_state=h0, output_final_state=True,
                                             transpose_state_layout=True)
        want = fused_recurrent_simple_gla(q, k, v, g, initial_state=h0, output_final_state=True, state_v_first=True)
        assert_close("o", got[0], want[0], 0)
        assert_close("ht", got[1], want[1], 0)
        with pytest.raises(ValueError, match="not both"):
            fused_recurrent_simple_gla(q, k, v, g, state_v_first=True, transpose_state_layout=True)
        with pytest.raises(TypeError, match="chunk_size"):  # the peer's chunk_gla takes no **kwargs either
            chunk_gla(q, k, v, F.logsigmoid(torch.randn(1, 40, 2, 8)), chunk_size=16)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("varlen", [False, True])
def test_conv_gradients_reach_the_initial_state_and_flow_from_the_final_state(backend, varlen):
    from fla.modules.convolution import causal_conv1d
    seed("conv-state-grad", backend, varlen)
    D, W = 12, 4
    if varlen:  # lengths 2 (shorter than the window), 1 and 30
        B, T, cu = 1, 33, torch.tensor([0, 2, 3, 33], dtype=torch.int32)
        spans = [(0, 0, 2), (0, 2, 3), (0, 3, 33)]
    else:
        B, T, cu = 2, 29, None
        spans = [(0, 0, T), (1, 0, T)]
    x = torch.randn(B, T, D, requires_grad=True)
    weight, h0 = torch.randn(D, W, requires_grad=True), torch.randn(len(spans), D, W, requires_grad=True)
    dy, dfinal = torch.randn(B, T, D), torch.randn(len(spans), D, W)
    with use_backend(backend), poisoned_empty():
        y, final = causal_conv1d(x, weight, None, None, h0, True, "silu", cu_seqlens=cu)
        got = torch.autograd.grad((y * dy).sum() + (final * dfinal).sum(), (x, weight, h0))
    loss = 0
    for n, (b, bos, eos) in enumerate(spans):
        seq = x[b:b + 1, bos:eos]
        loss = loss + (conv_reference(seq, weight, None, h0[n:n + 1], True) * dy[b:b + 1, bos:eos].double()).sum()
        full = torch.cat([h0[n].t(), seq[0]], 0)[-W:].t()  # the last W inputs, the prefix included
        loss = loss + (full.double() * dfinal[n].double()).sum()
    want = torch.autograd.grad(loss, (x, weight, h0))
    for name, a, b in zip(("dx", "dw", "dh0"), got, want):
        assert_close(name, a, b, 1e-5)


def test_varlen_ops_run_under_inference_mode():
    """cu_seqlens made under torch.inference_mode has no version counter; the varlen index memo must not need one."""
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule, naive_recurrent_gated_delta_rule
    seed("inference-mode")
    with torch.inference_mode(), use_backend("torch"):
        q, v = torch.randn(1, 20, 2, 8), torch.randn(1, 20, 2, 4)
        k, g, beta = F.normalize(torch.randn(1, 20, 2, 8), dim=-1), F.logsigmoid(torch.randn(1, 20, 2)), \
            torch.rand(1, 20, 2)
        cu = torch.tensor([0, 5, 20])
        o, _ = chunk_gated_delta_rule(q, k, v, g, beta, cu_seqlens=cu)
        want, _ = naive_recurrent_gated_delta_rule(q, k, v, beta, g, cu_seqlens=cu)
    assert_close("o", o, want, 1e-5)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_state_v_first_final_state_gradient(backend):
    """state_v_first: the [N, H, V, K] final state's gradient reaches the kernels contiguous (a strided one made
    chunk_gla's dk, dv, dg 45-98% wrong on the Triton path; the peer's test_chunk_state_v_first found it)."""
    from fla.ops.gla import chunk_gla
    seed("state-v-first", backend)
    B, T, H, D = 1, 70, 2, 16
    q, k, v = (torch.rand(B, T, H, D) for _ in range(3))
    g, h0 = F.logsigmoid(torch.rand(B, T, H, D)), torch.rand(B, H, D, D)
    do, dht = torch.randn(B, T, H, D), torch.randn(B, H, D, D)

    def run(state_v_first):
        leaves = [x.clone().requires_grad_() for x in (q, k, v, g)]
        h = (h0.transpose(-1, -2).contiguous() if state_v_first else h0.clone()).requires_grad_()
        o, ht = chunk_gla(*leaves, initial_state=h, output_final_state=True, state_v_first=state_v_first)
        ((o * do).sum() + (ht * (dht.transpose(-1, -2) if state_v_first else dht)).sum()).backward()
        return [x.grad for x in leaves] + [h.grad.transpose(-1, -2) if state_v_first else h.grad]

    with use_backend(backend):
        want, got = run(False), run(True)
    for name, a, b in zip(("dq", "dk", "dv", "dg", "dh0"), got, want):
        assert_close(name, a, b, 1e-6)
