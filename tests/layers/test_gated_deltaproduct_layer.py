"""The GatedDeltaProduct layer against the paper's recurrence written out token by token, one Householder product
per token (float32, PyTorch): output and every parameter's gradient."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fla.layers import GatedDeltaProduct
from fla.ops.utils.dispatch import use_backend
from tests.helpers import assert_close, seed


def causal_conv_silu(conv: torch.nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    T = x.shape[1]
    y = F.conv1d(x.transpose(1, 2), conv.weight, conv.bias, padding=conv.weight.shape[-1] - 1, groups=x.shape[-1])
    return F.silu(y[..., :T].transpose(1, 2))


def deltaproduct_paper(layer: GatedDeltaProduct, x: torch.Tensor) -> torch.Tensor:
    """DeltaProduct (Siems et al., 2025): per token t the state S [K, V] of each head decays by alpha_t, then goes
    through n generalized Householder steps, S <- (I - beta_tj k_tj k_tj^T) S + beta_tj k_tj v_tj^T, and is read
    out by o_t = scale * S^T q_t (unit-norm q and k). Output: RMSNorm(o) * silu(W_g x), then W_o."""
    B, T = x.shape[:2]
    H, HV, K, V, n = layer.num_heads, layer.num_v_heads, layer.head_k_dim, layer.head_v_dim, layer.num_householder
    q = causal_conv_silu(layer.q_conv1d, layer.q_proj(x)).view(B, T, H, K)
    k = causal_conv_silu(layer.k_conv1d, layer.k_proj(x)).view(B, T, n, H, K)
    v = causal_conv_silu(layer.v_conv1d, layer.v_proj(x)).view(B, T, n, HV, V)
    q, k = F.normalize(q, dim=-1, eps=1e-6), F.normalize(k, dim=-1, eps=1e-6)
    q, k = q.repeat_interleave(HV // H, dim=2), k.repeat_interleave(HV // H, dim=3)
    beta = torch.sigmoid(layer.b_proj(x)).view(B, T, n, HV) * (2 if layer.allow_neg_eigval else 1)
    alpha = torch.exp(-layer.A_log.exp() * F.softplus(layer.a_proj(x) + layer.dt_bias))  # [B, T, HV]
    eye = torch.eye(K)
    S = x.new_zeros(B, HV, K, V)
    outs = []
    for t in range(T):
        S = alpha[:, t, :, None, None] * S
        for j in range(n):
            kj, bj = k[:, t, j], beta[:, t, j, :, None, None]  # [B, HV, K], [B, HV, 1, 1]
            householder = eye - bj * kj[..., :, None] * kj[..., None, :]
            S = householder @ S + bj * kj[..., :, None] * v[:, t, j, :, None, :]
        outs.append(K ** -0.5 * torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    o = torch.stack(outs, 1)
    g = layer.g_proj(x).view(B, T, HV, V)
    o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + layer.o_norm.eps) * layer.o_norm.weight * F.silu(g)
    return layer.o_proj(o.reshape(B, T, HV * V))


@pytest.mark.parametrize("num_householder,num_v_heads", [(2, 2), (3, 4)])
def test_layer_matches_paper(num_householder, num_v_heads):
    seed("gdp-layer", num_householder, num_v_heads)
    layer = GatedDeltaProduct(hidden_size=32, expand_v=1.0, head_dim=16, num_heads=2, num_v_heads=num_v_heads,
                              num_householder=num_householder, layer_idx=0).train()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x, do = torch.randn(1, 40, 32), torch.randn(1, 40, 32)
    params = list(layer.parameters())
    with use_backend("torch"):
        got = layer(x)[0]
    got_grads = torch.autograd.grad((got * do).sum(), params)
    want = deltaproduct_paper(layer, x)
    want_grads = torch.autograd.grad((want * do).sum(), params)
    assert_close("o", got, want, 1e-5)
    for (name, _), a, b in zip(layer.named_parameters(), got_grads, want_grads):
        assert_close(name, a, b, 1e-4)
