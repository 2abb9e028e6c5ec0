"""Distillation loss KL(teacher || student) over the vocabulary, from the hidden states and both LM heads, in chunks
of tokens so that the full [N, V] logits never exist.

Per row n, with student logits s = x_n @ W.T and teacher logits t = x'_n @ W'.T (the teacher's hidden size may differ):
    loss_n = sum_v p_t (log p_t - log p_s),        d loss_n / d s = p_s - p_t        (p = softmax)
which is `F.kl_div(log_softmax(s), softmax(t), reduction=...)`; "batchmean" divides the sum over rows by N, "sum"
does not. The teacher is frozen: only x and W get gradients.

Forward walks `chunk_size` rows at a time (the chunking of `fla.modules.fused_linear_cross_entropy`): the chunk's
two logit blocks are computed, one Triton program per row makes an online log-sum-exp pass over both and a second
pass that writes the row's loss and, over the student logits, their gradient; then dx_c = ds @ W and
dW += ds.T @ x_c (float32 accumulator by default). Backward only scales the stored dx, dW by the incoming gradient.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
import triton
import triton.language as tl

from fla.modules.fused_linear_cross_entropy import _accumulate, default_chunk_size
from fla.ops.utils.dispatch import dispatch

REDUCTIONS = ("batchmean", "sum")


@triton.jit
def kl_div_fwd_bwd_kernel(logits, target_logits, loss, grad_scale, V, BV: tl.constexpr, STORE_GRAD: tl.constexpr):
    # grid: (N,); logits and target_logits are [N, V] row-major (row stride V); loss [N] float32, each row's KL.
    # With STORE_GRAD the student logits are overwritten by grad_scale * (p_s - p_t).
    i_n = tl.program_id(0).to(tl.int64)
    p_s, p_t = logits + i_n * V, target_logits + i_n * V
    # pass 1: running maxima and sums of exp(x - max), student and teacher side by side
    b_ms, b_mt = float("-inf"), float("-inf")
    b_ss, b_st = 0., 0.
    for v0 in range(0, V, BV):
        o_v = v0 + tl.arange(0, BV)
        m_v = o_v < V
        b_s = tl.load(p_s + o_v, mask=m_v, other=float("-inf")).to(tl.float32)
        b_t = tl.load(p_t + o_v, mask=m_v, other=float("-inf")).to(tl.float32)
        b_m = tl.maximum(b_ms, tl.max(b_s, axis=0))
        b_ss = b_ss * tl.exp(b_ms - b_m) + tl.sum(tl.exp(b_s - b_m), axis=0)
        b_ms = b_m
        b_m = tl.maximum(b_mt, tl.max(b_t, axis=0))
        b_st = b_st * tl.exp(b_mt - b_m) + tl.sum(tl.exp(b_t - b_m), axis=0)
        b_mt = b_m
    b_lse_s, b_lse_t = b_ms + tl.log(b_ss), b_mt + tl.log(b_st)
    # pass 2: the row's KL and the gradient (read before it is written over the same buffer)
    b_scale = tl.load(grad_scale)
    b_loss = 0.
    for v0 in range(0, V, BV):
        o_v = v0 + tl.arange(0, BV)
        m_v = o_v < V
        b_ls = tl.load(p_s + o_v, mask=m_v, other=0.).to(tl.float32) - b_lse_s
        b_lt = tl.load(p_t + o_v, mask=m_v, other=0.).to(tl.float32) - b_lse_t
        b_pt = tl.exp(b_lt)
        b_loss += tl.sum(tl.where(m_v, b_pt * (b_lt - b_ls), 0.), axis=0)
        if STORE_GRAD:
            tl.store(p_s + o_v, ((tl.exp(b_ls) - b_pt) * b_scale).to(p_s.dtype.element_ty), mask=m_v)
    tl.store(loss + i_n, b_loss)


def _kl_triton(logits, target_logits, grad_scale, dlogits):
    N, V = logits.shape
    loss = torch.empty(N, dtype=torch.float32, device=logits.device)
    if N == 0:
        return loss
    if dlogits is not None and dlogits.data_ptr() != logits.data_ptr():
        raise ValueError("the Triton KL kernel writes the gradient over the student logits: pass dlogits=logits")
    BV = min(triton.next_power_of_2(V), 4096)
    kl_div_fwd_bwd_kernel[(N,)](logits, target_logits, loss, grad_scale, V, BV=BV, STORE_GRAD=dlogits is not None,
                                num_warps=8 if BV >= 2048 else 4)
    return loss


def _kl_torch(logits, target_logits, grad_scale, dlogits):
    ls = torch.log_softmax(logits.float(), -1)
    lt = torch.log_softmax(target_logits.float(), -1)
    pt = lt.exp()
    loss = (pt * (lt - ls)).sum(-1)
    if dlogits is not None:
        dlogits.copy_(ls.exp_().sub_(pt).mul_(grad_scale))
    return loss


kl_div_loss_and_grad = dispatch(_kl_triton, _kl_torch)
kl_div_loss_and_grad.__doc__ = """Per-row KL(softmax(target_logits) || softmax(logits)) and (optionally) its gradient.

Args:
    logits, target_logits: [N, V] contiguous student and teacher logits
    grad_scale: [1] float32 tensor multiplying the gradient (1 / N for "batchmean" over N rows in all)
    dlogits: None, or `logits` itself: the gradient grad_scale * (p_s - p_t) is written over it
Returns:
    loss: [N] float32, unscaled
"""


def fused_kl_div_fwd(
    x: torch.Tensor,
    target_x: torch.Tensor,
    weight: torch.Tensor,
    target_weight: torch.Tensor,
    reduction: str = "batchmean",
    accumulate_grad_in_fp32: bool = True,
    use_dx: bool = True,
    use_dw: bool = True,
    *,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The chunked forward (module docstring), with the gradients for an incoming gradient of 1.

    Args:
        x: [N, D] student hidden states; weight: [V, D] the student head
        target_x: [N, Dt] teacher hidden states; target_weight: [V, Dt] the teacher head
        use_dx, use_dw: compute dx / dW
        chunk_size: rows per chunk (default: a chunk of logits about as large as x)
    Returns:
        loss: float32 scalar; dx: [N, D] in x's dtype or None; dW: [V, D] float32 (accumulate_grad_in_fp32) or in
        weight's dtype, or None
    """
    N, D = x.shape
    V = weight.shape[0]
    chunk_size = chunk_size or default_chunk_size(N, D, V)
    grad_scale = torch.full((1,), 1.0 / max(N, 1) if reduction == "batchmean" else 1.0, dtype=torch.float32,
                            device=x.device)
    dx = torch.empty_like(x) if use_dx else None
    dw = torch.zeros(V, D, dtype=torch.float32 if accumulate_grad_in_fp32 else weight.dtype,
                     device=x.device) if use_dw else None
    total = torch.zeros((), dtype=torch.float32, device=x.device)
    for start in range(0, N, chunk_size):
        x_c = x[start:start + chunk_size]
        logits = F.linear(x_c, weight).contiguous()
        target_logits = F.linear(target_x[start:start + chunk_size], target_weight).contiguous()
        total += kl_div_loss_and_grad(logits, target_logits, grad_scale, logits if use_dx or use_dw else None).sum()
        if use_dx:
            torch.mm(logits, weight, out=dx[start:start + chunk_size])
        if use_dw:
            _accumulate(dw, logits.t(), x_c)
        del logits, target_logits
    return (total / N if reduction == "batchmean" else total), dx, dw


def fused_kl_div_bwd(do: torch.Tensor, dx: torch.Tensor | None, dw: torch.Tensor | None):
    """Scale the gradients stored by `fused_kl_div_fwd` by the incoming scalar gradient `do`, in place."""
    for grad in (dx, dw):
        if grad is not None:
            grad.mul_(do.to(grad.dtype))
    return dx, dw


fused_kl_div_forward, fused_kl_div_backward = fused_kl_div_fwd, fused_kl_div_bwd  # the peer's older names


class FusedKLDivLossFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, target_x, weight, target_weight, reduction, accumulate_grad_in_fp32, grad_enabled,
                chunk_size=None):
        loss, dx, dw = fused_kl_div_fwd(
            x, target_x, weight, target_weight, reduction, accumulate_grad_in_fp32,
            use_dx=grad_enabled and ctx.needs_input_grad[0], use_dw=grad_enabled and ctx.needs_input_grad[2],
            chunk_size=chunk_size,
        )
        ctx.save_for_backward(dx, dw)
        ctx.w_dtype = weight.dtype
        return loss

    @staticmethod
    def backward(ctx, do):
        dx, dw = ctx.saved_tensors
        if getattr(ctx, "used", False):
            raise RuntimeError("fused KL divergence scales its saved gradients in place: backward runs once")
        ctx.used = True
        dx, dw = fused_kl_div_bwd(do, dx, dw)
        return dx, None, dw.to(ctx.w_dtype) if dw is not None else None, None, None, None, None, None


class FrozenTeacherError(ValueError, RuntimeError):
    """The teacher's tensors require gradients (a ValueError here; RuntimeError, as the peer raises, for code
    written for it)."""


def _check(x, target_x, weight, target_weight, reduction) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS} (got {reduction!r}); 'batchmean' is the KL "
                         "divergence per row")
    for name, t, like in (("x", x, "[N, D]"), ("target_x", target_x, "[N, Dt]"), ("weight", weight, "[V, D]"),
                          ("target_weight", target_weight, "[V, Dt]")):
        if not isinstance(t, torch.Tensor) or t.dim() != 2 or not t.is_floating_point():
            got = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a floating-point {like} tensor (got {got}); flatten the leading dims")
    if target_x.requires_grad or target_weight.requires_grad:
        raise FrozenTeacherError(
            "FusedKLDivLoss treats target_x and target_weight as a frozen teacher and computes no gradient for them: "
            "detach them (or use torch.nn.functional.kl_div if the teacher must be trained)")
    if target_x.shape[0] != x.shape[0]:
        raise ValueError(f"target_x must have one row per row of x: {x.shape[0]} (got {target_x.shape[0]})")
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"weight must be [V, {x.shape[1]}] (D = the last dim of x), got {list(weight.shape)}")
    if target_weight.shape != (weight.shape[0], target_x.shape[1]):
        raise ValueError(f"target_weight must be [V, Dt] = [{weight.shape[0]}, {target_x.shape[1]}] (the student's "
                         f"vocabulary, the last dim of target_x), got {list(target_weight.shape)}")
    for a, b, an, bn in ((x, weight, "x", "weight"), (target_x, target_weight, "target_x", "target_weight")):
        if a.dtype != b.dtype:
            raise ValueError(f"{bn} dtype {b.dtype} differs from {an} dtype {a.dtype}; cast one of them")


def fused_kl_div_loss(
    x: torch.Tensor,
    target_x: torch.Tensor,
    weight: torch.Tensor,
    target_weight: torch.Tensor,
    reduction: str = "batchmean",
    accumulate_grad_in_fp32: bool = True,
    *,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """KL(softmax(target_x @ target_weight.T) || softmax(x @ weight.T)) without the full logits (module docstring).
    Argument order and defaults are the peer library's.

    Args:
        x: [N, D] student hidden states; weight: [V, D] student head
        target_x: [N, Dt], target_weight: [V, Dt]: the frozen teacher (must not require gradients)
        reduction: "batchmean" (sum over rows / N) or "sum"
        accumulate_grad_in_fp32: sum the weight gradient over chunks in float32, cast to weight's dtype at the end
        chunk_size: rows per chunk (keyword only; default: a chunk of logits about as large as x)
    Returns:
        the loss, a float32 scalar. Backward must run only once (the saved gradients are scaled in place).
    """
    _check(x, target_x, weight, target_weight, reduction)
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be an int >= 1 or None (got {chunk_size!r})")
    return FusedKLDivLossFunction.apply(x.contiguous(), target_x.contiguous(), weight.contiguous(),
                                        target_weight.contiguous(), reduction, bool(accumulate_grad_in_fp32),
                                        torch.is_grad_enabled(), chunk_size)


class FusedKLDivLoss(nn.Module):
    """`forward(x, target_x, weight, target_weight)` -> `fused_kl_div_loss` (the teacher frozen). Constructor
    arguments as the peer's; `chunk_size` (keyword only) sets the rows per chunk."""

    def __init__(self, reduction: str = "batchmean", accumulate_grad_in_fp32: bool = True, *,
                 chunk_size: int | None = None):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS} (got {reduction!r})")
        self.reduction, self.accumulate_grad_in_fp32, self.chunk_size = reduction, accumulate_grad_in_fp32, chunk_size

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}, accumulate_grad_in_fp32={self.accumulate_grad_in_fp32}"

    def forward(self, x: torch.Tensor, target_x: torch.Tensor, weight: torch.Tensor,
                target_weight: torch.Tensor) -> torch.Tensor:
        """x: [N, D]; target_x: [N, Dt]; weight: [V, D]; target_weight: [V, Dt] -> float32 scalar loss."""
        return fused_kl_div_loss(x, target_x, weight, target_weight, self.reduction, self.accumulate_grad_in_fp32,
                                 chunk_size=self.chunk_size)
