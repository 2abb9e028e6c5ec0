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


def norm_reference(x, g, residual, weight, bias, eps, activation, is_rms, groups):
    """float64 LayerNorm / RMSNorm / GroupNorm (+ bias, gate), written out from the definitions."""
    r = x.double() if residual is None else x.double() + residual.double()
    c = r.reshape(*r.shape[:-1], groups, r.shape[-1] // groups)
    if not is_rms:
        c = c - c.mean(-1, keepdim=True)
    y = (c * torch.rsqrt(c.pow(2).mean(-1, keepdim=True) + eps)).reshape(r.shape)
    if weight is not None:
        y = y * weight.double()
    if bias is not None:
        y = y + bias.double()
    if g is not None:
        y = y * (torch.sigmoid(g.double()) if activation == "sigmoid" else F.silu(g.double()))
    return y, r


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize(
    "shape, is_rms, groups, gated, activation, has_residual, prenorm, bias",
    [
        ((4, 61, 50), False, 1, False, "swish", False, False, True),  # 244 rows, N not a power of 2 (padded columns)
        ((2, 37, 48), False, 1, False, "swish", True, True, False),
        ((1, 1, 40), False, 1, True, "sigmoid", True, True, True),  # a single row
        ((2, 29, 64), False, 1, True, "swish", False, False, True),
        ((2, 29, 64), True, 1, True, "swish", True, False, True),
        ((3, 17, 48), False, 4, False, "swish", True, True, True),
        ((3, 17, 48), True, 3, False, "swish", False, False, True),
    ],
)
def test_layer_and_group_norm_match_reference(backend, shape, is_rms, groups, gated, activation, has_residual,
                                               prenorm, bias):
    from fla.modules.layernorm import _group_norm
    seed("layer", backend, shape, is_rms, groups, gated, activation, has_residual, prenorm, bias)
    N = shape[-1]
    x, g, res = leaf(*shape), leaf(*shape) if gated else None, leaf(*shape) if has_residual else None
    w, b = leaf(N), leaf(N) if bias else None
    dy, dr = torch.randn(shape), torch.randn(shape)
    with use_backend(backend), poisoned_empty():
        out = _group_norm(x, g, res, w, b, 1e-5, prenorm, False, activation, is_rms, groups)
    y, r = out if prenorm else (out, None)
    loss = (y * dy).sum() + ((r * dr).sum() if prenorm else 0)
    inputs = [t for t in (x, g, res, w, b) if t is not None]
    grads = torch.autograd.grad(loss, inputs)
    y_ref, r_ref = norm_reference(x, g, res, w, b, 1e-5, activation, is_rms, groups)
    loss_ref = (y_ref * dy.double()).sum() + ((r_ref * dr.double()).sum() if prenorm else 0)
    grads_ref = torch.autograd.grad(loss_ref, inputs)
    assert_close("y", y, y_ref, 1e-5)
    if prenorm:
        assert_close("r", r, r_ref, 1e-6)
    names = [n for n, t in zip(["dx", "dg", "dres", "dw", "db"], (x, g, res, w, b)) if t is not None]
    for name, got, want in zip(names, grads, grads_ref):
        assert_close(name, got, want, 1e-5)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_norm_modules_and_linear_forms(backend):
    """The peer's module and function names: LayerNorm, GroupNorm, the *Linear forms (norm, then F.linear with the
    passed weights) and the gated norms of fla.modules.fused_norm_gate, each against the float64 reference."""
    from fla.modules import (FusedLayerNormGated, FusedRMSNormSwishGateLinear, GroupNorm, GroupNormLinear, LayerNorm,
                             LayerNormLinear, RMSNormLinear)
    from fla.modules.fused_norm_gate import layer_norm_gated
    from fla.modules.layernorm import GroupNormRef, group_norm, layer_norm_linear
    seed("modules", backend)
    x, g, lw, lb = leaf(2, 9, 32), leaf(2, 9, 32), leaf(24, 32), leaf(24)
    with use_backend(backend):
        for make, groups, is_rms in ((lambda: LayerNorm(32, bias=True), 1, False),
                                     (lambda: GroupNorm(4, 32, bias=True), 4, False),
                                     (lambda: GroupNorm(2, 32, bias=True, is_rms_norm=True), 2, True)):
            norm = make()
            norm.weight.data, norm.bias.data = torch.randn(32), torch.randn(32)
            y_ref = norm_reference(x, None, None, norm.weight, norm.bias, 1e-5, "swish", is_rms, groups)[0]
            assert_close("module", norm(x), y_ref, 1e-5)
            ref = GroupNormRef(groups, 32, bias=True, is_rms_norm=is_rms)
            ref.load_state_dict(norm.state_dict())
            assert_close("ref", ref(x), y_ref, 1e-5)
            assert_close("fn", group_norm(x, norm.weight, norm.bias, None, 1e-5, False, False, is_rms, groups),
                         y_ref, 1e-5)
        for cls, groups, is_rms in ((lambda: LayerNormLinear(32, bias=True), 1, False),
                                    (lambda: RMSNormLinear(32), 1, True),
                                    (lambda: GroupNormLinear(4, 32, bias=True), 4, False)):
            norm = cls()
            norm.weight.data = torch.randn(32)
            y = norm(x, lw, lb)
            y_ref = F.linear(norm_reference(x, None, None, norm.weight, norm.bias, 1e-5, "swish", is_rms, groups)[0],
                             lw.double(), lb.double())
            grads = torch.autograd.grad(y.pow(2).sum(), (x, lw, lb, norm.weight))
            grads_ref = torch.autograd.grad(y_ref.pow(2).sum(), (x, lw, lb, norm.weight))
            assert_close("linear", y, y_ref, 1e-5)
            for name, got, want in zip(["dx", "dlw", "dlb", "dw"], grads, grads_ref):
                assert_close(name, got, want, 1e-5)
        y, r = layer_norm_linear(x, None, None, lw, None, residual=g, prenorm=True)
        assert_close("prenorm", r, x + g, 0)
        gated = FusedLayerNormGated(32, bias=True, activation="sigmoid")
        gated.bias.data = torch.randn(32)
        y_ref = norm_reference(x, g, None, gated.weight, gated.bias, 1e-5, "sigmoid", False, 1)[0]
        assert_close("gated", gated(x, g), y_ref, 1e-5)
        assert_close("gated fn", layer_norm_gated(x, g, gated.weight, gated.bias, "sigmoid", eps=1e-5), y_ref, 1e-5)
        gl = FusedRMSNormSwishGateLinear(32)
        y_ref = F.linear(norm_reference(x, g, None, None, None, 1e-5, "swish", True, 1)[0], lw.double())
        assert_close("gate linear", gl(x, g, lw), y_ref, 1e-5)
    with pytest.raises(ValueError, match="num_groups"):
        GroupNorm(5, 32)
    with pytest.raises(ValueError, match="num_groups must be a positive int"):
        group_norm(x, None, None, num_groups=3)
