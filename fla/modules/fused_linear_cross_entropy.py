"""The language-model head and its cross entropy in chunks of tokens, never holding the full [N, V] logits.

Forward walks the tokens `chunk_size` at a time: logits = h_c @ W.T (+ b), the cross-entropy kernel writes the
chunk's loss and, over the same buffer, its logits gradient; then dh_c = dlogits @ W and dW += dlogits.T @ h_c
(float32 accumulator). Backward only multiplies the stored dh, dW, db by the incoming scalar gradient. Peak memory is
one chunk of logits plus the gradients of the inputs, instead of two or three [N, V] tensors.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from fla.modules.fused_cross_entropy import (
    check_logit_options,
    check_loss_options,
    check_targets,
    cross_entropy_loss_and_grad,
    grad_scale_and_count,
)

REDUCTIONS = ("mean", "sum")


def default_chunk_size(num_tokens: int, hidden_size: int, vocab_size: int) -> int:
    """Rows per chunk such that a chunk of logits is about as large as the hidden states (a multiple of 64)."""
    rows = -(-num_tokens // max(1, -(-vocab_size // hidden_size)))
    return max(64, -(-rows // 64) * 64)


def _accumulate(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """acc += a @ b without a copy of a or b in acc's dtype (float32, or the weight's own dtype)."""
    if a.dtype == acc.dtype:
        acc.addmm_(a, b)
    else:
        acc += a @ b


class FusedLinearCrossEntropyFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, target, weight, bias, ignore_index, label_smoothing, reduction, chunk_size,
                logit_scale=1.0, softcap=0.0, l2_penalty=0.0, grad_in_fp32=True):
        N, D = hidden.shape
        V = weight.shape[0]
        grad_scale, count = grad_scale_and_count(target, ignore_index, reduction)
        need_dh, need_dw = hidden.requires_grad, weight.requires_grad
        need_db = bias is not None and bias.requires_grad
        need_grad = need_dh or need_dw or need_db
        dh = torch.empty_like(hidden) if need_dh else None
        dw = torch.zeros(V, D, dtype=torch.float32 if grad_in_fp32 else weight.dtype,
                         device=hidden.device) if need_dw else None
        db = torch.zeros(V, dtype=torch.float32 if grad_in_fp32 else bias.dtype,
                         device=hidden.device) if need_db else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, N, chunk_size):
            h_c = hidden[start:start + chunk_size]
            logits = F.linear(h_c, weight, bias).contiguous()
            if l2_penalty and need_grad:  # L2Warp: the raw logits' row maxima, before the gradient overwrites them
                peak, where = logits.max(-1, keepdim=True)
            loss = cross_entropy_loss_and_grad(
                logits, target[start:start + chunk_size], grad_scale, ignore_index, label_smoothing,
                logits if need_grad else None, logit_scale, softcap,
            )
            if l2_penalty and need_grad:
                # a gradient with no loss term: d(raw logit at the row's argmax) += its value * factor / N, for
                # every row (ignored targets too) whatever the reduction, as fla.modules.l2warp.l2_warp does
                logits.scatter_add_(-1, where, peak * (l2_penalty / N))
            total += loss.sum()
            if need_dh:
                torch.mm(logits, weight, out=dh[start:start + chunk_size])
            if need_dw:
                _accumulate(dw, logits.t(), h_c)
            if need_db:
                db += logits.sum(0, dtype=db.dtype)
            del logits
        ctx.save_for_backward(dh, dw, db)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return total / count if reduction == "mean" else total  # mean: nan when every row is ignored, as PyTorch

    @staticmethod
    def backward(ctx, dloss):
        dh, dw, db = ctx.saved_tensors
        if getattr(ctx, "used", False):
            raise RuntimeError("fused linear cross entropy scales its saved gradients in place: backward runs once")
        ctx.used = True
        w_dtype, b_dtype = ctx.dtypes
        # The gradients were computed for dloss = 1 during forward: scale them in place.
        if dh is not None:
            dh = dh.mul_(dloss)
        if dw is not None:
            dw = dw.mul_(dloss).to(w_dtype)
        if db is not None:
            db = db.mul_(dloss).to(b_dtype)
        return dh, None, dw, db, None, None, None, None, None, None, None, None


def fused_linear_cross_entropy(
    hidden: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    chunk_size: int | None = None,
    num_chunks: int | None = None,
    *,
    logit_scale: float = 1.0,
    logit_softcapping: float | None = None,
    use_l2warp: bool = False,
    l2_penalty_factor: float = 1e-4,
    accumulate_grad_in_fp32: bool = True,
    process_group=None,
) -> torch.Tensor:
    """`F.cross_entropy(F.linear(hidden, weight, bias), target)` without the full logits (on the logits scaled by
    `logit_scale` and soft-capped at `logit_softcapping`, as in `fused_cross_entropy`).

    `use_l2warp` adds the peer's L2Warp gradient (no change to the loss value): each row's largest raw logit gets
    `l2_penalty_factor / N` times its value added to its gradient, which keeps bf16 logits from growing
    overconfident. `accumulate_grad_in_fp32=False` sums the weight and bias gradients in their own dtype.
    `process_group` (a vocabulary split across tensor-parallel ranks) is not supported: pass None.

    Args:
        hidden: [..., D] hidden states (leading dims are flattened to N tokens)
        target: [...] int class indices, `ignore_index` for tokens that don't count
        weight: [V, D]; bias: [V] or None
        reduction: "mean" (over counted tokens) or "sum"
        chunk_size: tokens per chunk (default: a chunk of logits about the size of `hidden`), or give num_chunks
    Returns:
        the loss, a float32 scalar. Backward must run only once (the saved gradients are scaled in place).
    """
    check_loss_options(label_smoothing, reduction, REDUCTIONS)
    check_logit_options(logit_scale, logit_softcapping, 0.0)
    check_linear_options(use_l2warp, l2_penalty_factor, process_group)
    if not isinstance(hidden, torch.Tensor) or hidden.dim() < 2 or not hidden.is_floating_point():
        got = list(hidden.shape) if isinstance(hidden, torch.Tensor) else type(hidden).__name__
        raise ValueError(f"hidden must be a floating-point [N, D] (or [B, T, D]) tensor (got {got})")
    D = hidden.shape[-1]
    hidden = hidden.reshape(-1, D).contiguous()
    N = hidden.shape[0]
    check_targets(target, N)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.shape[1] != D:
        got = list(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"weight must be [V, D] with D = {D}, the last dim of hidden (got {got})")
    if weight.dtype != hidden.dtype:
        raise ValueError(f"weight dtype {weight.dtype} differs from hidden dtype {hidden.dtype}; cast one of them")
    V = weight.shape[0]
    if bias is not None and (not isinstance(bias, torch.Tensor) or bias.shape != (V,)):
        raise ValueError(f"bias must be [V] = [{V}] or None (got {getattr(bias, 'shape', bias)})")
    if chunk_size is not None and num_chunks is not None:
        raise ValueError("give chunk_size or num_chunks, not both")
    if num_chunks is not None:
        if num_chunks < 1:
            raise ValueError(f"num_chunks must be >= 1 (got {num_chunks})")
        chunk_size = max(1, -(-N // num_chunks))
    if chunk_size is None:
        chunk_size = default_chunk_size(N, D, V)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 (got {chunk_size})")
    return FusedLinearCrossEntropyFunction.apply(
        hidden, target.reshape(-1), weight.contiguous(), bias, ignore_index, label_smoothing, reduction, chunk_size,
        float(logit_scale), float(logit_softcapping or 0.0), float(l2_penalty_factor) if use_l2warp else 0.0,
        bool(accumulate_grad_in_fp32),
    )


def check_linear_options(use_l2warp: bool, l2_penalty_factor: float, process_group) -> None:
    if process_group is not None:
        raise ValueError("process_group (a vocabulary split across tensor-parallel ranks) is not supported by fla's "
                         "fused linear cross entropy: pass None and the full [V, D] weight")
    if use_l2warp and (not isinstance(l2_penalty_factor, (int, float)) or l2_penalty_factor < 0):
        raise ValueError(f"l2_penalty_factor must be a number >= 0 (got {l2_penalty_factor!r})")


def fused_linear_cross_entropy_loss(
    x: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    logit_scale: float = 1.0,
    logit_softcapping: float | None = None,
    num_chunks: int = 8,
    reduction: str = "mean",
    use_l2warp: bool = False,
    l2_penalty_factor: float = 1e-4,
    accumulate_grad_in_fp32: bool = True,
    process_group=None,
) -> torch.Tensor:
    """The peer library's functional form, argument for argument: `fused_linear_cross_entropy` with the peer's
    positional order (x [N, D], target [N], weight [V, D], bias [V]) and its `num_chunks=8` (at most V / D chunks,
    so that a chunk of logits is no smaller than x). Returns the float32 scalar loss."""
    if not isinstance(num_chunks, int) or num_chunks < 1:
        raise ValueError(f"num_chunks must be an int >= 1 (got {num_chunks!r})")
    if isinstance(x, torch.Tensor) and isinstance(weight, torch.Tensor) and x.dim() >= 1 and weight.dim() == 2:
        num_chunks = max(1, min(num_chunks, -(-weight.shape[0] // max(1, x.shape[-1]))))
    return fused_linear_cross_entropy(
        x, target, weight, bias, ignore_index, label_smoothing, reduction, None, num_chunks,
        logit_scale=logit_scale, logit_softcapping=logit_softcapping, use_l2warp=use_l2warp,
        l2_penalty_factor=l2_penalty_factor, accumulate_grad_in_fp32=accumulate_grad_in_fp32,
        process_group=process_group)


class FusedLinearCrossEntropyLoss(nn.Module):
    """`forward(hidden, target, weight, bias=None)` -> the cross entropy of `hidden @ weight.T + bias`, computed in
    chunks of tokens (see `fused_linear_cross_entropy`). Positional arguments in the peer library's order;
    num_chunks=None sizes the chunks by memory instead of the peer's fixed 8 (the result does not depend on it)."""

    def __init__(
        self, ignore_index: int = -100, label_smoothing: float = 0.0, logit_scale: float = 1.0,
        logit_softcapping: float | None = None, num_chunks: int | None = None, reduction: str = "mean",
        use_l2warp: bool = False, l2_penalty_factor: float = 1e-4, accumulate_grad_in_fp32: bool = True,
        process_group=None, *, chunk_size: int | None = None,
    ):
        super().__init__()
        check_loss_options(label_smoothing, reduction, REDUCTIONS)
        check_logit_options(logit_scale, logit_softcapping, 0.0)
        check_linear_options(use_l2warp, l2_penalty_factor, process_group)
        self.ignore_index, self.label_smoothing, self.reduction = ignore_index, label_smoothing, reduction
        self.logit_scale, self.logit_softcapping = logit_scale, logit_softcapping
        self.chunk_size, self.num_chunks = chunk_size, num_chunks
        self.use_l2warp, self.l2_penalty_factor = use_l2warp, l2_penalty_factor
        self.accumulate_grad_in_fp32, self.process_group = accumulate_grad_in_fp32, process_group

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}, label_smoothing={self.label_smoothing}, reduction={self.reduction!r}"

    def forward(self, x, target, weight, bias=None):
        """x: [N, D] hidden states; target: [N]; weight: [V, D]; bias: [V] or None."""
        return fused_linear_cross_entropy(
            x, target, weight, bias, self.ignore_index, self.label_smoothing, self.reduction,
            self.chunk_size, self.num_chunks, logit_scale=self.logit_scale, logit_softcapping=self.logit_softcapping,
            use_l2warp=self.use_l2warp, l2_penalty_factor=self.l2_penalty_factor,
            accumulate_grad_in_fp32=self.accumulate_grad_in_fp32,
        )


def fused_linear_cross_entropy_fwd(
    x: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    logit_scale: float = 1.0,
    logit_softcapping: float | None = None,
    num_chunks: int = 8,
    reduction: str = "mean",
    use_l2warp: bool = False,
    l2_penalty_factor: float = 1e-4,
    accumulate_grad_in_fp32: bool = True,
    process_group=None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The peer library's two-step form: (loss, dx, dw, db), the loss of `fused_linear_cross_entropy_loss` (same
    arguments) and its gradients for an output gradient of 1 (db None without a bias); scale them by the real
    output gradient with `fused_linear_cross_entropy_bwd`. Runs our fused forward, which computes them together."""
    leaves = [t.detach().requires_grad_() for t in (x, weight) + ((bias,) if bias is not None else ())]
    with torch.enable_grad():
        loss = fused_linear_cross_entropy_loss(
            leaves[0], target, leaves[1], leaves[2] if bias is not None else None, ignore_index, label_smoothing,
            logit_scale, logit_softcapping, num_chunks, reduction, use_l2warp, l2_penalty_factor,
            accumulate_grad_in_fp32, process_group)
        grads = torch.autograd.grad(loss, leaves)
    return loss.detach(), grads[0], grads[1], grads[2] if bias is not None else None


def fused_linear_cross_entropy_bwd(
    do: torch.Tensor, dx: torch.Tensor, dw: torch.Tensor | None, db: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(dx, dw, db) of `fused_linear_cross_entropy_fwd` scaled by the output gradient `do` (a scalar), in place."""
    return tuple(None if t is None else t.mul_(do.to(t.dtype)) for t in (dx, dw, db))


fused_linear_cross_entropy_forward = fused_linear_cross_entropy_fwd  # the peer's older names
fused_linear_cross_entropy_backward = fused_linear_cross_entropy_bwd
