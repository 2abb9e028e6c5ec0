"""RMSNorm and the gated RMSNorm against a float64 PyTorch reference, both paths, forward and every gradient."""
import pytest
import torch
import torch.nn.functional as F

from fla.modules import FusedRMSNormGated, RMSNorm, rms_norm
from fla.ops.utils.dispatch import use_backend
from tests.helpers import assert_close, poisoned_empty, seed


def reference(x, g, residual, weight, eps, activation):
    r = x.double() if residual is None else x.double() + residual.double()
    y = r * torch.rsqrt(r.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.double()
    if g is not None:
        y = y * (torch.sigmoid(g.double()) if activation == "sigmoid" else F.silu(g.double()))
    return y, r


def leaf(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype).requires_grad_()


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize(
    "shape, gated, activation, has_residual, prenorm, affine",
    [
        ((4, 61, 48), False, "swish", False, False, True),  # 244 rows: backward programs loop over row blocks
        ((2, 37, 48), False, "swish", True, True, True),
        ((3, 5, 100), False, "swish", True, False, False),
        ((2, 29, 64), True, "swish", False, False, True),
        ((2, 29, 40), True, "sigmoid", True, True, True),
    ],
)
def test_rms_norm_matches_reference(backend, shape, gated, activation, has_residual, prenorm, affine):
    seed(backend, shape, gated, activation, has_residual, prenorm, affine)
    N = shape[-1]
    x, g, res = leaf(*shape), leaf(*shape) if gated else None, leaf(*shape) if has_residual else None
    if gated:
        norm = FusedRMSNormGated(N, eps=1e-5, activation=activation, elementwise_affine=affine)
    else:
        norm = RMSNorm(N, eps=1e-5, elementwise_affine=affine)
    if affine:
        norm.weight.data = torch.randn(N)
    dy, dr = torch.randn(shape), torch.randn(shape)
    with use_backend(backend), poisoned_empty():
        out = norm(x, g, residual=res, prenorm=prenorm) if gated else norm(x, residual=res, prenorm=prenorm)
    y, r = out if prenorm else (out, None)
    loss = (y * dy).sum() + ((r * dr).sum() if prenorm else 0)
    inputs = [t for t in (x, g, res, norm.weight) if t is not None]
    grads = torch.autograd.grad(loss, inputs)
    y_ref, r_ref = reference(x, g, res, norm.weight, 1e-5, activation)
    loss_ref = (y_ref * dy.double()).sum() + ((r_ref * dr.double()).sum() if prenorm else 0)
    grads_ref = torch.autograd.grad(loss_ref, inputs)
    assert_close("y", y, y_ref, 1e-5)
    if prenorm:
        assert_close("r", r, r_ref, 1e-6)
    for name, got, want in zip(["dx", "dg", "dres", "dw"], grads, grads_ref):
        assert_close(name, got, want, 1e-5)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_rms_norm_half_with_fp32_residual(backend):
    seed(backend)
    x, res = leaf(2, 19, 32, dtype=torch.float16), leaf(2, 19, 32)
    w = torch.randn(32, requires_grad=True)
    with use_backend(backend):
        y, r = rms_norm(x, w, residual=res, eps=1e-6, prenorm=True, residual_in_fp32=True)
    assert y.dtype == torch.float16 and r.dtype == torch.float32
    (y.float().sum() + r.sum()).backward()
    assert x.grad.dtype == torch.float16 and res.grad.dtype == torch.float32
    y_ref, r_ref = reference(x, None, res, w, 1e-6, "swish")
    assert_close("y", y, y_ref, 2e-3)
    assert_close("r", r, r_ref, 1e-6)


def test_rms_norm_rejects_bad_inputs():
    x = torch.randn(2, 3, 8)
    with pytest.raises(ValueError, match="residual must be a tensor with the shape of x"):
        rms_norm(x, residual=torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="weight must have shape"):
        rms_norm(x, torch.ones(4))
    with pytest.raises(ValueError, match="activation must be one of"):
        FusedRMSNormGated(8, activation="relu")


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_rms_norm_bias_and_the_peer_argument_order(backend):
    """rms_norm(x, weight, bias, residual, eps, ...) and RMSNorm(hidden_size, elementwise_affine, bias, eps) as in
    the peer library: y = norm(x + residual) * weight + bias, eps 1e-5 by default."""
    seed("bias", backend)
    x, res = leaf(2, 7, 16), leaf(2, 7, 16)
    w, b = torch.randn(16, requires_grad=True), torch.randn(16, requires_grad=True)
    with use_backend(backend):
        y, r = rms_norm(x, w, b, res, 1e-5, True)
        y_ref, r_ref = reference(x, None, res, w, 1e-5, "swish")
        assert_close("y", y, y_ref + b, 1e-5)
        assert_close("r", r, r_ref, 1e-6)
        y.sum().backward()
        assert_close("db", b.grad, torch.full_like(b, 14.0), 0)
        norm = RMSNorm(16, True, True)
        assert norm.eps == 1e-5 and norm.bias is not None and FusedRMSNormGated(16).eps == 1e-5
        with torch.no_grad():
            norm.bias.fill_(0.5)
        assert_close("module", norm(x), rms_norm(x, norm.weight, eps=1e-5) + 0.5, 1e-6)
    with pytest.raises(ValueError, match="bias must be"):
        rms_norm(x, w, torch.randn(3))
