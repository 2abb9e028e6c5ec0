"""RMSNorm with a fused residual add, and the gated RMSNorm of gated linear-attention outputs.

`r = x + residual` (when a residual is given), `y = r / sqrt(mean(r^2) + eps) * weight`, and for the gated form
`y *= act(g)` with act = swish (g * sigmoid(g)) or sigmoid. One Triton kernel per direction works on a block of rows;
the statistics are float32. The prenorm form also returns `r`, the residual stream for the next block.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import triton
import triton.language as tl

from fla.ops.utils.dispatch import dispatch

ACTIVATIONS = ("swish", "silu", "sigmoid")


@triton.jit
def _gate(b_g, ACT_SIGMOID: tl.constexpr):
    if ACT_SIGMOID:
        return tl.sigmoid(b_g)
    return b_g * tl.sigmoid(b_g)


@triton.jit
def _gate_grad(b_g, ACT_SIGMOID: tl.constexpr):
    b_s = tl.sigmoid(b_g)
    if ACT_SIGMOID:
        return b_s * (1 - b_s)
    return b_s * (1 + b_g * (1 - b_s))


@triton.jit
def rms_norm_fwd_kernel(
    x, residual, weight, g, y, r_out, rstd, eps, M, N,
    BM: tl.constexpr, BN: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr, STORE_R: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_GATE: tl.constexpr,
    ACT_SIGMOID: tl.constexpr,
):
    # grid: (cdiv(M, BM),); every tensor is [M, N] row-major (row stride N); rstd is [M] float32.
    o_m = tl.program_id(0) * BM + tl.arange(0, BM)
    o_n = tl.arange(0, BN)
    m_m, m_n = o_m < M, o_n < N
    m_x = m_m[:, None] & m_n[None, :]
    offs = o_m.to(tl.int64)[:, None] * N + o_n[None, :]
    b_r = tl.load(x + offs, mask=m_x, other=0.).to(tl.float32)
    if HAS_RESIDUAL:
        b_r += tl.load(residual + offs, mask=m_x, other=0.).to(tl.float32)
    if STORE_R:
        tl.store(r_out + offs, b_r.to(r_out.dtype.element_ty), mask=m_x)
        # Normalize what was stored, so that forward and backward see the same (possibly rounded) r.
        b_r = tl.load(r_out + offs, mask=m_x, other=0.).to(tl.float32)
    b_rstd = 1 / tl.sqrt(tl.sum(b_r * b_r, axis=1) / N + eps)
    tl.store(rstd + o_m, b_rstd, mask=m_m)
    b_y = b_r * b_rstd[:, None]
    if HAS_WEIGHT:
        b_y *= tl.load(weight + o_n, mask=m_n, other=0.).to(tl.float32)[None, :]
    if HAS_GATE:
        b_y *= _gate(tl.load(g + offs, mask=m_x, other=0.).to(tl.float32), ACT_SIGMOID)
    tl.store(y + offs, b_y.to(y.dtype.element_ty), mask=m_x)


@triton.jit
def rms_norm_bwd_kernel(
    dy, dr_in, r, weight, g, rstd, dr, dg, dw_partial, M, N, NB,
    BM: tl.constexpr, BN: tl.constexpr,
    HAS_DR_IN: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_GATE: tl.constexpr, ACT_SIGMOID: tl.constexpr,
):
    # grid: (G,) programs, each walking row blocks i_p, i_p + G, ... of the NB = cdiv(M, BM) blocks and keeping its
    # share of dweight in registers; [M, N] row-major tensors; dw_partial is [G, N] float32 (summed by the launcher).
    i_p = tl.program_id(0)
    o_n = tl.arange(0, BN)
    m_n = o_n < N
    if HAS_WEIGHT:
        b_w = tl.load(weight + o_n, mask=m_n, other=0.).to(tl.float32)[None, :]
        b_dw = tl.zeros([BN], dtype=tl.float32)
    for i_m in range(i_p, NB, tl.num_programs(0)):
        o_m = i_m * BM + tl.arange(0, BM)
        m_m = o_m < M
        m_x = m_m[:, None] & m_n[None, :]
        offs = o_m.to(tl.int64)[:, None] * N + o_n[None, :]
        b_rstd = tl.load(rstd + o_m, mask=m_m, other=0.)
        b_xhat = tl.load(r + offs, mask=m_x, other=0.).to(tl.float32) * b_rstd[:, None]
        b_dy = tl.load(dy + offs, mask=m_x, other=0.).to(tl.float32)
        if HAS_GATE:
            b_g = tl.load(g + offs, mask=m_x, other=0.).to(tl.float32)
            b_yn = b_xhat
            if HAS_WEIGHT:
                b_yn = b_xhat * b_w
            tl.store(dg + offs, (b_dy * b_yn * _gate_grad(b_g, ACT_SIGMOID)).to(dg.dtype.element_ty), mask=m_x)
            b_dy = b_dy * _gate(b_g, ACT_SIGMOID)
        if HAS_WEIGHT:
            b_dw += tl.sum(b_dy * b_xhat, axis=0)
            b_dy = b_dy * b_w
        # d r = rstd * (dxhat - xhat * mean(dxhat * xhat)), plus the gradient of the returned r (prenorm).
        b_c = tl.sum(b_dy * b_xhat, axis=1) / N
        b_dr = (b_dy - b_xhat * b_c[:, None]) * b_rstd[:, None]
        if HAS_DR_IN:
            b_dr += tl.load(dr_in + offs, mask=m_x, other=0.).to(tl.float32)
        tl.store(dr + offs, b_dr.to(dr.dtype.element_ty), mask=m_x)
    if HAS_WEIGHT:
        tl.store(dw_partial + i_p * N + o_n, b_dw, mask=m_n)


def _blocks(M: int, N: int) -> tuple[int, int, int, int]:
    """(rows per block BM, padded row BN, row blocks NB, warps)."""
    BN = triton.next_power_of_2(N)
    if BN > 65536:
        raise ValueError(f"the normalized size must be at most 65536 (got {N}); one block must hold a row")
    BM = max(1, min(16, 4096 // BN))
    return BM, BN, triton.cdiv(M, BM), 8 if BN >= 4096 else 4


def _backward_programs(num_blocks: int, device: torch.device) -> int:
    """Enough programs to fill the GPU a few times over; each sums its share of dweight, so fewer is less to add."""
    if device.type == "cuda":
        return max(1, min(num_blocks, 4 * torch.cuda.get_device_properties(device).multi_processor_count))
    return max(1, min(num_blocks, 8))


def _r_dtype(x: torch.Tensor, residual: torch.Tensor | None, residual_in_fp32: bool) -> torch.dtype:
    if residual_in_fp32:
        return torch.float32
    return x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)


class RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, g, residual, weight, eps, prenorm, residual_in_fp32, activation):
        shape, N = x.shape, x.shape[-1]
        x2 = x.reshape(-1, N).contiguous()
        g2 = g.reshape(-1, N).contiguous() if g is not None else None
        res2 = residual.reshape(-1, N).contiguous() if residual is not None else None
        M = x2.shape[0]
        r_dtype = _r_dtype(x, residual, residual_in_fp32)
        store_r = residual is not None
        y = torch.empty_like(x2)
        r = torch.empty(M, N, dtype=r_dtype, device=x.device) if store_r else x2
        rstd = torch.empty(M, dtype=torch.float32, device=x.device)
        BM, BN, NB, warps = _blocks(M, N)
        if M > 0:
            rms_norm_fwd_kernel[(NB,)](
                x2, res2, weight, g2, y, r, rstd, eps, M, N, BM=BM, BN=BN, num_warps=warps,
                HAS_RESIDUAL=residual is not None, STORE_R=store_r, HAS_WEIGHT=weight is not None,
                HAS_GATE=g is not None, ACT_SIGMOID=activation == "sigmoid",
            )
        ctx.save_for_backward(r, g2, weight, rstd)
        ctx.meta = (shape, eps, activation, x.dtype, None if residual is None else residual.dtype)
        y = y.view(shape)
        return (y, r.view(shape)) if prenorm else y

    @staticmethod
    def backward(ctx, dy, dr_in=None):
        r, g2, weight, rstd = ctx.saved_tensors
        shape, eps, activation, x_dtype, res_dtype = ctx.meta
        M, N = r.shape
        dy = dy.reshape(M, N).contiguous()
        if dr_in is not None:
            dr_in = dr_in.reshape(M, N).contiguous()
        BM, BN, NB, warps = _blocks(M, N)
        grid = _backward_programs(NB, r.device)
        dr = torch.empty(M, N, dtype=r.dtype, device=r.device)
        dg = torch.empty_like(g2) if g2 is not None else None
        dw_partial = torch.empty(grid, N, dtype=torch.float32, device=r.device) if weight is not None else None
        if M > 0:
            rms_norm_bwd_kernel[(grid,)](
                dy, dr_in, r, weight, g2, rstd, dr, dg, dw_partial, M, N, NB, BM=BM, BN=BN, num_warps=warps,
                HAS_DR_IN=dr_in is not None, HAS_WEIGHT=weight is not None, HAS_GATE=g2 is not None,
                ACT_SIGMOID=activation == "sigmoid",
            )
        dw = None
        if weight is not None:
            dw = (dw_partial.sum(0) if M > 0 else torch.zeros(N, device=r.device)).to(weight.dtype)
        dx = dr.to(x_dtype).view(shape)
        dres = dr.to(res_dtype).view(shape) if res_dtype is not None else None
        dg = dg.view(shape) if dg is not None else None
        return dx, dg, dres, dw, None, None, None, None


def _rms_norm_triton(x, g, residual, weight, eps, prenorm, residual_in_fp32, activation):
    if residual is None:
        # r is x itself: let autograd route its gradient instead of returning an input from the Function.
        y = RMSNormFunction.apply(x, g, None, weight, eps, False, residual_in_fp32, activation)
        return (y, x.to(_r_dtype(x, None, residual_in_fp32))) if prenorm else y
    return RMSNormFunction.apply(x, g, residual, weight, eps, prenorm, residual_in_fp32, activation)


def _rms_norm_torch(x, g, residual, weight, eps, prenorm, residual_in_fp32, activation):
    r = x if residual is None else x + residual
    r = r.to(_r_dtype(x, residual, residual_in_fp32))
    rf = r.float()
    y = rf * torch.rsqrt(rf.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.float()
    if g is not None:
        gf = g.float()
        y = y * (torch.sigmoid(gf) if activation == "sigmoid" else gf * torch.sigmoid(gf))
    y = y.to(x.dtype)
    return (y, r) if prenorm else y


_rms_norm = dispatch(_rms_norm_triton, _rms_norm_torch)


def _check(x, g, residual, weight, activation):
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"x must be a floating-point torch.Tensor [..., N] (got {type(x).__name__})")
    N = x.shape[-1] if x.dim() > 0 else 0
    for name, t in (("g", g), ("residual", residual)):
        if t is not None and (not isinstance(t, torch.Tensor) or t.shape != x.shape):
            got = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a tensor with the shape of x {list(x.shape)} (got {got})")
    if weight is not None and weight.shape != (N,):
        raise ValueError(f"weight must have shape [{N}] (the last dim of x), got {list(weight.shape)}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS} (got {activation!r})")


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    eps: float = 1e-5,
    prenorm: bool = False,
    residual_in_fp32: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """RMS-normalize the last dim, after adding `residual` if given: y = (x + residual) / rms * weight + bias.
    Argument order and eps are the peer library's.

    Args:
        x: [..., N]; weight: [N] or None; bias: [N] or None; residual: [..., N] or None
        prenorm: also return r = x + residual (x when no residual), the stream the next block adds to
        residual_in_fp32: keep that r in float32
    Returns:
        y: [..., N] in x's dtype, or (y, r) when prenorm
    """
    _check(x, None, residual, weight, "swish")
    if bias is not None and (not isinstance(bias, torch.Tensor) or bias.shape != (x.shape[-1],)):
        raise ValueError(f"bias must be a tensor of shape [{x.shape[-1]}] (the last dim of x) or None")
    out = _rms_norm(x, None, residual, weight, eps, prenorm, residual_in_fp32, "swish")
    if bias is None:
        return out
    # the kernels have no bias term: one add after them (autograd gives its gradient)
    return (out[0] + bias, out[1]) if prenorm else out + bias


def rms_norm_gated(
    x: torch.Tensor,
    g: torch.Tensor,
    weight: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    eps: float = 1e-5,
    activation: str = "swish",
    prenorm: bool = False,
    residual_in_fp32: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """`rms_norm(x + residual) * weight * act(g)`, act = swish (alias silu) or sigmoid; shapes as in `rms_norm`,
    g: [..., N] like x."""
    _check(x, g, residual, weight, activation)
    return _rms_norm(x, g, residual, weight, eps, prenorm, residual_in_fp32, activation)


class RMSNorm(nn.Module):
    """RMSNorm over the last dim with an optional fused residual add: `forward(x, residual=None, prenorm=False,
    residual_in_fp32=False)` returns norm(x + residual), and also x + residual when prenorm (as a tuple).
    Arguments and defaults (eps 1e-5) are the peer library's; the models pass their config's norm_eps."""

    def __init__(self, hidden_size: int, elementwise_affine: bool = True, bias: bool = False, eps: float = 1e-5,
                 device=None, dtype=None):
        super().__init__()
        self.hidden_size, self.eps, self.elementwise_affine = hidden_size, eps, elementwise_affine
        factory = dict(dtype=dtype, device=device)
        if elementwise_affine:
            self.weight = nn.Parameter(torch.empty(hidden_size, **factory))
        else:
            self.register_parameter("weight", None)
        if bias:
            self.bias = nn.Parameter(torch.empty(hidden_size, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.weight is not None:
            nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        return (f"{self.hidden_size}, eps={self.eps}, elementwise_affine={self.elementwise_affine}, "
                f"bias={self.bias is not None}")

    def forward(self, x, residual=None, prenorm=False, residual_in_fp32=False):
        return rms_norm(x, self.weight, self.bias, residual, self.eps, prenorm, residual_in_fp32)


class FusedRMSNormGated(nn.Module):
    """`forward(x, g, residual=None, prenorm=False)` -> rms_norm(x + residual) * weight * act(g), the output norm of
    gated linear-attention layers; act = "swish" (default, alias "silu") or "sigmoid". Arguments and defaults (eps
    1e-5) are the peer library's; the layers pass their norm_eps."""

    def __init__(
        self, hidden_size: int, elementwise_affine: bool = True, eps: float = 1e-5, activation: str = "swish",
        device=None, dtype=None,
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS} (got {activation!r})")
        self.hidden_size, self.eps, self.activation = hidden_size, eps, activation
        if elementwise_affine:
            self.weight = nn.Parameter(torch.empty(hidden_size, dtype=dtype, device=device))
        else:
            self.register_parameter("weight", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.weight is not None:
            nn.init.ones_(self.weight)

    def extra_repr(self) -> str:
        return f"{self.hidden_size}, eps={self.eps}, activation={self.activation!r}"

    def forward(self, x, g, residual=None, prenorm=False, residual_in_fp32=False):
        return rms_norm_gated(x, g, self.weight, residual, self.eps, self.activation, prenorm, residual_in_fp32)
