"""`fla/ops/utils/l2norm.py`: the L2 norm over the last dim, both paths, against autograd through the formula."""
from __future__ import annotations

import pytest
import torch

from fla.ops.utils.dispatch import use_backend
from fla.ops.utils.l2norm import l2_norm
from tests.helpers import assert_close, poisoned_empty, seed


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("shape,dtype,eps", [
    ((2, 7, 3, 33), "float32", 1e-6),  # D not a power of two, rows not a multiple of the row block
    ((130, 64), "float32", 1e-6),
    ((3, 5, 256), "float16", 1e-6),
    ((4, 9, 1), "float32", 1e-2),  # D = 1, eps large enough to matter
])
def test_l2_norm_matches_formula(backend, shape, dtype, eps):
    seed(backend, shape, dtype, eps)
    dtype = getattr(torch, dtype)
    x = (torch.randn(shape) * 3).to(dtype).requires_grad_()
    dy = torch.randn(shape)
    with use_backend(backend), poisoned_empty():
        y = l2_norm(x, eps)
        (dx,) = torch.autograd.grad((y.float() * dy).sum(), x)
    xr = x.detach().float().requires_grad_()
    yr = xr / torch.sqrt((xr * xr).sum(-1, keepdim=True) + eps)
    (dxr,) = torch.autograd.grad((yr * dy).sum(), xr)
    assert y.dtype == dtype and dx.dtype == dtype
    rel = 1e-5 if dtype == torch.float32 else 2e-3
    assert_close("y", y.float(), yr, rel)
    assert_close("dx", dx.float(), dxr, rel)


def test_l2_norm_empty_input():
    x = torch.randn(0, 3, 16, requires_grad=True)
    y = l2_norm(x)
    assert y.shape == x.shape


@pytest.mark.parametrize("x", [[1.0, 2.0], torch.arange(4)])
def test_l2_norm_rejects_non_float(x):
    with pytest.raises(ValueError, match="floating-point torch.Tensor"):
        l2_norm(x)
