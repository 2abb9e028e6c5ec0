"""The norm-then-linear forms (LayerNormLinear, RMSNormLinear, GroupNormLinear, the gated *Linear of
fla.modules.fused_norm_gate) and GroupNorm's in-kernel affine: forward and every gradient against a float64 PyTorch
reference on both paths, and the memory contract of the *Linear forms (their backward recomputes the normed rows)."""
import pytest
import torch
import torch.nn.functional as F

from fla.modules import (FusedLayerNormSwishGateLinear, FusedRMSNormSwishGateLinear, GroupNorm, GroupNormLinear,
                         LayerNormLinear, RMSNormLinear, layer_norm)
from fla.modules.layernorm import _group_norm
from fla.ops.utils.dispatch import use_backend
from tests.helpers import assert_close, poisoned_empty, seed
from tests.modules.test_layernorm import norm_reference


def leaf(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype).requires_grad_()


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize(
    "shape, O, is_rms, groups, gated, activation, has_residual, prenorm, bias, linear_bias, dtype",
    [
        ((2, 37, 48), 24, False, 1, False, "swish", False, False, True, True, torch.float32),
        ((3, 13, 48), 20, False, 3, False, "swish", True, True, True, False, torch.float32),
        ((2, 11, 50), 17, True, 5, False, "swish", True, False, False, True, torch.float16),  # D = 10: padded
        ((2, 19, 40), 33, False, 1, True, "swish", True, False, True, True, torch.float32),
        ((1, 1, 40), 8, True, 1, True, "sigmoid", False, True, False, True, torch.float16),  # a single row
    ],
)
def test_norm_linear_matches_reference(backend, shape, O, is_rms, groups, gated, activation, has_residual, prenorm,
                                       bias, linear_bias, dtype):
    seed("linear", backend, shape, O, is_rms, groups, gated, has_residual, prenorm, bias, linear_bias, dtype)
    N = shape[-1]
    x = leaf(*shape, dtype=dtype)
    g = leaf(*shape, dtype=dtype) if gated else None
    res = leaf(*shape, dtype=dtype) if has_residual else None
    w, b = leaf(N), leaf(N) if bias else None
    lw, lb = leaf(O, N, dtype=dtype), leaf(O, dtype=dtype) if linear_bias else None
    dout, dr = torch.randn(*shape[:-1], O, dtype=dtype), torch.randn(shape, dtype=dtype)
    inputs = [t for t in (x, g, res, w, b, lw, lb) if t is not None]
    with use_backend(backend), poisoned_empty():
        out = _group_norm(x, g, res, w, b, 1e-5, prenorm, False, activation, is_rms, groups, lw, lb)
        o, r = out if prenorm else (out, None)
        loss = (o.float() * dout.float()).sum() + ((r.float() * dr.float()).sum() if prenorm else 0)
        grads = torch.autograd.grad(loss, inputs)
    assert o.dtype == dtype
    y_ref, r_ref = norm_reference(x, g, res, w, b, 1e-5, activation, is_rms, groups)
    o_ref = F.linear(y_ref, lw.double(), lb.double() if lb is not None else None)
    loss_ref = (o_ref * dout.double()).sum() + ((r_ref * dr.double()).sum() if prenorm else 0)
    grads_ref = torch.autograd.grad(loss_ref, inputs)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert_close("out", o, o_ref, tol)
    if prenorm:
        assert_close("r", r, r_ref, tol / 10)
    names = [n for n, t in zip(["dx", "dg", "dres", "dw", "db", "dlw", "dlb"], (x, g, res, w, b, lw, lb))
             if t is not None]
    for name, got, want in zip(names, grads, grads_ref):
        assert got.dtype == dict(zip(names, inputs))[name].dtype, name
        assert_close(name, got, want, tol)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize(
    "shape, groups, is_rms, gated, has_residual, prenorm, dtype",
    [
        ((3, 17, 50), 5, False, True, True, True, torch.float32),  # a gated GroupNorm, D = 10
        ((2, 23, 64), 4, True, False, True, False, torch.float16),
    ],
)
def test_group_norm_affine_in_the_kernel(backend, shape, groups, is_rms, gated, has_residual, prenorm, dtype):
    """GroupNorm's per-channel weight and bias (and gate) are applied by the norm itself: the output's autograd node
    is the norm's own (no elementwise PyTorch op after it), and forward and gradients match the reference."""
    seed("group", backend, shape, groups, is_rms, gated, has_residual, prenorm, dtype)
    N = shape[-1]
    x, g = leaf(*shape, dtype=dtype), leaf(*shape, dtype=dtype) if gated else None
    res = leaf(*shape, dtype=dtype) if has_residual else None
    w, b = leaf(N), leaf(N)
    dy, dr = torch.randn(shape, dtype=dtype), torch.randn(shape, dtype=dtype)
    inputs = [t for t in (x, g, res, w, b) if t is not None]
    with use_backend(backend), poisoned_empty():
        out = _group_norm(x, g, res, w, b, 1e-5, prenorm, False, "swish", is_rms, groups)
        y, r = out if prenorm else (out, None)
        loss = (y.float() * dy.float()).sum() + ((r.float() * dr.float()).sum() if prenorm else 0)
        grads = torch.autograd.grad(loss, inputs)
    if backend == "triton":
        assert type(y.grad_fn).__name__ == "LayerNormFunctionBackward", y.grad_fn
    y_ref, r_ref = norm_reference(x, g, res, w, b, 1e-5, "swish", is_rms, groups)
    loss_ref = (y_ref * dy.double()).sum() + ((r_ref * dr.double()).sum() if prenorm else 0)
    grads_ref = torch.autograd.grad(loss_ref, inputs)
    tol = 1e-5 if dtype == torch.float32 else 5e-3
    assert_close("y", y, y_ref, tol)
    if prenorm:
        assert_close("r", r, r_ref, tol / 10)
    names = [n for n, t in zip(["dx", "dg", "dres", "dw", "db"], (x, g, res, w, b)) if t is not None]
    for name, got, want in zip(names, grads, grads_ref):
        assert_close(name, got, want, tol)


def saved_full_size(fn, allowed, numel):
    """Run fn() and return the tensors autograd saved for backward that have at least `numel` elements and share
    storage with none of `allowed` (the inputs and parameters): what the graph keeps alive beyond its inputs."""
    saved = []

    def pack(t):
        saved.append(t)
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    keep = {t.untyped_storage().data_ptr() for t in allowed if t is not None}
    extra = [t for t in saved if t.numel() >= numel and t.untyped_storage().data_ptr() not in keep]
    return out, extra


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_norm_linear_saves_the_input_not_the_normed_rows(backend):
    """The *Linear forms keep only x (x + residual with a residual: the stream itself), g and the [M, G] statistics
    for backward; the normed rows y are recomputed there. The same check flags the plain composition
    F.linear(layer_norm(x)), which keeps y for the linear weight's gradient, so it can fail."""
    seed("saved", backend)
    B, T, N, O = 2, 9, 32, 48
    x, g, res = leaf(B, T, N), leaf(B, T, N), leaf(B, T, N)
    lw, lb = leaf(O, N), leaf(O)
    with use_backend(backend):
        _, extra = saved_full_size(lambda: F.linear(layer_norm(x, None, None), lw, lb), [x, lw, lb], B * T * N)
        assert len(extra) >= 1, "the control must keep the normed rows"
        for make, gated in ((lambda: LayerNormLinear(N, bias=True), False), (lambda: RMSNormLinear(N), False),
                            (lambda: GroupNormLinear(4, N, bias=True), False),
                            (lambda: FusedLayerNormSwishGateLinear(N), True),
                            (lambda: FusedRMSNormSwishGateLinear(N), True)):
            norm = make()
            params = [norm.weight, norm.bias, lw, lb]
            for residual in (None, res):
                def run():
                    args = (x, g) if gated else (x,)
                    return norm(*args, lw, lb, residual=residual, prenorm=residual is not None)
                out, extra = saved_full_size(run, [x, g, res, *params], B * T * N)
                # with a residual, the one [M, N] tensor kept is x + residual, which prenorm also returns
                assert len(extra) == (residual is not None), (type(norm).__name__, [list(t.shape) for t in extra])
                if residual is not None:
                    assert extra[0].untyped_storage().data_ptr() == out[1].untyped_storage().data_ptr()
                loss = out[0].sum() if residual is not None else out.sum()
                assert torch.isfinite(torch.autograd.grad(loss, lw)[0]).all()


def test_group_norm_module_state_dict_and_repr():
    """The shared base keeps the modules' parameters and state-dict keys."""
    norm = GroupNorm(4, 32, bias=True)
    assert list(norm.state_dict()) == ["weight", "bias"] and "num_groups=4" in repr(norm)
    assert list(FusedRMSNormSwishGateLinear(16).state_dict()) == ["weight"]
    assert list(RMSNormLinear(16, elementwise_affine=False).state_dict()) == []
    with pytest.raises(ValueError, match="linear_weight must have shape"):
        LayerNormLinear(16)(torch.randn(2, 16), torch.randn(8, 15), None)
