"""HGRN and HGRN-2 layers against their papers' equations written out token by token (float32, PyTorch): output and
every parameter's gradient, with the model's per-layer forget-gate lower bound (and its gradient)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fla.layers import HGRN2Attention, HGRNAttention
from fla.models import FLACache
from fla.ops.utils.dispatch import use_backend
from tests.helpers import assert_close, seed


def causal_conv(conv: torch.nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """y_t = sum_w W[w] x_{t - W + 1 + w} per channel (the short convolution, no activation)."""
    T = x.shape[1]
    return F.conv1d(x.transpose(1, 2), conv.weight, conv.bias, padding=conv.weight.shape[-1] - 1,
                    groups=x.shape[-1])[..., :T].transpose(1, 2)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def hgrn_paper(layer: HGRNAttention, x: torch.Tensor, lower_bound: torch.Tensor) -> torch.Tensor:
    """HGRN (Qin et al., 2023), eq. of the recurrence with the layer's lower bound lambda:
    f_t = lambda + (1 - lambda) sigmoid(W_f x_t), c_t = silu(W_i x_t), h_t = f_t * h_{t-1} + (1 - f_t) * c_t,
    o_t = W_o (RMSNorm(h_t) * silu(W_g x_t))."""
    i, f = layer.i_proj(x), layer.f_proj(x)
    if layer.use_short_conv:
        i, f = causal_conv(layer.i_conv1d, i), causal_conv(layer.f_conv1d, f)
    f = lower_bound + (1 - lower_bound) * torch.sigmoid(f)
    c = F.silu(i)
    h = x.new_zeros(x.shape[0], layer.input_dim)
    hs = []
    for t in range(x.shape[1]):
        h = f[:, t] * h + (1 - f[:, t]) * c[:, t]
        hs.append(h)
    h = torch.stack(hs, 1)
    return layer.o_proj(rms_norm(h, layer.g_norm.weight, layer.g_norm.eps) * F.silu(layer.g_proj(x)))


def hgrn2_paper(layer: HGRN2Attention, x: torch.Tensor, lower_bound: torch.Tensor) -> torch.Tensor:
    """HGRN-2 (Qin et al., 2024): per head the state S [d_f, d_i] expands by an outer product with the input gate
    tied to the forget gate, S_t = diag(f_t) S_{t-1} + (1 - f_t)^T i_t, read out by o_t = q_t S_t; then
    o = W_o RMSNorm(o). q = silu(W_q x); the readout is scaled by d_f ** -0.5 as in the peer library's layer."""
    q, f, i = layer.q_proj(x), layer.f_proj(x), layer.i_proj(x)
    if layer.use_short_conv:
        q, f, i = causal_conv(layer.q_conv1d, q), causal_conv(layer.f_conv1d, f), causal_conv(layer.i_conv1d, i)
    B, T = x.shape[:2]
    H, K, V = layer.num_heads, layer.head_f_dim, layer.head_i_dim
    q = F.silu(q).view(B, T, H, K) * K ** -0.5
    f = (lower_bound + (1 - lower_bound) * torch.sigmoid(f)).view(B, T, H, K)
    i = i.view(B, T, H, V)
    S = x.new_zeros(B, H, K, V)
    outs = []
    for t in range(T):
        S = f[:, t, :, :, None] * S + (1 - f[:, t, :, :, None]) * i[:, t, :, None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    o = torch.stack(outs, 1).reshape(B, T, H * V)
    return layer.o_proj(rms_norm(o, layer.g_norm.weight, layer.g_norm.eps))


CASES = {
    "hgrn": (lambda: HGRNAttention(hidden_size=24, expand_ratio=2, use_short_conv=True, layer_idx=1), hgrn_paper,
             48),
    "hgrn2": (lambda: HGRN2Attention(hidden_size=32, expand_ratio=8, use_short_conv=True, layer_idx=1),
              hgrn2_paper, 32),
}


@pytest.mark.parametrize("name,with_bound", [("hgrn", True), ("hgrn", False), ("hgrn2", True)])
def test_layer_matches_paper(name, with_bound):
    build, paper, width = CASES[name]
    seed(name, with_bound, "paper")
    layer = build().train()
    with torch.no_grad():  # away from the ones / zeros inits, so every parameter matters
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    D = layer.hidden_size
    T = 70 if name == "hgrn" else 40  # hgrn: 2 chunks of its torch path's 64 (GLA's torch path is the slow one)
    x = torch.randn(1, T, D)
    bound = (torch.rand(width) * 0.9).requires_grad_() if with_bound else None
    do = torch.randn(1, T, D)
    params = [p for _, p in layer.named_parameters()]
    leaves = params + ([bound] if with_bound else [])
    with use_backend("torch"):
        got = layer(x, lower_bound=bound)[0]
    got_grads = torch.autograd.grad((got * do).sum(), leaves)
    want = paper(layer, x, bound if with_bound else torch.zeros(width))
    want_grads = torch.autograd.grad((want * do).sum(), leaves)
    assert_close("o", got, want, 1e-5)
    names = [n for n, _ in layer.named_parameters()] + (["lower_bound"] if with_bound else [])
    for n, a, b in zip(names, got_grads, want_grads):
        assert_close(n, a, b, 1e-4)


def test_first_layer_has_no_bound_and_models_bounds_grow():
    """Layer 0 ignores its bound (the papers' lambda_1 = 0); the model's bounds are 0 in layer 0 and grow with
    depth."""
    from fla.models.hgrn.modeling_hgrn import layer_lower_bounds

    seed("hgrn-bounds")
    layer = HGRNAttention(hidden_size=16, layer_idx=0)
    x = torch.randn(1, 9, 16)
    with use_backend("torch"):
        assert_close("layer0", layer(x, lower_bound=torch.full((16,), 0.5))[0], layer(x)[0], 0)
    bounds = layer_lower_bounds(torch.randn(4, 16))
    assert bounds[0].abs().max() == 0 and (bounds[1:] >= 0).all() and (bounds[1:] < 1).all()
    assert (bounds.diff(dim=0) >= 0).all()


def test_interpreted_varlen_and_decoding():
    """HGRN's Triton kernels (interpreter) in the layer: packed sequences (chunk kernels) against separate runs, and
    cached decoding (fused recurrent kernels, conv windows) against the full forward."""
    seed("hgrn-interpreted")
    layer = HGRNAttention(hidden_size=16, use_short_conv=True, layer_idx=1).train()
    bound = torch.rand(16) * 0.9
    xs = [torch.randn(1, n, 16) for n in (5, 1, 20)]
    got = layer(torch.cat(xs, 1), cu_seqlens=torch.tensor([0, 5, 6, 26], dtype=torch.int32), lower_bound=bound)[0]
    want = [layer(x, lower_bound=bound)[0] for x in xs]
    assert_close("varlen", got, torch.cat(want, 1), 1e-5)
    layer.eval()
    cache = FLACache()
    outs = [layer(xs[2][:, :16], past_key_values=cache, use_cache=True, lower_bound=bound)[0]]
    for t in range(16, 20):
        outs.append(layer(xs[2][:, t:t + 1], past_key_values=cache, use_cache=True, lower_bound=bound)[0])
    assert_close("decode", torch.cat(outs, 1), want[2], 1e-5)
