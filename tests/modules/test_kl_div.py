"""Fused (chunked) KL-divergence distillation loss against F.kl_div on the full logits in float64, both paths."""
import pytest
import torch
import torch.nn.functional as F

from fla.modules.fused_kl_div import FusedKLDivLoss, fused_kl_div_loss
from fla.ops.utils.dispatch import use_backend
from tests.helpers import assert_close, poisoned_empty, seed


def reference(x, target_x, weight, target_weight, reduction):
    s = F.linear(x.double(), weight.double())
    t = F.linear(target_x.double(), target_weight.double())
    return F.kl_div(s.log_softmax(-1), t.softmax(-1), reduction=reduction)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize(
    "dtype, N, D, Dt, V, chunk_size, reduction, fp32_acc",
    [
        (torch.float32, 37, 48, 48, 300, 16, "batchmean", True),  # 37 rows: the last chunk is short
        (torch.float32, 20, 32, 24, 129, None, "sum", False),  # the teacher's hidden size differs
        (torch.float16, 37, 48, 40, 300, 8, "batchmean", True),
        (torch.float16, 1, 16, 16, 4100, None, "batchmean", False),  # one row, V past one block of 4096
    ],
)
def test_fused_kl_div_matches_torch(backend, dtype, N, D, Dt, V, chunk_size, reduction, fp32_acc):
    seed(backend, dtype, N, D, Dt, V, chunk_size, reduction, fp32_acc)
    x = torch.randn(N, D).to(dtype).requires_grad_()
    weight = (torch.randn(V, D) / D ** 0.25).to(dtype).requires_grad_()
    target_x = torch.randn(N, Dt).to(dtype)
    target_weight = (torch.randn(V, Dt) / Dt ** 0.25).to(dtype)
    loss_fn = FusedKLDivLoss(reduction, fp32_acc, chunk_size=chunk_size)
    with use_backend(backend), poisoned_empty():
        loss = loss_fn(x, target_x, weight, target_weight)
        dx, dw = torch.autograd.grad(1.7 * loss, (x, weight))
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert dx.dtype == dtype and dw.dtype == dtype
    ref = reference(x, target_x, weight, target_weight, reduction)
    dx_ref, dw_ref = torch.autograd.grad(1.7 * ref, (x, weight))
    rel = 1e-5 if dtype == torch.float32 else 5e-3
    assert_close("loss", loss, ref, rel)
    assert_close("dx", dx, dx_ref, rel)
    assert_close("dw", dw, dw_ref, rel)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_only_what_needs_a_gradient(backend):
    """A frozen student head (or no grad mode) computes no weight gradient, and the loss is the same."""
    seed(backend)
    x = torch.randn(9, 16, requires_grad=True)
    weight, target_x, target_weight = torch.randn(50, 16), torch.randn(9, 16), torch.randn(50, 16)
    with use_backend(backend):
        loss = fused_kl_div_loss(x, target_x, weight, target_weight, chunk_size=4)
        (dx,) = torch.autograd.grad(loss, x)
        with torch.no_grad():
            loss_ng = fused_kl_div_loss(x, target_x, weight, target_weight)
    x_ref = x.detach().requires_grad_()
    ref = reference(x_ref, target_x, weight, target_weight, "batchmean")
    (dx_ref,) = torch.autograd.grad(ref, x_ref)
    assert_close("loss", loss, ref, 1e-5)
    assert_close("loss_ng", loss_ng, ref, 1e-5)
    assert_close("dx", dx, dx_ref, 1e-5)


def test_rejects_bad_input():
    x, w = torch.randn(4, 8), torch.randn(20, 8)
    with pytest.raises(RuntimeError, match="frozen teacher"):
        fused_kl_div_loss(x, torch.randn(4, 8, requires_grad=True), w, torch.randn(20, 8))
    with pytest.raises(ValueError, match="frozen teacher"):
        FusedKLDivLoss()(x, torch.randn(4, 8), w, torch.randn(20, 8, requires_grad=True))
    with pytest.raises(ValueError, match="reduction must be one of"):
        FusedKLDivLoss(reduction="mean")
    with pytest.raises(ValueError, match=r"x must be a floating-point \[N, D\]"):
        fused_kl_div_loss(torch.randn(2, 2, 8), torch.randn(4, 8), w, torch.randn(20, 8))
    with pytest.raises(ValueError, match="one row per row of x"):
        fused_kl_div_loss(x, torch.randn(5, 8), w, torch.randn(20, 8))
    with pytest.raises(ValueError, match=r"weight must be \[V, 8\]"):
        fused_kl_div_loss(x, torch.randn(4, 8), torch.randn(20, 6), torch.randn(20, 8))
    with pytest.raises(ValueError, match="target_weight must be"):
        fused_kl_div_loss(x, torch.randn(4, 8), w, torch.randn(21, 8))
    with pytest.raises(ValueError, match="differs from x dtype"):
        fused_kl_div_loss(x, torch.randn(4, 8), w.half(), torch.randn(20, 8))
    with pytest.raises(ValueError, match="chunk_size"):
        fused_kl_div_loss(x, torch.randn(4, 8), w, torch.randn(20, 8), chunk_size=0)
