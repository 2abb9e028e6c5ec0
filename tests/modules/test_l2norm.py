"""L2Norm (the module over fla.ops.utils.l2norm) against a float64 reference, both paths."""
import pytest
import torch

from fla.modules import L2Norm, l2_norm
from fla.ops.utils.dispatch import use_backend
from tests.helpers import assert_close, poisoned_empty, seed


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("shape", [(2, 29, 3, 40), (70, 64)])
def test_l2norm_matches_reference(backend, shape):
    seed(backend, shape)
    x = torch.randn(shape, requires_grad=True)
    dy = torch.randn(shape)
    with use_backend(backend), poisoned_empty():
        y = L2Norm(eps=1e-6)(x)
        (dx,) = torch.autograd.grad(y, x, dy)
    xd = x.double()
    y_ref = xd / torch.sqrt(xd.pow(2).sum(-1, keepdim=True) + 1e-6)
    (dx_ref,) = torch.autograd.grad(y_ref, x, dy.double())
    assert_close("y", y, y_ref, 1e-6)
    assert_close("dx", dx, dx_ref, 1e-5)


def test_l2norm_rejects_integer_input():
    with pytest.raises(ValueError, match="floating-point"):
        L2Norm()(torch.arange(6).view(2, 3))


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_l2norm_output_dtype(backend):
    seed("l2norm-output-dtype", backend)
    x = torch.randn(33, 48, dtype=torch.float16, requires_grad=True)
    dy = torch.randn(33, 48)
    with use_backend(backend), poisoned_empty():
        y = L2Norm(output_dtype=torch.float32)(x)
        (dx,) = torch.autograd.grad(y, x, dy)
    xd = x.double()
    y_ref = xd / torch.sqrt(xd.pow(2).sum(-1, keepdim=True) + 1e-6)
    (dx_ref,) = torch.autograd.grad(y_ref, x, dy.double())
    assert y.dtype == torch.float32 and dx.dtype == torch.float16
    assert_close("y", y, y_ref, 1e-6)  # written from the float32 result, not a float16 one cast up
    assert_close("dx", dx, dx_ref, 2e-3)
    assert l2_norm(x, 1e-6, torch.bfloat16).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="output_dtype"):
        l2_norm(x, 1e-6, torch.int32)
