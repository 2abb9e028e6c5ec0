"""GatedMLP / swiglu against float64 PyTorch references, both paths, forward and every gradient."""
import pytest
import torch
import torch.nn.functional as F

from fla.modules import GatedMLP, swiglu
from fla.ops.utils.dispatch import use_backend
from tests.helpers import assert_close, poisoned_empty, seed


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("B, T, hidden, intermediate, bias", [(2, 37, 48, 100, False), (3, 11, 32, None, True)])
def test_gated_mlp_matches_reference(backend, B, T, hidden, intermediate, bias):
    seed(backend, B, T, hidden, intermediate, bias)
    mlp = GatedMLP(hidden, intermediate, bias=bias)
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
