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


# ---- the peer's module paths (fla-core 0.6.0's fla/modules layout): each one imports, and each name is our object
# new path -> (our module, names that must be the very same objects there)
REEXPORTS = {
    "fla.modules.norm": ("fla.modules.layernorm", ["GroupNorm", "GroupNormLinear", "LayerNorm", "LayerNormLinear",
                                                   "RMSNorm", "RMSNormLinear", "FusedRMSNormGated"]),
    "fla.modules.norm.layernorm": ("fla.modules.layernorm", [
        "GroupNorm", "GroupNormLinear", "GroupNormRef", "LayerNorm", "LayerNormLinear", "RMSNorm", "RMSNormLinear",
        "group_norm", "group_norm_linear", "group_norm_ref", "layer_norm", "layer_norm_linear", "layer_norm_ref",
        "rms_norm", "rms_norm_linear", "rms_norm_ref"]),
    "fla.modules.norm.fused_norm_gate": ("fla.modules.fused_norm_gate", [
        "FusedLayerNormGated", "FusedLayerNormGatedLinear", "FusedLayerNormSwishGate", "FusedLayerNormSwishGateLinear",
        "FusedRMSNormGated", "FusedRMSNormGatedLinear", "FusedRMSNormSwishGate", "FusedRMSNormSwishGateLinear",
        "layer_norm_gated", "layer_norm_swish_gate_linear", "rms_norm_gated", "rms_norm_swish_gate_linear"]),
    "fla.modules.norm.l2norm": ("fla.modules.l2norm", ["L2Norm", "l2_norm", "l2norm"]),
    "fla.modules.norm.layernorm_quant": ("fla.modules.fused_bitlinear", ["LayerNormLinearQuantFunction",
                                                                         "weight_quant"]),
    "fla.modules.layernorm_gated": ("fla.modules.norm.layernorm_gated", [
        "LayerNormGated", "RMSNormGated", "layernorm_fn", "rmsnorm_fn", "rms_norm_ref"]),
    "fla.modules.causal_conv1d": ("fla.modules.convolution", ["ShortConvolution", "causal_conv1d",
                                                              "causal_conv1d_update"]),
    "fla.modules.causal_conv1d.ops": ("fla.modules.convolution", ["ShortConvolution", "causal_conv1d",
                                                                  "causal_conv1d_update"]),
    "fla.modules.conv": ("fla.modules.long_conv", ["LongConvolution", "ImplicitLongConvolution", "fft_conv"]),
    "fla.modules.conv.short_conv": ("fla.modules.convolution", ["ShortConvolution", "causal_conv1d"]),
    "fla.modules.conv.cp": ("fla.modules.causal_conv1d.cp", ["causal_conv1d_cp", "CausalConv1dFunctionCP"]),
    "fla.modules.conv.cuda": ("fla.modules.causal_conv1d.backends.cuda", ["fast_causal_conv1d_fn",
                                                                           "causal_conv1d_cuda"]),
    "fla.modules.conv.triton.ops": ("fla.modules.causal_conv1d.ops", ["causal_conv1d_update_states"]),
    "fla.modules.convolution": ("fla.modules.causal_conv1d.ops", ["causal_conv1d_update_states", "causal_conv1d_fwd"]),
    "fla.modules.layernorm": ("fla.modules.norm.layernorm", ["layer_norm_fwd", "layer_norm_bwd", "NormParallel"]),
    "fla.modules.fused_bitlinear": ("fla.modules.norm.layernorm_quant", []),
    "fla.modules.feature_map": ("fla.layers.feature_maps", ["DPFPFeatureMap", "HadamardFeatureMap",
                                                            "HedgehogFeatureMap", "T2RFeatureMap"]),
    "fla.modules.token_shift": ("fla.modules", ["TokenShift"]),
    "fla.modules.l2warp": ("fla.modules.l2warp", ["L2Wrap"]),
    "fla.modules.token_shift_cp": ("fla.modules.token_shift_cp", ["token_shift_cp"]),
    "fla.modules.activations.ops": ("fla.modules.activations", ["swiglu", "swiglu_linear", "logsigmoid", "sqrelu"]),
    "fla.modules.rotary.ops": ("fla.modules.rotary", ["RotaryEmbedding"]),
    "fla.modules.fused_cross_entropy.ops": ("fla.modules.fused_cross_entropy", ["FusedCrossEntropyLoss",
                                                                                "cross_entropy_loss"]),
    "fla.modules.fused_kl_div.ops": ("fla.modules.fused_kl_div", ["FusedKLDivLoss", "fused_kl_div_loss"]),
    "fla.modules.fused_linear_cross_entropy.ops": ("fla.modules.fused_linear_cross_entropy", [
        "FusedLinearCrossEntropyLoss", "fused_linear_cross_entropy_loss", "fused_linear_cross_entropy_fwd"]),
}
# (path, name, the name it is an alias of at that path)
ALIASES = [
    ("fla.modules.fused_bitlinear", "layer_norm_fwd_quant", "fla.modules.norm.layernorm_quant.layer_norm_quant_fwd"),
    ("fla.modules.fused_bitlinear", "layer_norm_bwd", "fla.modules.norm.layernorm_quant.layer_norm_quant_bwd"),
    ("fla.modules.fused_cross_entropy", "fused_cross_entropy_forward",
     "fla.modules.fused_cross_entropy.cross_entropy_fwd"),
    ("fla.modules.fused_cross_entropy", "CrossEntropyLossFunction",
     "fla.modules.fused_cross_entropy.FusedCrossEntropyFunction"),
    ("fla.modules.fused_linear_cross_entropy", "fused_linear_cross_entropy_forward",
     "fla.modules.fused_linear_cross_entropy.fused_linear_cross_entropy_fwd"),
    ("fla.modules.fused_linear_cross_entropy", "fused_linear_cross_entropy_backward",
     "fla.modules.fused_linear_cross_entropy.fused_linear_cross_entropy_bwd"),
    ("fla.modules.fused_kl_div", "fused_kl_div_forward", "fla.modules.fused_kl_div.fused_kl_div_fwd"),
]
# the peer's internal launchers at its paths: a clear NotImplementedError naming what to use
INTERNAL = {
    "fla.modules.norm.layernorm": ["layer_norm_fwd", "layer_norm_bwd", "NormParallel"],
    "fla.modules.norm.l2norm": ["l2norm_fwd", "l2norm_bwd"],
    "fla.modules.norm.fused_norm_gate": ["layer_norm_gated_fwd", "layer_norm_gated_bwd"],
    "fla.modules.norm.layernorm_quant": ["layer_norm_quant_fwd", "layer_norm_quant_bwd"],
    "fla.modules.norm.layernorm_gated": ["layer_norm_fwd", "layer_norm_bwd"],
    "fla.modules.causal_conv1d.ops": ["causal_conv1d_fwd", "causal_conv1d_bwd", "compute_dh0_triton",
                                      "CausalConv1dFunction"],
    "fla.modules.causal_conv1d.cp": ["causal_conv1d_cp", "CausalConv1dFunctionCP"],
    "fla.modules.causal_conv1d.backends.cuda": ["FastCausalConv1dFn"],
    "fla.modules.fused_cross_entropy": ["cross_entropy_fwd", "cross_entropy_bwd", "cross_entropy_reduce",
                                        "FusedCrossEntropyFunction"],
    "fla.modules.fused_linear_cross_entropy": ["cross_entropy_fwd", "logsumexp_fwd", "LinearLossParallel"],
    "fla.modules.token_shift": ["token_shift_fwd", "token_shift_bwd"],
}


def _resolve(dotted: str):
    path, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(path), name)


@pytest.mark.parametrize("path", sorted(REEXPORTS))
def test_peer_module_path_is_ours(path):
    module = importlib.import_module(path)
    source, names = REEXPORTS[path]
    for name in names:
        assert getattr(module, name) is getattr(importlib.import_module(source), name), f"{path}.{name}"
    for name in getattr(module, "__all__", []):
        obj = getattr(module, name)
        home = getattr(getattr(obj, "__self__", obj), "__module__", None)  # X.apply: the class's module
        assert home is None or home.startswith("fla."), f"{path}.{name} is not ours"


def test_peer_aliases_and_ops_submodules():
    import sys

    import fla.modules
    for path, name, target in ALIASES:
        assert getattr(importlib.import_module(path), name) is _resolve(target), f"{path}.{name}"
    for name in ("activations", "rotary", "fused_cross_entropy", "fused_kl_div", "fused_linear_cross_entropy"):
        assert sys.modules[f"fla.modules.{name}.ops"] is sys.modules[f"fla.modules.{name}"]
    assert fla.modules.layernorm_gated is importlib.import_module("fla.modules.norm.layernorm_gated")
    assert "TokenShift" in fla.modules.__all__
    assert fla.modules.TokenShift is _resolve("fla.modules.token_shift.TokenShift")
    from fla.modules.activations import SwiGLUFunction, swiglu
    from fla.modules.activations.ops import SwiGLULinearFunction, swiglu_linear
    assert SwiGLUFunction.apply is swiglu and SwiGLULinearFunction.apply is swiglu_linear


@pytest.mark.parametrize("path", sorted(INTERNAL))
def test_peer_internal_launchers_raise(path):
    import inspect
    module = importlib.import_module(path)
    for name in INTERNAL[path]:
        obj = getattr(module, name)
        if isinstance(obj, type):  # autograd functions (apply) and the tensor-parallel styles (construction)
            call, args = getattr(obj, "apply", obj), []
        else:  # a launcher: its required arguments as None
            call = obj
            args = [None for p in inspect.signature(obj).parameters.values() if p.default is p.empty]
        with pytest.raises(NotImplementedError, match="internal kernel of the peer library.*use "):
            call(*args)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_gated_group_norm_matches_reference(backend):
    """layernorm_gated (Mamba-2's norm): per group of channels, the gate after or before the norm, RMS and Layer."""
    from fla.modules.norm.layernorm_gated import LayerNormGated, RMSNormGated, layernorm_fn, rms_norm_ref, rmsnorm_fn
    seed("layernorm_gated", backend)
    x, z = torch.randn(2, 7, 24, requires_grad=True), torch.randn(2, 7, 24, requires_grad=True)
    w, b = torch.randn(24, requires_grad=True), torch.randn(24, requires_grad=True)
    dy = torch.randn(2, 7, 24)
    for group_size in (None, 8):
        for before in (True, False):
            with use_backend(backend), poisoned_empty():
                got = rmsnorm_fn(x, w, b, z, 1e-6, group_size, before)
                got_ln = layernorm_fn(x, w, b, z, 1e-6, group_size, before)
            want = rms_norm_ref(*(t.double() for t in (x, w, b, z)), 1e-6, group_size, before)
            xd, zd = x.double(), z.double()
            u = xd if before else xd * F.silu(zd)
            g = u.reshape(2, 7, -1, group_size or 24)
            want_ln = ((g - g.mean(-1, keepdim=True)) * torch.rsqrt(g.var(-1, unbiased=False, keepdim=True) + 1e-6)
                       ).reshape(2, 7, 24) * w.double() + b.double()
            want_ln = want_ln * F.silu(zd) if before else want_ln
            assert_close("rms", got, want, 1e-5)
            assert_close("ln", got_ln, want_ln, 1e-5)
            grads = torch.autograd.grad(got, (x, z, w, b), dy)
            want_grads = torch.autograd.grad(want, (x, z, w, b), dy.double())
            for name, a, r in zip(("dx", "dz", "dw", "db"), grads, want_grads):
                assert_close(name, a, r, 1e-5)
    norm = RMSNormGated(24, group_size=8)
    assert norm.bias is None and not norm.norm_before_gate and LayerNormGated(24).norm_before_gate
    with use_backend(backend):
        assert_close("module", norm(x, z), rms_norm_ref(x, norm.weight, None, z, 1e-5, 8, False), 1e-5)
    with pytest.raises(ValueError, match="group_size"):
        rmsnorm_fn(x, w, b, z, group_size=5)


def test_conv_update_states_and_cuda_names():
    """causal_conv1d_update_states is the final state causal_conv1d returns; the peer's CUDA-backend names run ours."""
    from fla.modules.causal_conv1d import causal_conv1d_update_states
    from fla.modules.causal_conv1d.backends.cuda import causal_conv1d_cuda, fast_causal_conv1d_fn
    from fla.modules.convolution import causal_conv1d
    seed("conv-states")
    x, weight, h0 = torch.randn(1, 23, 6), torch.randn(6, 4), torch.randn(3, 6, 4)
    cu = torch.tensor([0, 2, 3, 23])
    with use_backend("torch"):
        y, final = causal_conv1d(x, weight, None, None, h0, True, "silu", cu_seqlens=cu)
        assert_close("states", causal_conv1d_update_states(x, 4, h0, cu), final, 0)
        assert_close("states 2d", causal_conv1d_update_states(x[0], 4, h0, cu), final, 0)
        for fn in (fast_causal_conv1d_fn, causal_conv1d_cuda):
            y2, f2 = fn(x, weight, None, None, h0, True, "silu", cu)
            assert_close("y", y2, y, 0)
            assert_close("final", f2, final, 0)
    with pytest.raises(ValueError, match="initial_state"):
        causal_conv1d_update_states(x, 3, h0, cu)


def test_cross_entropy_loss_and_linear_two_step_form():
    """cross_entropy_loss: per-row loss and z-loss; fused_linear_cross_entropy_fwd / _bwd: the loss and its gradients
    (scaled by the output gradient), against autograd through F.cross_entropy."""
    from fla.modules.fused_cross_entropy import cross_entropy_loss
    from fla.modules.fused_linear_cross_entropy import fused_linear_cross_entropy_bwd, fused_linear_cross_entropy_fwd
    seed("ce-forms")
    logits, target = torch.randn(9, 37), torch.randint(0, 37, (9,))
    target[3] = -100
    with use_backend("torch"):
        loss, z = cross_entropy_loss(logits, target, lse_square_scale=1e-2)
    lse = logits.double().logsumexp(-1)
    want_z = torch.where(target == -100, 0, 1e-2 * lse ** 2)
    want = F.cross_entropy(logits.double(), target, reduction="none") + want_z
    assert_close("loss", loss, want, 1e-6)
    assert_close("z", z, want_z, 1e-6)
    with pytest.raises(ValueError, match="process_group"):
        cross_entropy_loss(logits, target, process_group=object())
    x, w, b = torch.randn(9, 16), torch.randn(37, 16), torch.randn(37)
    with use_backend("torch"):
        loss, dx, dw, db = fused_linear_cross_entropy_fwd(x, target, w, b, label_smoothing=0.1)
        dx, dw, db = fused_linear_cross_entropy_bwd(torch.tensor(3.0), dx, dw, db)
    leaves = [t.double().requires_grad_() for t in (x, w, b)]
    ref = F.cross_entropy(leaves[0] @ leaves[1].t() + leaves[2], target, label_smoothing=0.1)
    assert_close("flce loss", loss, ref, 1e-6)
    for name, a, r in zip(("dx", "dw", "db"), (dx, dw, db), torch.autograd.grad(3 * ref, leaves)):
        assert_close(name, a, r, 1e-5)


def test_l2warp():
    """L2Wrap: the loss value unchanged; d logits = d loss * max * factor / (B T) at each row's argmax, zero else."""
    from fla.modules.l2warp import l2_warp
    seed("l2warp")
    logits = torch.randn(2, 5, 11, requires_grad=True)
    base = (logits ** 2).mean()
    loss = l2_warp(base, logits, 1e-2)
    assert torch.equal(loss, base)
    (got,) = torch.autograd.grad(3 * loss, logits)
    (want,) = torch.autograd.grad(3 * (logits ** 2).mean(), logits)
    peak = logits.detach().amax(-1, keepdim=True)  # rows = B * T = 10
    want = want + torch.zeros_like(logits).scatter_(-1, logits.detach().argmax(-1, keepdim=True), 3 * peak * 1e-2 / 10)
    assert_close("dlogits", got, want, 1e-6)
    # 2-D logits [N, V]: the peer's divisor is shape[0] * shape[1] = N * V (RWKV's rule), kept for the same result
    flat = torch.randn(6, 11, requires_grad=True)
    (got,) = torch.autograd.grad(l2_warp(flat.sum() * 0, flat, 1e-2), flat)
    peak = flat.detach().amax(-1, keepdim=True)
    assert_close("dlogits 2-D", got, torch.zeros_like(flat).scatter_(-1, flat.detach().argmax(-1, keepdim=True),
                                                                     peak * 1e-2 / 66), 1e-6)
    with pytest.raises(ValueError, match="logits"):
        l2_warp(base, torch.randn(4), 1e-2)


def test_feature_maps_compute_their_kernels():
    """fla.modules.feature_map: the kernels the maps stand for (Taylor: 1 + s + s^2/2, s = q.k / sqrt(D); ReBased:
    (q'.k')^2 / D), the flattened outer products, the learned maps' shapes and parameter names, the elementwise maps."""
    from fla.modules import feature_map as fm
    seed("feature-maps")
    D = 6
    q, k = torch.randn(3, D, dtype=torch.float64), torch.randn(3, D, dtype=torch.float64)
    s = (q * k).sum(-1) / D ** 0.5
    taylor = fm.TaylorFeatureMap(D)
    assert_close("taylor", (taylor(q) * taylor(k)).sum(-1), 1 + s + s ** 2 / 2, 1e-12)
    rebased = fm.RebasedFeatureMap(D, normalize=False).double()  # gamma 1, beta 0: x' = x
    with torch.no_grad():
        rebased.gamma.copy_(torch.rand(D) + 0.5)
        rebased.beta.copy_(torch.randn(D))
    qn, kn = rebased(q, flatten=False), rebased(k, flatten=False)
    assert_close("rebased affine", qn, q * rebased.gamma + rebased.beta, 1e-12)
    assert_close("rebased", (rebased(q) * rebased(k)).sum(-1), (qn * kn).sum(-1) ** 2 / D, 1e-12)
    assert_close("rebased norm", fm.RebasedFeatureMap(D, use_beta=False)(q.float(), flatten=False),
                 F.layer_norm(q.float(), (D,)), 1e-6)
    with pytest.raises(ValueError, match="normalize"):
        fm.RebasedFeatureMap(D, use_gamma=False, normalize=False)
    i, j = torch.triu_indices(D, D)
    assert_close("outer", fm.flatten_diag_outer_product(q, k), (q[:, :, None] * k[:, None])[:, i, j], 0)
    off, diag = fm.flatten_diag_outer_product_off1(q, k)
    i1, j1 = torch.triu_indices(D, D, 1)
    assert_close("off1", off, (q[:, :, None] * k[:, None])[:, i1, j1], 0)
    assert_close("diag", diag, q * k, 0)
    outer = fm.LearnableOuterProductFeatureMap(D, 4).double()
    assert_close("learned outer", outer(q), fm.flatten_diag_outer_product(outer.layer1(q), outer.layer2(q)), 0)
    sketch = fm.LearnablePolySketchNonNegativeFeatureMap(D, sketch_size=5, degree=4)
    assert len(sketch.sketches1) == 1 and sketch(q.float()).shape == (3, 15)
    assert (sketch(q.float()) @ sketch(k.float()).t()).min() >= -1e-6  # (s_q . s_k)^2 >= 0
    with pytest.raises(ValueError, match="degree"):
        fm.LearnablePolySketchNonNegativeFeatureMap(D, degree=3)
    t2r = fm.T2RFeatureMap(D, dot_dim=4, bias=True)
    assert t2r.layer.weight.shape == (4, D) and t2r.layer.bias is not None and fm.T2RFeatureMap(D).layer.bias is None
    assert fm.is_power_of_2(8) and not fm.is_power_of_2(6) and not fm.is_power_of_2(0)
    x = torch.randn(4, 8)
    with use_backend("torch"):
        for cls, want in ((fm.ReLUFeatureMap, F.relu(x)), (fm.SquaredReLUFeatureMap, F.relu(x) ** 2),
                          (fm.SwishFeatureMap, F.silu(x)), (fm.SigmoidFeatureMap, torch.sigmoid(x)),
                          (fm.GELUFeatureMap, F.gelu(x, approximate="tanh"))):
            assert_close(cls.__name__, cls()(x), want, 1e-5)
