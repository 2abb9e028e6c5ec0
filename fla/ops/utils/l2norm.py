"""L2 normalization over the last dim: `y = x / sqrt(sum(x^2) + eps)`, forward and backward.

Shared by the delta-rule families (`use_qk_l2norm_in_kernel=True` normalizes q and k with it) and by `fla.modules`.
Backward: with r = 1 / sqrt(sum(x^2) + eps) and y = x r, `dx = r * (dy - y * sum(dy * y))`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fla.ops.utils.dispatch import autotune, dispatch

_CONFIGS = [triton.Config({"BR": BR}, num_warps=w) for BR in (16, 32, 64) for w in (4, 8, 2)]


@autotune(_CONFIGS, key=["D"])
@triton.jit
def l2norm_fwd_kernel(x, y, rstd, eps, N, D: tl.constexpr, BD: tl.constexpr, BR: tl.constexpr):
    # x, y: [N, D] contiguous rows; rstd: [N] float32 (saved for the backward).
    o_r = tl.program_id(0) * BR + tl.arange(0, BR)
    o_d = tl.arange(0, BD)
    m_r = o_r < N
    m = m_r[:, None] & (o_d < D)[None, :]
    offs = o_r[:, None].to(tl.int64) * D + o_d[None, :]
    b_x = tl.load(x + offs, mask=m, other=0.).to(tl.float32)
    b_r = 1. / tl.sqrt(tl.sum(b_x * b_x, axis=1) + eps)
    tl.store(y + offs, (b_x * b_r[:, None]).to(y.dtype.element_ty), mask=m)
    tl.store(rstd + o_r, b_r, mask=m_r)


@autotune(_CONFIGS, key=["D"])
@triton.jit
def l2norm_bwd_kernel(x, rstd, dy, dx, N, D: tl.constexpr, BD: tl.constexpr, BR: tl.constexpr):
    o_r = tl.program_id(0) * BR + tl.arange(0, BR)
    o_d = tl.arange(0, BD)
    m_r = o_r < N
    m = m_r[:, None] & (o_d < D)[None, :]
    offs = o_r[:, None].to(tl.int64) * D + o_d[None, :]
    b_x = tl.load(x + offs, mask=m, other=0.).to(tl.float32)
    b_dy = tl.load(dy + offs, mask=m, other=0.).to(tl.float32)
    b_r = tl.load(rstd + o_r, mask=m_r, other=0.)
    b_y = b_x * b_r[:, None]
    b_dx = b_r[:, None] * (b_dy - b_y * tl.sum(b_dy * b_y, axis=1)[:, None])
    tl.store(dx + offs, b_dx.to(dx.dtype.element_ty), mask=m)


def _l2norm_fwd_triton(x, eps, output_dtype=None):
    D = x.shape[-1]
    x2 = x.reshape(-1, D)
    N = x2.shape[0]
    y = torch.empty_like(x2, dtype=output_dtype or x.dtype)
    rstd = torch.empty(N, device=x.device, dtype=torch.float32)
    if N > 0:
        l2norm_fwd_kernel[lambda meta: (triton.cdiv(N, meta["BR"]),)](
            x2, y, rstd, eps, N, D=D, BD=triton.next_power_of_2(D))
    return y.view_as(x), rstd


def _l2norm_bwd_triton(x, rstd, dy):
    D = x.shape[-1]
    x2, dy2 = x.reshape(-1, D), dy.reshape(-1, D).contiguous()
    N = x2.shape[0]
    dx = torch.empty_like(x2)
    if N > 0:
        l2norm_bwd_kernel[lambda meta: (triton.cdiv(N, meta["BR"]),)](
            x2, rstd, dy2, dx, N, D=D, BD=triton.next_power_of_2(D))
    return dx.view_as(x)


def _l2norm_fwd_torch(x, eps, output_dtype=None):
    xf = x.float()
    rstd = torch.rsqrt(xf.pow(2).sum(-1) + eps)
    return (xf * rstd[..., None]).to(output_dtype or x.dtype), rstd.reshape(-1)


def _l2norm_bwd_torch(x, rstd, dy):
    y = x.float() * rstd.view(*x.shape[:-1], 1)
    dyf = dy.float()
    dx = rstd.view(*x.shape[:-1], 1) * (dyf - y * (dyf * y).sum(-1, keepdim=True))
    return dx.to(x.dtype)


l2norm_fwd = dispatch(_l2norm_fwd_triton, _l2norm_fwd_torch)
l2norm_bwd = dispatch(_l2norm_bwd_triton, _l2norm_bwd_torch)


class L2NormFunction(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, eps, output_dtype=None):
        x = x.contiguous()
        y, rstd = l2norm_fwd(x, eps, output_dtype)
        ctx.save_for_backward(x, rstd)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, rstd = ctx.saved_tensors
        return l2norm_bwd(x, rstd, dy), None, None  # dx in x's dtype, whatever the output's


def l2_norm(x: torch.Tensor, eps: float = 1e-6, output_dtype: torch.dtype | None = None) -> torch.Tensor:
    """`x / sqrt(sum(x^2, -1) + eps)`, differentiable.

    Args:
        x: [..., D] any float dtype (computed in float32), D <= 65536
        output_dtype: the result's dtype (None: x's), written from the float32 result (not a cast of a rounded one)
    Returns:
        [..., D] in output_dtype or x's dtype; the gradient comes back in x's dtype
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"x must be a floating-point torch.Tensor (got {getattr(x, 'dtype', type(x).__name__)})")
    if output_dtype is not None and (not isinstance(output_dtype, torch.dtype) or not output_dtype.is_floating_point):
        raise ValueError(f"output_dtype must be None or a floating torch.dtype (got {output_dtype!r})")
    return L2NormFunction.apply(x, eps, output_dtype)
