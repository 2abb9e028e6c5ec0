"""L2Warp (the peer library's `fla.modules.l2warp`, from RWKV's trainers): a loss wrapper that leaves the loss value
unchanged and adds a gradient to each row's largest logit, pulling it down in proportion to its size, so bf16 logits
do not drift large. `FusedLinearCrossEntropyLoss(use_l2warp=True)` applies the same gradient inside its chunks
without materializing the logits; this is the standalone form for code that does have them."""
from __future__ import annotations

import torch

__all__ = ["L2Wrap", "l2_warp"]


class L2Wrap(torch.autograd.Function):
    """`L2Wrap.apply(loss, logits, l2_penalty_factor=1e-4)` -> loss (the same value).

    Backward: d loss passes through; d logits is zero except at each row's argmax over the last dim, where it is
    d loss * max * l2_penalty_factor / (shape[0] * shape[1]): B * T for the documented logits [B, T, V]. For 2-D
    logits [N, V] that divisor is N * V, not N; it is kept so, as in the peer and in RWKV's trainers where the rule
    comes from, so the same call gives the same gradient (pass [1, N, V] to divide by N)."""

    @staticmethod
    def forward(ctx, loss: torch.Tensor, logits: torch.Tensor, l2_penalty_factor: float = 1e-4) -> torch.Tensor:
        if logits.dim() < 2:
            raise ValueError(f"logits must be [..., V] with at least one leading dim (got {tuple(logits.shape)})")
        peak, where = logits.detach().max(-1, keepdim=True)
        divisor = logits.shape[0] * logits.shape[1]
        # only the scaled maxima and their positions are kept, not the logits
        ctx.save_for_backward(peak * (l2_penalty_factor / max(divisor, 1)), where)
        ctx.shape = logits.shape
        return loss

    @staticmethod
    def backward(ctx, dloss: torch.Tensor):
        scaled, where = ctx.saved_tensors
        dlogits = scaled.new_zeros(ctx.shape)
        dlogits.scatter_(-1, where, (scaled * dloss).to(scaled.dtype))
        return dloss, dlogits, None


l2_warp = L2Wrap.apply
