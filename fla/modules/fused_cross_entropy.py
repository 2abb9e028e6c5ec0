"""Cross entropy whose forward pass also writes the logits gradient, so backward only scales a saved buffer.

Per row with target t (label smoothing eps over V classes, as `torch.nn.functional.cross_entropy` defines it), on
the logits as the peer library transforms them, x = c * tanh(s * z / c) (logit scale s, soft cap c; no cap: x = s*z):
    loss = lse(x) - (1 - eps) * x_t - eps * mean(x) + zs * lse(x)^2          (zs: the z-loss weight)
    dloss/dx = softmax(x) (1 + 2 zs lse) - (1 - eps) * onehot(t) - eps / V,   dx/dz = s (1 - tanh^2)
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
def _transform(b_x, logit_scale, softcap, HAS_SOFTCAP: tl.constexpr):
    """z -> x = softcap * tanh(logit_scale * z / softcap) (or logit_scale * z); tanh through sigmoid, which every
    backend has."""
    b_x = b_x * logit_scale
    if HAS_SOFTCAP:
        b_x = softcap * (2 * tl.sigmoid(2 * b_x / softcap) - 1)
    return b_x


@triton.jit
def cross_entropy_fwd_bwd_kernel(
    logits, target, loss, lse, dlogits, grad_scale, ignore_index, label_smoothing, logit_scale, softcap, z_scale, V,
    BV: tl.constexpr, HAS_SMOOTHING: tl.constexpr, HAS_SOFTCAP: tl.constexpr, STORE_GRAD: tl.constexpr,
):
    # grid: (N,); logits/dlogits are [N, V] row-major (row stride V), target [N], loss and lse [N] float32,
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
        b_x = _transform(tl.load(p_row + o_v, mask=m_v, other=0.).to(tl.float32), logit_scale, softcap, HAS_SOFTCAP)
        b_x = tl.where(m_v, b_x, float("-inf"))
        b_m_new = tl.maximum(b_m, tl.max(b_x, axis=0))
        b_s = b_s * tl.exp(b_m - b_m_new) + tl.sum(tl.exp(b_x - b_m_new), axis=0)
        b_m = b_m_new
        if HAS_SMOOTHING:
            b_sum += tl.sum(tl.where(m_v, b_x, 0.), axis=0)
    b_lse = b_m + tl.log(b_s)
    b_xt = tl.load(p_row + b_t, mask=valid & (b_t >= 0) & (b_t < V), other=0.).to(tl.float32)
    b_xt = _transform(b_xt, logit_scale, softcap, HAS_SOFTCAP)
    b_loss = b_lse - (1 - label_smoothing) * b_xt + z_scale * b_lse * b_lse
    if HAS_SMOOTHING:
        b_loss -= label_smoothing * b_sum / V
    tl.store(loss + i_n, tl.where(valid, b_loss, 0.))
    tl.store(lse + i_n, b_lse)
    if STORE_GRAD:
        # pass 2: the gradient, scaled now so that backward is one multiply by the incoming gradient
        b_scale = tl.load(grad_scale) * valid.to(tl.float32)
        p_grad = dlogits + i_n * V
        for v0 in range(0, V, BV):
            o_v = v0 + tl.arange(0, BV)
            m_v = o_v < V
            b_x = _transform(tl.load(p_row + o_v, mask=m_v, other=0.).to(tl.float32), logit_scale, softcap,
                             HAS_SOFTCAP)
            b_g = tl.exp(b_x - b_lse) * (1 + 2 * z_scale * b_lse) - tl.where(o_v == b_t, 1 - label_smoothing, 0.)
            if HAS_SMOOTHING:
                b_g -= label_smoothing / V
            if HAS_SOFTCAP:  # d(c tanh(u / c))/du = 1 - tanh^2 = 1 - (x / c)^2
                b_g *= 1 - (b_x / softcap) * (b_x / softcap)
            tl.store(p_grad + o_v, (b_g * b_scale * logit_scale).to(p_grad.dtype.element_ty), mask=m_v)


def _loss_and_grad_triton(logits, target, grad_scale, ignore_index, label_smoothing, dlogits, logit_scale=1.0,
                          softcap=0.0, z_scale=0.0, lse=None):
    N, V = logits.shape
    loss = torch.empty(N, dtype=torch.float32, device=logits.device)
    if N == 0:
        return loss
    lse = torch.empty(N, dtype=torch.float32, device=logits.device) if lse is None else lse
    BV = min(triton.next_power_of_2(V), 4096)
    cross_entropy_fwd_bwd_kernel[(N,)](
        logits, target, loss, lse, dlogits, grad_scale, ignore_index, label_smoothing, logit_scale, softcap or 1.0,
        z_scale, V, BV=BV, HAS_SMOOTHING=label_smoothing > 0, HAS_SOFTCAP=bool(softcap),
        STORE_GRAD=dlogits is not None, num_warps=8 if BV >= 2048 else 4,
    )
    return loss


def _loss_and_grad_torch(logits, target, grad_scale, ignore_index, label_smoothing, dlogits, logit_scale=1.0,
                         softcap=0.0, z_scale=0.0, lse=None):
    x = logits.float() * logit_scale
    if softcap:
        x = softcap * torch.tanh(x / softcap)
    V = x.shape[-1]
    valid = target != ignore_index
    t = torch.where(valid, target, 0).long()
    row_lse = torch.logsumexp(x, -1)
    if lse is not None:
        lse.copy_(row_lse)
    loss = row_lse - (1 - label_smoothing) * x.gather(1, t[:, None]).squeeze(1) + z_scale * row_lse ** 2
    if label_smoothing > 0:
        loss = loss - label_smoothing * x.mean(-1)
    if dlogits is not None:
        # in place on one float32 temporary: this twin also serves the chunks of fused_linear_cross_entropy
        grad = (x - row_lse[:, None]).exp_().mul_(1 + 2 * z_scale * row_lse[:, None]).sub_(label_smoothing / V)
        grad.scatter_add_(1, t[:, None], grad.new_full((len(t), 1), -(1 - label_smoothing)))
        if softcap:
            grad.mul_(1 - (x / softcap) ** 2)
        dlogits.copy_(grad.mul_((grad_scale * valid * logit_scale)[:, None]))
    return torch.where(valid, loss, 0.)


cross_entropy_loss_and_grad = dispatch(_loss_and_grad_triton, _loss_and_grad_torch)
cross_entropy_loss_and_grad.__doc__ = """Per-row loss and (optionally) its gradient in one pass.

Args:
    logits: [N, V] contiguous; target: [N] int
    grad_scale: [1] float32 tensor multiplying the gradient (1 / counted rows for a mean)
    dlogits: [N, V] output buffer for the gradient (may be `logits` itself), or None to skip it
    logit_scale, softcap (0 = none), z_scale: the logit transform and z-loss weight of the module docstring
    lse: [N] float32 buffer that receives each row's log-sum-exp, or None
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
    def forward(ctx, logits, target, ignore_index, label_smoothing, reduction, logit_scale=1.0, softcap=0.0,
                z_scale=0.0, inplace_backward=False, return_z_loss=False):
        grad_scale, count = grad_scale_and_count(target, ignore_index, reduction)
        dlogits = None
        if logits.requires_grad:  # inplace_backward: the gradient overwrites the logits (the peer's memory saving)
            dlogits = logits if inplace_backward else torch.empty_like(logits)
        lse = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device) if return_z_loss else None
        loss = cross_entropy_loss_and_grad(logits, target, grad_scale, ignore_index, label_smoothing, dlogits,
                                           logit_scale, softcap, z_scale, lse)
        # Kept as an attribute, not saved: backward drops it, so autograd can take the returned buffer as the .grad
        # instead of copying it (a saved tensor still holds a reference then). It is neither input nor output, so
        # no reference cycle is made.
        ctx.dlogits = dlogits
        ctx.reduction = reduction

        def reduce(per_row):
            if reduction == "mean":
                return per_row.sum() / count  # nan when every row is ignored, as in PyTorch
            return per_row.sum() if reduction == "sum" else per_row

        if not return_z_loss:
            return reduce(loss)
        z_loss = reduce(torch.where(target != ignore_index, z_scale * lse * lse, 0.0))
        ctx.mark_non_differentiable(z_loss)  # part of the loss already: returned to be logged
        return reduce(loss), z_loss

    @staticmethod
    def backward(ctx, dloss, dz_loss=None):
        dlogits = ctx.dlogits
        if dlogits is None:
            raise RuntimeError("fused cross entropy scales its saved gradient in place: backward can run only once")
        ctx.dlogits = None
        # In place: the buffer was made for exactly this, no second [N, V] tensor is made.
        return (dlogits.mul_(dloss[:, None] if ctx.reduction == "none" else dloss),
                None, None, None, None, None, None, None, None, None)


def fused_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    *,
    logit_scale: float = 1.0,
    logit_softcapping: float | None = None,
    lse_square_scale: float = 0.0,
    inplace_backward: bool = False,
    return_z_loss: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Cross entropy of `logits` [N, V] against class indices `target` [N] (rows with `ignore_index` don't count),
    on logits scaled by `logit_scale` and soft-capped at `logit_softcapping`, plus the z-loss
    `lse_square_scale * lse^2` (see the module docstring).

    Returns the float32 loss: a scalar for "mean" (over counted rows) and "sum", [N] for "none"; with return_z_loss
    also the z-loss part alone (reduced the same way, not differentiable: it is in the loss already). Memory: the
    gradient lives in one buffer of the logits dtype, made in forward (the logits themselves with
    inplace_backward); backward must run only once.
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or not logits.is_floating_point():
        got = list(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"logits must be a floating-point [N, V] tensor (got {got}); flatten the leading dims")
    check_targets(target, logits.shape[0])
    check_loss_options(label_smoothing, reduction)
    check_logit_options(logit_scale, logit_softcapping, lse_square_scale)
    return CrossEntropyFunction.apply(logits.contiguous(), target.reshape(-1), ignore_index, label_smoothing, reduction,
                                      float(logit_scale), float(logit_softcapping or 0.0), float(lse_square_scale),
                                      inplace_backward, return_z_loss)


def check_logit_options(logit_scale, logit_softcapping, lse_square_scale) -> None:
    if not isinstance(logit_scale, (int, float)) or not logit_scale > 0:
        raise ValueError(f"logit_scale must be a positive number (got {logit_scale!r})")
    if logit_softcapping is not None and (not isinstance(logit_softcapping, (int, float)) or not logit_softcapping > 0):
        raise ValueError(f"logit_softcapping must be None or a positive number (got {logit_softcapping!r})")
    if not isinstance(lse_square_scale, (int, float)) or lse_square_scale < 0:
        raise ValueError(f"lse_square_scale (the z-loss weight) must be >= 0 (got {lse_square_scale!r})")


class FusedCrossEntropyLoss(nn.Module):
    """`nn.CrossEntropyLoss` for [N, V] logits and [N] targets, with the gradient computed during forward. Argument
    order (ignore_index, reduction, label_smoothing) is the peer library's."""

    def __init__(
        self, ignore_index: int = -100, reduction: str = "mean", label_smoothing: float = 0.0,
        logit_scale: float = 1.0, lse_square_scale: float = 0.0, logit_softcapping: float | None = None,
        inplace_backward: bool = False, process_group=None, return_z_loss: bool = False,
    ):
        super().__init__()
        if process_group is not None:
            raise ValueError("process_group (a vocabulary split across tensor-parallel ranks) is not supported by "
                             "fla's FusedCrossEntropyLoss: pass None and full-vocabulary logits")
        check_loss_options(label_smoothing, reduction)
        check_logit_options(logit_scale, logit_softcapping, lse_square_scale)
        self.ignore_index, self.label_smoothing, self.reduction = ignore_index, label_smoothing, reduction
        self.logit_scale, self.lse_square_scale, self.logit_softcapping = logit_scale, lse_square_scale, \
            logit_softcapping
        self.inplace_backward, self.return_z_loss = inplace_backward, return_z_loss

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}, label_smoothing={self.label_smoothing}, reduction={self.reduction!r}"

    def forward(self, input: torch.Tensor, target: torch.Tensor):  # noqa: A002 (torch's name)
        """input: [N, V] logits; target: [N] class indices -> loss (and the z-loss alone with return_z_loss)."""
        return fused_cross_entropy(
            input, target, self.ignore_index, self.label_smoothing, self.reduction, logit_scale=self.logit_scale,
            logit_softcapping=self.logit_softcapping, lse_square_scale=self.lse_square_scale,
            inplace_backward=self.inplace_backward, return_z_loss=self.return_z_loss)


def cross_entropy_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    label_smoothing: float = 0.0,
    logit_scale: float = 1.0,
    lse_square_scale: float = 0.0,
    logit_softcapping: float | None = None,
    ignore_index: int = -100,
    inplace_backward: bool = False,
    process_group=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The peer library's unreduced form: (loss [N] float32, z-loss [N] float32), the z-loss (lse_square_scale *
    lse^2, already inside loss) not differentiable; ignored rows give 0 in both. `fused_cross_entropy` with
    reduction="none" and return_z_loss. process_group (a vocabulary split across ranks) is not supported."""
    if process_group is not None:
        raise ValueError("process_group (tensor-parallel vocabulary) is not supported by cross_entropy_loss; gather "
                         "the logits, or pass None")
    return fused_cross_entropy(logits, target, ignore_index, label_smoothing, "none", logit_scale=logit_scale,
                               logit_softcapping=logit_softcapping, lse_square_scale=lse_square_scale,
                               inplace_backward=inplace_backward, return_z_loss=True)
