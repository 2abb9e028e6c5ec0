"""The gated MLP of the decoder blocks (SwiGLU): `down(swish(gate(x)) * up(x))`.

The activation-times-up product is one elementwise Triton kernel (forward writes y = silu(g) * u; backward
recomputes silu from g instead of saving it), so that only the two projections are kept for backward.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
import triton
import triton.language as tl

from fla.ops.utils.dispatch import dispatch

ACTIVATIONS = ("swish", "silu")
BLOCK = 1024


@triton.jit
def swiglu_fwd_kernel(g, u, y, n, BLOCK: tl.constexpr):
    # grid: (cdiv(n, BLOCK),); g/u/y flat contiguous, n elements.
    o = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = o < n
    b_g = tl.load(g + o, mask=m, other=0.).to(tl.float32)
    b_u = tl.load(u + o, mask=m, other=0.).to(tl.float32)
    tl.store(y + o, (b_g * tl.sigmoid(b_g) * b_u).to(y.dtype.element_ty), mask=m)


@triton.jit
def swiglu_bwd_kernel(g, u, dy, dg, du, n, BLOCK: tl.constexpr):
    o = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = o < n
    b_g = tl.load(g + o, mask=m, other=0.).to(tl.float32)
    b_u = tl.load(u + o, mask=m, other=0.).to(tl.float32)
    b_dy = tl.load(dy + o, mask=m, other=0.).to(tl.float32)
    b_s = tl.sigmoid(b_g)
    tl.store(dg + o, (b_dy * b_u * b_s * (1 + b_g * (1 - b_s))).to(dg.dtype.element_ty), mask=m)
    tl.store(du + o, (b_dy * b_g * b_s).to(du.dtype.element_ty), mask=m)


class SwiGLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, g, u):
        g, u = g.contiguous(), u.contiguous()
        y = torch.empty_like(g)
        n = g.numel()
        if n > 0:
            swiglu_fwd_kernel[(triton.cdiv(n, BLOCK),)](g, u, y, n, BLOCK=BLOCK)
        ctx.save_for_backward(g, u)
        return y

    @staticmethod
    def backward(ctx, dy):
        g, u = ctx.saved_tensors
        dg, du = torch.empty_like(g), torch.empty_like(u)
        n = g.numel()
        if n > 0:
            swiglu_bwd_kernel[(triton.cdiv(n, BLOCK),)](g, u, dy.contiguous(), dg, du, n, BLOCK=BLOCK)
        return dg, du


def _swiglu_triton(g, u):
    return SwiGLUFunction.apply(g, u)


def _swiglu_torch(g, u):
    return (F.silu(g.float()) * u.float()).to(g.dtype)


_swiglu = dispatch(_swiglu_triton, _swiglu_torch)


def swiglu(g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """`silu(g) * u` elementwise (float32 inside); g and u of the same shape and dtype."""
    if not isinstance(g, torch.Tensor) or not isinstance(u, torch.Tensor) or g.shape != u.shape or g.dtype != u.dtype:
        raise ValueError(
            f"swiglu needs two tensors of the same shape and dtype (got {getattr(g, 'shape', g)} "
            f"{getattr(g, 'dtype', '')} and {getattr(u, 'shape', u)} {getattr(u, 'dtype', '')})"
        )
    return _swiglu(g, u)


def default_intermediate_size(hidden_size: int, hidden_ratio: float = 4) -> int:
    """2/3 of hidden_ratio * hidden_size (the SwiGLU convention: same parameters as a plain MLP), rounded up to 256."""
    size = int(hidden_size * hidden_ratio * 2 / 3)
    return 256 * ((size + 255) // 256)


class GatedMLP(nn.Module):
    """`forward(x [..., hidden_size]) -> down_proj(swish(gate_proj(x)) * up_proj(x))`. The positional order is the
    peer library's (hidden_size, hidden_ratio, intermediate_size, hidden_act); the rest is keyword-only."""

    def __init__(
        self, hidden_size: int, hidden_ratio: float | None = None, intermediate_size: int | None = None,
        hidden_act: str = "swish", *, bias: bool = False, device=None, dtype=None,
    ):
        super().__init__()
        if hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act must be one of {ACTIVATIONS} (got {hidden_act!r}); SwiGLU is what is fused")
        if intermediate_size is None:
            intermediate_size = default_intermediate_size(hidden_size, 4 if hidden_ratio is None else hidden_ratio)
        self.hidden_size, self.intermediate_size, self.hidden_act = hidden_size, intermediate_size, hidden_act
        kw = dict(bias=bias, device=device, dtype=dtype)
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, **kw)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, **kw)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, **kw)

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x)))
