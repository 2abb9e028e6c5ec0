"""Cross entropy whose forward pass also writes the logits gradient, so backward only scales a saved buffer.

Per row with target t (label smoothing eps over V classes, as `torch.nn.functional.cross_entropy` defines it):
    loss = lse(x) - (1 - eps) * x_t - eps * mean(x)
    dloss/dx = softmax(x) - (1 - eps) * onehot(t) - eps / V
Rows whose target is `ignore_index` get loss 0 and gradient 0. One Triton program per row makes two passes over the
vocabulary: an online log-sum-exp, then the gradient (written in the logits dtype, possibly over the logits
themselves: `fused_linear_cross_entropy` does that with its chunk buffers).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import triton
import triton.language as tl

from fla.ops.utils.dispatch import dispatch

REDUCTIONS = ("mean", "sum", "none")


@triton.jit
def cross_entropy_fwd_bwd_kernel(
    logits, target, loss, dlogits, grad_scale, ignore_index, label_smoothing, V,
    BV: tl.constexpr, HAS_SMOOTHING: tl.constexpr, STORE_GRAD: tl.constexpr,
):
    # grid: (N,); logits/dlogits are [N, V] row-major (row stride V), target [N], loss [N] float32,
    # grad_scale a 1-element float32 tensor (1 / number of counted rows for a mean, else 1).
    i_n = tl.program_id(0).to(tl.int64)
    p_row = logits + i_n * V
    b_t = tl.load(target + i_n).to(tl.int64)
    valid = b_t != ignore_index
    # pass 1: running max m and sum s of exp(x - m) over blocks of the vocabulary
    b_m = float("-inf")
    b_s = 0.
    b_sum = 0.
    for v0 in range(0, V, BV):
        o_v = v0 + tl.arange(0, BV)
        m_v = o_v < V
        b_x = tl.load(p_row + o_v, mask=m_v, other=float("-inf")).to(tl.float32)
        b_m_new = tl.maximum(b_m, tl.max(b_x, axis=0))
        b_s = b_s * tl.exp(b_m - b_m_new) + tl.sum(tl.exp(b_x - b_m_new), axis=0)
        b_m = b_m_new
        if HAS_SMOOTHING:
            b_sum += tl.sum(tl.where(m_v, b_x, 0.), axis=0)
    b_lse = b_m + tl.log(b_s)
    b_xt = tl.load(p_row + b_t, mask=valid & (b_t >= 0) & (b_t < V), other=0.).to(tl.float32)
    b_loss = b_lse - (1 - label_smoothing) * b_xt
    if HAS_SMOOTHING:
        b_loss -= label_smoothing * b_sum / V
    tl.store(loss + i_n, tl.where(valid, b_loss, 0.))
    if STORE_GRAD:
        # pass 2: the gradient, scaled now so that backward is one multiply by the incoming gradient
        b_scale = tl.load(grad_scale) * valid.to(tl.float32)
        p_grad = dlogits + i_n * V
        for v0 in range(0, V, BV):
            o_v = v0 + tl.arange(0, BV)
            m_v = o_v < V
            b_x = tl.load(p_row + o_v, mask=m_v, other=0.).to(tl.float32)
            b_g = tl.exp(b_x - b_lse) - tl.where(o_v == b_t, 1 - label_smoothing, 0.)
            if HAS_SMOOTHING:
                b_g -= label_smoothing / V
            tl.store(p_grad + o_v, (b_g * b_scale).to(p_grad.dtype.element_ty), mask=m_v)


def _loss_and_grad_triton(logits, target, grad_scale, ignore_index, label_smoothing, dlogits):
    N, V = logits.shape
    loss = torch.empty(N, dtype=torch.float32, device=logits.device)
    if N == 0:
        return loss
    BV = min(triton.next_power_of_2(V), 4096)
    cross_entropy_fwd_bwd_kernel[(N,)](
        logits, target, loss, dlogits, grad_scale, ignore_index, label_smoothing, V,
        BV=BV, HAS_SMOOTHING=label_smoothing > 0, STORE_GRAD=dlogits is not None, num_warps=8 if BV >= 2048 else 4,
    )
    return loss


def _loss_and_grad_torch(logits, target, grad_scale, ignore_index, label_smoothing, dlogits):
    x = logits.float()
    V = x.shape[-1]
    valid = target != ignore_index
    t = torch.where(valid, target, 0).long()
    lse = torch.logsumexp(x, -1)
    loss = lse - (1 - label_smoothing) * x.gather(1, t[:, None]).squeeze(1)
    if label_smoothing > 0:
        loss = loss - label_smoothing * x.mean(-1)
    if dlogits is not None:
        # in place on one float32 temporary: this twin also serves the chunks of fused_linear_cross_entropy
        grad = (x - lse[:, None]).exp_().sub_(label_smoothing / V)
        grad.scatter_add_(1, t[:, None], grad.new_full((len(t), 1), -(1 - label_smoothing)))
        dlogits.copy_(grad.mul_((grad_scale * valid)[:, None]))
    return torch.where(valid, loss, 0.)


cross_entropy_loss_and_grad = dispatch(_loss_and_grad_triton, _loss_and_grad_torch)
cross_entropy_loss_and_grad.__doc__ = """Per-row loss and (optionally) its gradient in one pass.

Args:
    logits: [N, V] contiguous; target: [N] int
    grad_scale: [1] float32 tensor multiplying the gradient (1 / counted rows for a mean)
    dlogits: [N, V] output buffer for the gradient (may be `logits` itself), or None to skip it
Returns:
    loss: [N] float32, 0 on ignored rows
"""


def check_targets(target: object, num_rows: int) -> None:
    if not isinstance(target, torch.Tensor) or target.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"target must be an int64 or int32 torch.Tensor of class indices (got {target!r:.60})")
    if target.numel() != num_rows:
        raise ValueError(f"target must hold one class index per row: {num_rows} (got shape {list(target.shape)})")


def check_loss_options(label_smoothing: float, reduction: str, reductions=REDUCTIONS) -> None:
    if reduction not in reductions:
        raise ValueError(f"reduction must be one of {reductions} (got {reduction!r})")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1) (got {label_smoothing})")


def grad_scale_and_count(target: torch.Tensor, ignore_index: int, reduction: str):
    """(grad_scale [1] float32, number of counted rows [] int64), without a host sync."""
    count = (target != ignore_index).sum()
    if reduction == "mean":
        return (1.0 / count.clamp(min=1).float()).reshape(1), count
    return torch.ones(1, dtype=torch.float32, device=target.device), count


class CrossEntropyFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, ignore_index, label_smoothing, reduction):
        grad_scale, count = grad_scale_and_count(target, ignore_index, reduction)
        dlogits = torch.empty_like(logits) if logits.requires_grad else None
        loss = cross_entropy_loss_and_grad(logits, target, grad_scale, ignore_index, label_smoothing, dlogits)
        # Kept as an attribute, not saved: backward drops it, so autograd can take the returned buffer as the .grad
        # instead of copying it (a saved tensor still holds a reference then). It is neither input nor output, so
        # no reference cycle is made.
        ctx.dlogits = dlogits
        ctx.reduction = reduction
        if reduction == "mean":
            return loss.sum() / count  # nan when every row is ignored, as in PyTorch
        return loss.sum() if reduction == "sum" else loss

    @staticmethod
    def backward(ctx, dloss):
        dlogits = ctx.dlogits
        if dlogits is None:
            raise RuntimeError("fused cross entropy scales its saved gradient in place: backward can run only once")
        ctx.dlogits = None
        # In place: the buffer was made for exactly this, no second [N, V] tensor is made.
        return dlogits.mul_(dloss[:, None] if ctx.reduction == "none" else dloss), None, None, None, None


def fused_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Cross entropy of `logits` [N, V] against class indices `target` [N] (rows with `ignore_index` don't count).

    Returns the float32 loss: a scalar for "mean" (over counted rows) and "sum", [N] for "none". Memory: the
    gradient lives in one buffer of the logits dtype, made in forward; backward must run only once.
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or not logits.is_floating_point():
        got = list(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"logits must be a floating-point [N, V] tensor (got {got}); flatten the leading dims")
    check_targets(target, logits.shape[0])
    check_loss_options(label_smoothing, reduction)
    return CrossEntropyFunction.apply(logits.contiguous(), target.reshape(-1), ignore_index, label_smoothing, reduction)


class FusedCrossEntropyLoss(nn.Module):
    """`nn.CrossEntropyLoss` for [N, V] logits and [N] targets, with the gradient computed during forward. Argument
    order (ignore_index, reduction, label_smoothing) is the peer library's."""

    def __init__(self, ignore_index: int = -100, reduction: str = "mean", label_smoothing: float = 0.0):
        super().__init__()
        check_loss_options(label_smoothing, reduction)
        self.ignore_index, self.label_smoothing, self.reduction = ignore_index, label_smoothing, reduction

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}, label_smoothing={self.label_smoothing}, reduction={self.reduction!r}"

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # noqa: A002 (torch's name)
        """input: [N, V] logits; target: [N] class indices."""
        return fused_cross_entropy(input, target, self.ignore_index, self.label_smoothing, self.reduction)
