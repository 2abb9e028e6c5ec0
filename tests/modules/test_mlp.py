"""GatedMLP / swiglu against float64 PyTorch references, both paths, forward and every gradient."""
import pytest
import torch
import torch.nn.functional as F

from fla.modules import GatedMLP, swiglu
from fla.modules.mlp import powglu, powglu_linear, swiglu_linear
from fla.ops.utils.dispatch import use_backend
from tests.helpers import assert_close, poisoned_empty, seed


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("B, T, hidden, intermediate, bias", [(2, 37, 48, 100, False), (3, 11, 32, None, True)])
def test_gated_mlp_matches_reference(backend, B, T, hidden, intermediate, bias):
    seed(backend, B, T, hidden, intermediate, bias)
    mlp = GatedMLP(hidden, intermediate_size=intermediate, bias=bias)  # hidden_ratio comes second, as in the peer
    assert intermediate is None or mlp.intermediate_size == intermediate
    x = torch.randn(B, T, hidden, requires_grad=True)
    dy = torch.randn(B, T, hidden)
    params = [x] + list(mlp.parameters())
    with use_backend(backend), poisoned_empty():
        y = mlp(x)
        grads = torch.autograd.grad(y, params, dy)
    xd = x.double()

    def lin(layer, h):
        return F.linear(h, layer.weight.double(), None if layer.bias is None else layer.bias.double())

    y_ref = lin(mlp.down_proj, F.silu(lin(mlp.gate_proj, xd)) * lin(mlp.up_proj, xd))
    grads_ref = torch.autograd.grad(y_ref, params, dy.double())
    assert_close("y", y, y_ref, 1e-5)
    for (name, _), got, want in zip([("x", x)] + list(mlp.named_parameters()), grads, grads_ref):
        assert_close(name[-12:], got, want, 1e-5)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_swiglu_half(backend):
    seed(backend)
    g, u = torch.randn(3000, dtype=torch.float16, requires_grad=True), torch.randn(3000, dtype=torch.float16)
    with use_backend(backend):
        y = swiglu(g, u)
    assert y.dtype == torch.float16
    assert_close("y", y, F.silu(g.double()) * u.double(), 1e-3)


def test_gated_mlp_defaults_and_bad_inputs():
    assert GatedMLP(1024).intermediate_size == 2816  # 8/3 * 1024 = 2730, rounded up to 256
    assert GatedMLP(256, hidden_ratio=3).intermediate_size == 512
    with pytest.raises(ValueError, match="hidden_act must be one of"):
        GatedMLP(64, hidden_act="gelu")
    with pytest.raises(ValueError, match="same shape and dtype"):
        swiglu(torch.randn(4), torch.randn(5))


def powglu_reference(g, u, power):
    """PowGLU in float64: g ** (power / (sqrt(g) + 1)) * sigmoid(g) for g > 0, silu(g) otherwise, times u."""
    g = g.double()
    pos = g.clamp_min(1e-30)
    return torch.where(g > 0, pos ** (power / (pos.sqrt() + 1)) * torch.sigmoid(g), F.silu(g)) * u.double()


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("hidden_act, fuse", [("swish", True), ("powlu", True), ("powlu", False)])
def test_gated_mlp_activations_and_fused_down_projection(backend, hidden_act, fuse):
    seed(backend, hidden_act, fuse)
    mlp = GatedMLP(24, None, 40, hidden_act, fuse, 2.5, bias=True)  # the peer's positional order
    x = torch.randn(2, 13, 24, requires_grad=True)
    dy = torch.randn(2, 13, 24)
    params = [x] + list(mlp.parameters())
    with use_backend(backend), poisoned_empty():
        y = mlp(x)
        grads = torch.autograd.grad(y, params, dy)
    xd = x.double()

    def lin(layer, h):
        return F.linear(h, layer.weight.double(), layer.bias.double())

    g, u = lin(mlp.gate_proj, xd), lin(mlp.up_proj, xd)
    prod = F.silu(g) * u if hidden_act == "swish" else powglu_reference(g, u, 2.5)
    y_ref = lin(mlp.down_proj, prod)
    grads_ref = torch.autograd.grad(y_ref, params, dy.double())
    assert_close("y", y, y_ref, 1e-5)
    for (name, _), got, want in zip([("x", x)] + list(mlp.named_parameters()), grads, grads_ref):
        assert_close(name[-12:], got, want, 1e-5)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_peer_glu_functions(backend):
    seed("glu", backend)
    g = torch.cat([torch.randn(500) * 3, torch.tensor([0.0, 1e-8, -1e-8])]).requires_grad_()
    u = torch.randn(503, requires_grad=True)
    w, b = torch.randn(7, 503, requires_grad=True), torch.randn(7, requires_grad=True)
    with use_backend(backend):
        y = powglu(g, u)
        out = swiglu_linear(g[None], u[None], w, b)
        out_pow = powglu_linear(g[None], u[None], w, None, 3.0)
        grads = torch.autograd.grad((y.sum(), out.sum(), out_pow.sum()), (g, u, w))
    ref = powglu_reference(g, u, 3.0)
    assert_close("powglu", y, ref, 1e-6)
    assert_close("swiglu_linear", out, F.linear(F.silu(g.double()) * u.double(), w.double(), b.double())[None], 1e-6)
    ref_pow = F.linear(ref, w.double())
    assert_close("powglu_linear", out_pow, ref_pow[None], 1e-6)
    want = torch.autograd.grad((ref.sum(), F.linear(F.silu(g.double()) * u.double(), w.double(), b.double()).sum(),
                                ref_pow.sum()), (g, u, w))
    for name, got, r in zip("g u w".split(), grads, want):
        assert_close("d" + name, got, r, 1e-5)
    assert not grads[0].isnan().any()
