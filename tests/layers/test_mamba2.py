"""fla.layers.Mamba2 against Mamba-2 written as its paper writes it: the projection, the causal depthwise
convolution as an explicit sum over the window, then the SSD recurrence one token at a time in float32
(S_t = exp(dt_t A) S_{t-1} + dt_t x_t B_t^T, y_t = S_t C_t + D x_t) and the gated RMSNorm. Output, every parameter
gradient, the input gradient and the cached states (conv window, SSM state) are compared."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fla.layers import Mamba2
from fla.models import FLACache
from fla.ops.utils.dispatch import use_backend
from tests.helpers import assert_close, seed

D = 32
CASES = {
    "default": dict(),
    "groups_hdim_before_gate": dict(n_groups=2, D_has_hdim=True, norm_before_gate=True, dt_limit=(0.002, 0.08)),
    "no_norm_biases": dict(rmsnorm=False, use_bias=True, use_conv_bias=False, conv_kernel=3),
}


def make_layer(case: str, hidden_size: int = D) -> Mamba2:
    seed("mamba2", case, "init")
    layer = Mamba2(hidden_size=hidden_size, head_dim=8, state_size=16, expand=2, layer_idx=0, **CASES[case])
    with torch.no_grad():  # away from the ones / zeros inits, so every parameter matters
        for name, p in layer.named_parameters():
            if name not in ("A_log", "dt_bias"):
                p.add_(0.2 * torch.randn_like(p))
    return layer


def reference(layer: Mamba2, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [B, T, D] -> (out [B, T, D], conv window [B, conv_dim, W], SSM state [B, H, P, N]), all float32."""
    B, T, _ = x.shape
    H, P, G, N = layer.num_heads, layer.head_dim, layer.n_groups, layer.ssm_state_size
    E = layer.intermediate_size
    W = layer.conv_kernel_size
    proj = F.linear(x.float(), layer.in_proj.weight.float(),
                    None if layer.in_proj.bias is None else layer.in_proj.bias.float())
    z, xbc, dt_raw = proj.split([E, layer.conv_dim, H], dim=-1)

    # causal depthwise convolution: u_t[c] = silu(bias[c] + sum_w weight[c, w] * xbc_{t - W + 1 + w}[c])
    weight = layer.conv1d.weight[:, 0].float()  # [C, W]
    padded = F.pad(xbc, (0, 0, W - 1, 0))
    u = torch.stack([sum(weight[:, w] * padded[:, t + w] for w in range(W)) for t in range(T)], dim=1)
    if layer.conv1d.bias is not None:
        u = u + layer.conv1d.bias.float()
    u = F.silu(u)
    xs, Bs, Cs = u.split([E, G * N, G * N], dim=-1)
    xs = xs.view(B, T, H, P)
    group = torch.arange(H) // (H // G)  # head h reads B/C group h // (H / G)
    Bs, Cs = Bs.view(B, T, G, N)[:, :, group], Cs.view(B, T, G, N)[:, :, group]

    dt = F.softplus(dt_raw + layer.dt_bias.float()).clamp(*layer.dt_limit)  # [B, T, H]
    A = -torch.exp(layer.A_log.float())  # [H]
    Dskip = layer.D.float().view(H, P) if layer.D_has_hdim else layer.D.float().view(H, 1)
    S = x.new_zeros(B, H, P, N, dtype=torch.float32)
    ys = []
    for t in range(T):
        decay = torch.exp(dt[:, t] * A)  # [B, H]
        S = decay[..., None, None] * S + (dt[:, t, :, None] * xs[:, t])[..., None] * Bs[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", S, Cs[:, t]) + Dskip * xs[:, t])
    y = torch.stack(ys, dim=1).reshape(B, T, E)

    if layer.rmsnorm:
        gs = layer.norm.group_size
        yg, zg = y.view(B, T, -1, gs), z.view(B, T, -1, gs)
        if layer.norm_before_gate:
            yg = yg * torch.rsqrt(yg.pow(2).mean(-1, keepdim=True) + layer.norm_eps) * F.silu(zg)
        else:
            yg = yg * F.silu(zg)
            yg = yg * torch.rsqrt(yg.pow(2).mean(-1, keepdim=True) + layer.norm_eps)
        y = yg.reshape(B, T, E) * layer.norm.weight.float()
    else:
        y = y * F.silu(z)
    out = F.linear(y, layer.out_proj.weight.float(),
                   None if layer.out_proj.bias is None else layer.out_proj.bias.float())
    window = F.pad(xbc, (0, 0, max(W - T, 0), 0))[:, -W:].transpose(1, 2)
    return out, window, S


def grads(layer: Mamba2, x: torch.Tensor, out: torch.Tensor, dout: torch.Tensor) -> dict[str, torch.Tensor]:
    names = ["x", *(n for n, _ in layer.named_parameters())]
    tensors = [x, *layer.parameters()]
    return dict(zip(names, torch.autograd.grad(out, tensors, dout)))


def check_against_reference(case: str, T: int, hidden_size: int = D, batch_size: int = 2) -> None:
    layer = make_layer(case, hidden_size).train()
    seed("mamba2", case, T)
    x = torch.randn(batch_size, T, hidden_size, requires_grad=True)
    dout = torch.randn(batch_size, T, hidden_size)
    want, want_window, want_state = reference(layer, x)
    got = layer(x)[0]
    assert_close("o", got, want, 1e-5)
    want_grads = grads(layer, x, want, dout)
    for name, g in grads(layer, x, got, dout).items():
        assert_close(f"d{name}", g, want_grads[name], 1e-4)
    # the cache the layer leaves: conv window and SSM state (the peer's [B, H, P, N])
    cache = FLACache()
    with torch.no_grad():
        layer.eval()(x, past_key_values=cache, use_cache=True)
    assert_close("conv", cache[0]["conv_state"], want_window, 1e-6)
    assert_close("state", cache[0]["recurrent_state"], want_state, 1e-5)


@pytest.fixture
def torch_backend():
    with use_backend("torch"):
        yield


@pytest.mark.parametrize("case", CASES)
def test_matches_ssd_recurrence(case, torch_backend):
    check_against_reference(case, 37)


def test_interpreted_kernels_match_ssd_recurrence():
    """The Triton kernels (interpreter): chunked training forward/backward over several chunks, and the cached
    (fused recurrent) prefill."""
    check_against_reference("groups_hdim_before_gate", 70, hidden_size=16, batch_size=1)


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="head_dim"):
        Mamba2(hidden_size=32, head_dim=24)
    with pytest.raises(ValueError, match="num_heads"):
        Mamba2(hidden_size=32, head_dim=8, num_heads=4)
    with pytest.raises(ValueError, match="n_groups"):
        Mamba2(hidden_size=32, head_dim=8, n_groups=3)
    with pytest.raises(ValueError, match="A_init_range"):
        Mamba2(hidden_size=32, head_dim=8, A_init_range=(0, 16))
