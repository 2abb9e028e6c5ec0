"""LayerNorm, RMSNorm and GroupNorm with a fused residual add, their gated forms, and the norm-then-linear modules.

`r = x + residual` (when a residual is given), `c = r - mean(r)` (LayerNorm; `c = r` for RMSNorm),
`y = c / sqrt(mean(c^2) + eps) * weight + bias`, and for the gated form `y *= act(g)` with act = swish
(g * sigmoid(g)) or sigmoid. One Triton kernel per direction (mean-centred or not, optional weight, bias, residual
and gate as constexpr switches) works on a block of rows; the statistics are float32. GroupNorm normalizes each of
`num_groups` equal slices of the last dim: the rows are viewed as [..., G, N / G] for the kernel and the per-channel
affine is applied after it. The prenorm form also returns `r`, the residual stream for the next block.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
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
    x, residual, weight, bias, g, y, r_out, mean, rstd, eps, M, N,
    BM: tl.constexpr, BN: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr, STORE_R: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_GATE: tl.constexpr, ACT_SIGMOID: tl.constexpr, IS_RMS: tl.constexpr,
):
    # grid: (cdiv(M, BM),); every tensor is [M, N] row-major (row stride N); mean and rstd are [M] float32.
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
    if IS_RMS:
        b_c = b_r
    else:
        b_mean = tl.sum(b_r, axis=1) / N
        tl.store(mean + o_m, b_mean, mask=m_m)
        # padded columns must stay 0 after centring, or they would enter the variance
        b_c = tl.where(m_x, b_r - b_mean[:, None], 0.)
    b_rstd = 1 / tl.sqrt(tl.sum(b_c * b_c, axis=1) / N + eps)
    tl.store(rstd + o_m, b_rstd, mask=m_m)
    b_y = b_c * b_rstd[:, None]
    if HAS_WEIGHT:
        b_y *= tl.load(weight + o_n, mask=m_n, other=0.).to(tl.float32)[None, :]
    if HAS_BIAS:
        b_y += tl.load(bias + o_n, mask=m_n, other=0.).to(tl.float32)[None, :]
    if HAS_GATE:
        b_y *= _gate(tl.load(g + offs, mask=m_x, other=0.).to(tl.float32), ACT_SIGMOID)
    tl.store(y + offs, b_y.to(y.dtype.element_ty), mask=m_x)


@triton.jit
def rms_norm_bwd_kernel(
    dy, dr_in, r, weight, bias, g, mean, rstd, dr, dg, dw_partial, db_partial, M, N, NB,
    BM: tl.constexpr, BN: tl.constexpr,
    HAS_DR_IN: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_GATE: tl.constexpr,
    ACT_SIGMOID: tl.constexpr, IS_RMS: tl.constexpr,
):
    # grid: (G,) programs, each walking row blocks i_p, i_p + G, ... of the NB = cdiv(M, BM) blocks and keeping its
    # share of dweight / dbias in registers; [M, N] row-major tensors; dw_partial and db_partial are [G, N] float32
    # (summed by the launcher).
    i_p = tl.program_id(0)
    o_n = tl.arange(0, BN)
    m_n = o_n < N
    if HAS_WEIGHT:
        b_w = tl.load(weight + o_n, mask=m_n, other=0.).to(tl.float32)[None, :]
        b_dw = tl.zeros([BN], dtype=tl.float32)
    if HAS_BIAS:
        b_b = tl.load(bias + o_n, mask=m_n, other=0.).to(tl.float32)[None, :]
        b_db = tl.zeros([BN], dtype=tl.float32)
    for i_m in range(i_p, NB, tl.num_programs(0)):
        o_m = i_m * BM + tl.arange(0, BM)
        m_m = o_m < M
        m_x = m_m[:, None] & m_n[None, :]
        offs = o_m.to(tl.int64)[:, None] * N + o_n[None, :]
        b_rstd = tl.load(rstd + o_m, mask=m_m, other=0.)
        b_c = tl.load(r + offs, mask=m_x, other=0.).to(tl.float32)
        if not IS_RMS:
            b_c = tl.where(m_x, b_c - tl.load(mean + o_m, mask=m_m, other=0.)[:, None], 0.)
        b_xhat = b_c * b_rstd[:, None]
        b_dy = tl.load(dy + offs, mask=m_x, other=0.).to(tl.float32)
        if HAS_GATE:
            b_g = tl.load(g + offs, mask=m_x, other=0.).to(tl.float32)
            b_yn = b_xhat
            if HAS_WEIGHT:
                b_yn = b_xhat * b_w
            if HAS_BIAS:
                b_yn += b_b
            tl.store(dg + offs, (b_dy * b_yn * _gate_grad(b_g, ACT_SIGMOID)).to(dg.dtype.element_ty), mask=m_x)
            b_dy = b_dy * _gate(b_g, ACT_SIGMOID)
        if HAS_BIAS:
            b_db += tl.sum(b_dy, axis=0)
        if HAS_WEIGHT:
            b_dw += tl.sum(b_dy * b_xhat, axis=0)
            b_dy = b_dy * b_w
        # d r = rstd * (dxhat - xhat * mean(dxhat * xhat) - mean(dxhat)), the last term only when mean-centred, plus
        # the gradient of the returned r (prenorm). Padded columns of dxhat are 0 (dy loads 0 there).
        b_c1 = tl.sum(b_dy * b_xhat, axis=1) / N
        b_dr = b_dy - b_xhat * b_c1[:, None]
        if not IS_RMS:
            b_dr -= (tl.sum(b_dy, axis=1) / N)[:, None]
        b_dr = b_dr * b_rstd[:, None]
        if HAS_DR_IN:
            b_dr += tl.load(dr_in + offs, mask=m_x, other=0.).to(tl.float32)
        tl.store(dr + offs, b_dr.to(dr.dtype.element_ty), mask=m_x)
    if HAS_WEIGHT:
        tl.store(dw_partial + i_p * N + o_n, b_dw, mask=m_n)
    if HAS_BIAS:
        tl.store(db_partial + i_p * N + o_n, b_db, mask=m_n)


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


class LayerNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, g, residual, weight, bias, eps, prenorm, residual_in_fp32, activation, is_rms):
        shape, N = x.shape, x.shape[-1]
        x2 = x.reshape(-1, N).contiguous()
        g2 = g.reshape(-1, N).contiguous() if g is not None else None
        res2 = residual.reshape(-1, N).contiguous() if residual is not None else None
        M = x2.shape[0]
        r_dtype = _r_dtype(x, residual, residual_in_fp32)
        store_r = residual is not None
        y = torch.empty_like(x2)
        r = torch.empty(M, N, dtype=r_dtype, device=x.device) if store_r else x2
        mean = None if is_rms else torch.empty(M, dtype=torch.float32, device=x.device)
        rstd = torch.empty(M, dtype=torch.float32, device=x.device)
        BM, BN, NB, warps = _blocks(M, N)
        if M > 0:
            rms_norm_fwd_kernel[(NB,)](
                x2, res2, weight, bias, g2, y, r, mean, rstd, eps, M, N, BM=BM, BN=BN, num_warps=warps,
                HAS_RESIDUAL=residual is not None, STORE_R=store_r, HAS_WEIGHT=weight is not None,
                HAS_BIAS=bias is not None, HAS_GATE=g is not None, ACT_SIGMOID=activation == "sigmoid", IS_RMS=is_rms,
            )
        ctx.save_for_backward(r, g2, weight, bias, mean, rstd)
        ctx.meta = (shape, activation, is_rms, x.dtype, None if residual is None else residual.dtype)
        y = y.view(shape)
        return (y, r.view(shape)) if prenorm else y

    @staticmethod
    def backward(ctx, dy, dr_in=None):
        r, g2, weight, bias, mean, rstd = ctx.saved_tensors
        shape, activation, is_rms, x_dtype, res_dtype = ctx.meta
        M, N = r.shape
        dy = dy.reshape(M, N).contiguous()
        if dr_in is not None:
            dr_in = dr_in.reshape(M, N).contiguous()
        BM, BN, NB, warps = _blocks(M, N)
        grid = _backward_programs(NB, r.device)
        dr = torch.empty(M, N, dtype=r.dtype, device=r.device)
        dg = torch.empty_like(g2) if g2 is not None else None
        dw_partial = torch.empty(grid, N, dtype=torch.float32, device=r.device) if weight is not None else None
        db_partial = torch.empty(grid, N, dtype=torch.float32, device=r.device) if bias is not None else None
        if M > 0:
            rms_norm_bwd_kernel[(grid,)](
                dy, dr_in, r, weight, bias, g2, mean, rstd, dr, dg, dw_partial, db_partial, M, N, NB,
                BM=BM, BN=BN, num_warps=warps, HAS_DR_IN=dr_in is not None, HAS_WEIGHT=weight is not None,
                HAS_BIAS=bias is not None, HAS_GATE=g2 is not None, ACT_SIGMOID=activation == "sigmoid",
                IS_RMS=is_rms,
            )

        def reduce(partial, param):
            if param is None:
                return None
            return (partial.sum(0) if M > 0 else torch.zeros(N, device=r.device)).to(param.dtype)
        dx = dr.to(x_dtype).view(shape)
        dres = dr.to(res_dtype).view(shape) if res_dtype is not None else None
        dg = dg.view(shape) if dg is not None else None
        return dx, dg, dres, reduce(dw_partial, weight), reduce(db_partial, bias), None, None, None, None, None


# the kernels serve every norm here; the old name stays for code that imported it
RMSNormFunction = LayerNormFunction


def _norm_triton(x, g, residual, weight, bias, eps, prenorm, residual_in_fp32, activation, is_rms):
    if residual is None:
        # r is x itself: let autograd route its gradient instead of returning an input from the Function.
        y = LayerNormFunction.apply(x, g, None, weight, bias, eps, False, residual_in_fp32, activation, is_rms)
        return (y, x.to(_r_dtype(x, None, residual_in_fp32))) if prenorm else y
    return LayerNormFunction.apply(x, g, residual, weight, bias, eps, prenorm, residual_in_fp32, activation, is_rms)


def _norm_torch(x, g, residual, weight, bias, eps, prenorm, residual_in_fp32, activation, is_rms):
    r = x if residual is None else x + residual
    r = r.to(_r_dtype(x, residual, residual_in_fp32))
    c = r.float()
    if not is_rms:
        c = c - c.mean(-1, keepdim=True)
    y = c * torch.rsqrt(c.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.float()
    if bias is not None:
        y = y + bias.float()
    if g is not None:
        gf = g.float()
        y = y * (torch.sigmoid(gf) if activation == "sigmoid" else gf * torch.sigmoid(gf))
    y = y.to(x.dtype)
    return (y, r) if prenorm else y


_norm = dispatch(_norm_triton, _norm_torch)


def _check(x, g, residual, weight, activation, bias=None, num_groups=1):
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"x must be a floating-point torch.Tensor [..., N] (got {type(x).__name__})")
    N = x.shape[-1] if x.dim() > 0 else 0
    for name, t in (("g", g), ("residual", residual)):
        if t is not None and (not isinstance(t, torch.Tensor) or t.shape != x.shape):
            got = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a tensor with the shape of x {list(x.shape)} (got {got})")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and (not isinstance(t, torch.Tensor) or t.shape != (N,)):
            got = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            must = "must have shape" if name == "weight" else "must be a tensor of shape"
            raise ValueError(f"{name} {must} [{N}] (the last dim of x) or None, got {got}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS} (got {activation!r})")
    if not isinstance(num_groups, int) or num_groups < 1 or N % num_groups:
        raise ValueError(f"num_groups must be a positive int dividing the last dim of x ({N}), got {num_groups!r}")


def _group_norm(x, g, residual, weight, bias, eps, prenorm, residual_in_fp32, activation, is_rms, num_groups):
    """Every norm goes through here: one group is the plain kernel call; G groups view the rows as [..., G, N / G]
    (each slice normalized on its own) and add the per-channel affine after the kernel."""
    _check(x, g, residual, weight, activation, bias, num_groups)
    if num_groups == 1:
        return _norm(x, g, residual, weight, bias, eps, prenorm, residual_in_fp32, activation, is_rms)
    shape = x.shape
    gshape = (*shape[:-1], num_groups, shape[-1] // num_groups)

    def grouped(t):
        return None if t is None else t.reshape(gshape)
    out = _norm(grouped(x), None, grouped(residual), None, None, eps, prenorm, residual_in_fp32, activation, is_rms)
    y, r = out if prenorm else (out, None)
    y = y.reshape(shape)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    if g is not None:
        y = y * (torch.sigmoid(g) if activation == "sigmoid" else F.silu(g))
    return (y.to(x.dtype), r.reshape(shape)) if prenorm else y.to(x.dtype)


def layer_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    residual: torch.Tensor | None = None,
    eps: float = 1e-5,
    prenorm: bool = False,
    residual_in_fp32: bool = False,
    is_rms_norm: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """LayerNorm of the last dim after adding `residual`: y = (r - mean) / std * weight + bias (RMSNorm when
    is_rms_norm). Argument order and defaults are the peer library's.

    Args:
        x: [..., N]; weight, bias: [N] or None; residual: [..., N] or None
        prenorm: also return r = x + residual (x when no residual); residual_in_fp32: keep that r in float32
    Returns:
        y: [..., N] in x's dtype, or (y, r) when prenorm
    """
    return _group_norm(x, None, residual, weight, bias, eps, prenorm, residual_in_fp32, "swish", is_rms_norm, 1)


def group_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    residual: torch.Tensor | None = None,
    eps: float = 1e-5,
    prenorm: bool = False,
    residual_in_fp32: bool = False,
    is_rms_norm: bool = False,
    num_groups: int = 1,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """`layer_norm` of each of `num_groups` equal slices of the last dim, then the per-channel weight [N] and bias [N]
    (torch.nn.GroupNorm on [rows, N] when not is_rms_norm). Shapes and returns as in `layer_norm`."""
    return _group_norm(x, None, residual, weight, bias, eps, prenorm, residual_in_fp32, "swish", is_rms_norm,
                       num_groups)


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
    Argument order and eps are the peer library's; shapes and returns as in `layer_norm`."""
    return _group_norm(x, None, residual, weight, bias, eps, prenorm, residual_in_fp32, "swish", True, 1)


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
    g: [..., N] like x. (The peer's `fla.modules.fused_norm_gate.rms_norm_gated` has another argument order.)"""
    return _group_norm(x, g, residual, weight, None, eps, prenorm, residual_in_fp32, activation, True, 1)


def _linear(out, linear_weight, linear_bias, prenorm):
    """The *Linear forms: the norm, then one F.linear (autograd keeps the normed rows for the weight gradient
    rather than recomputing them in backward, which is the peer's memory saving)."""
    if prenorm:
        return F.linear(out[0], linear_weight, linear_bias), out[1]
    return F.linear(out, linear_weight, linear_bias)


def layer_norm_linear(
    x: torch.Tensor,
    norm_weight: torch.Tensor,
    norm_bias: torch.Tensor,
    linear_weight: torch.Tensor,
    linear_bias: torch.Tensor,
    residual: torch.Tensor | None = None,
    eps: float = 1e-5,
    prenorm: bool = False,
    residual_in_fp32: bool = False,
    is_rms_norm: bool = False,
    num_groups: int = 1,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """`F.linear(group_norm(x, ...), linear_weight [O, N], linear_bias [O] or None)` -> [..., O] (and r when
    prenorm)."""
    out = _group_norm(x, None, residual, norm_weight, norm_bias, eps, prenorm, residual_in_fp32, "swish",
                      is_rms_norm, num_groups)
    return _linear(out, linear_weight, linear_bias, prenorm)


def group_norm_linear(
    x: torch.Tensor,
    norm_weight: torch.Tensor,
    norm_bias: torch.Tensor,
    linear_weight: torch.Tensor,
    linear_bias: torch.Tensor,
    residual: torch.Tensor | None = None,
    eps: float = 1e-5,
    prenorm: bool = False,
    residual_in_fp32: bool = False,
    is_rms_norm: bool = False,
    num_groups: int = 1,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Same as `layer_norm_linear` (the peer has both names)."""
    return layer_norm_linear(x, norm_weight, norm_bias, linear_weight, linear_bias, residual, eps, prenorm,
                             residual_in_fp32, is_rms_norm, num_groups)


def rms_norm_linear(
    x: torch.Tensor,
    norm_weight: torch.Tensor,
    norm_bias: torch.Tensor,
    linear_weight: torch.Tensor,
    linear_bias: torch.Tensor,
    residual: torch.Tensor | None = None,
    eps: float = 1e-5,
    prenorm: bool = False,
    residual_in_fp32: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """`F.linear(rms_norm(x, ...), linear_weight, linear_bias)`."""
    return layer_norm_linear(x, norm_weight, norm_bias, linear_weight, linear_bias, residual, eps, prenorm,
                             residual_in_fp32, True, 1)


def group_norm_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    num_groups: int,
    residual: torch.Tensor | None = None,
    eps: float = 1e-5,
    is_rms_norm: bool = False,
    prenorm: bool = False,
    upcast: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Plain-PyTorch reference of `group_norm` (autograd for the gradients); upcast computes in float32 and returns
    x's dtype. x: [..., N]; weight, bias: [N] or None."""
    dtype = x.dtype
    if upcast:
        x, residual = x.float(), residual.float() if residual is not None else None
        weight, bias = (t.float() if t is not None else None for t in (weight, bias))
    r = x if residual is None else x + residual
    c = r.reshape(*r.shape[:-1], num_groups, r.shape[-1] // num_groups)
    if not is_rms_norm:
        c = c - c.mean(-1, keepdim=True)
    y = (c * torch.rsqrt(c.pow(2).mean(-1, keepdim=True) + eps)).reshape(r.shape)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    y = y.to(dtype)
    return (y, r) if prenorm else y


def layer_norm_ref(x, weight, bias, residual=None, eps: float = 1e-5, prenorm: bool = False, upcast: bool = False):
    """Plain-PyTorch reference of `layer_norm`."""
    return group_norm_ref(x, weight, bias, 1, residual, eps, False, prenorm, upcast)


def rms_norm_ref(x, weight, bias, residual=None, eps: float = 1e-5, prenorm: bool = False, upcast: bool = False):
    """Plain-PyTorch reference of `rms_norm`."""
    return group_norm_ref(x, weight, bias, 1, residual, eps, True, prenorm, upcast)


class _Norm(nn.Module):
    """Parameters (weight [N] ones, bias [N] zeros, each optional) and repr shared by every norm module here."""

    num_groups, is_rms_norm = 1, False

    def __init__(self, hidden_size: int, elementwise_affine: bool = True, bias: bool = False, eps: float = 1e-5,
                 device=None, dtype=None):
        super().__init__()
        if hidden_size % self.num_groups:
            raise ValueError(f"num_groups ({self.num_groups}) must divide hidden_size ({hidden_size})")
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
        groups = f"num_groups={self.num_groups}, " if self.num_groups > 1 else ""
        rms = ", is_rms_norm=True" if self.is_rms_norm and self.num_groups > 1 else ""
        return (f"{groups}{self.hidden_size}, eps={self.eps}, elementwise_affine={self.elementwise_affine}, "
                f"bias={self.bias is not None}{rms}")

    def forward(self, x, residual=None, prenorm=False, residual_in_fp32=False):
        return _group_norm(x, None, residual, self.weight, self.bias, self.eps, prenorm, residual_in_fp32, "swish",
                           self.is_rms_norm, self.num_groups)


class _NormLinear(_Norm):
    """`forward(x, weight [O, N], bias [O] or None, residual=None, prenorm=False)`: the norm, then F.linear."""

    def forward(self, x, weight, bias, residual=None, prenorm=False, residual_in_fp32=False):
        out = super().forward(x, residual, prenorm, residual_in_fp32)
        return _linear(out, weight, bias, prenorm)


class RMSNorm(_Norm):
    """RMSNorm over the last dim with an optional fused residual add: `forward(x, residual=None, prenorm=False,
    residual_in_fp32=False)` returns norm(x + residual), and also x + residual when prenorm (as a tuple).
    Arguments and defaults (eps 1e-5) are the peer library's; the models pass their config's norm_eps."""

    is_rms_norm = True


class LayerNorm(_Norm):
    """LayerNorm over the last dim (mean-centred), otherwise as `RMSNorm`; the peer's defaults (no bias)."""


class _GroupArgs:
    """GroupNorm's constructor: num_groups first, is_rms_norm after eps (the peer's order)."""

    def __init__(self, num_groups: int, hidden_size: int, elementwise_affine: bool = True, bias: bool = False,
                 eps: float = 1e-5, is_rms_norm: bool = False, device=None, dtype=None):
        self.num_groups, self.is_rms_norm = num_groups, is_rms_norm
        super().__init__(hidden_size, elementwise_affine, bias, eps, device, dtype)


class GroupNorm(_GroupArgs, _Norm):
    """Normalizes each of num_groups equal slices of the last dim, then the per-channel affine (torch.nn.GroupNorm
    on [rows, N] unless is_rms_norm)."""


class GroupNormRef(nn.Module):
    """Plain-PyTorch GroupNorm (`group_norm_ref`), the reference the peer's tests compare against."""

    def __init__(self, num_groups: int, hidden_size: int, elementwise_affine: bool = True, bias: bool = False,
                 eps: float = 1e-5, is_rms_norm: bool = False):
        super().__init__()
        self.num_groups, self.hidden_size, self.eps, self.is_rms_norm = num_groups, hidden_size, eps, is_rms_norm
        self.weight = nn.Parameter(torch.ones(hidden_size)) if elementwise_affine else None
        self.bias = nn.Parameter(torch.zeros(hidden_size)) if bias else None

    def forward(self, x, residual=None, prenorm=False):
        return group_norm_ref(x, self.weight, self.bias, self.num_groups, residual, self.eps, self.is_rms_norm,
                              prenorm, upcast=True)


class RMSNormLinear(_NormLinear):
    """`RMSNorm` followed by `F.linear(·, weight, bias)` with the linear weights passed to forward."""

    is_rms_norm = True


class LayerNormLinear(_NormLinear):
    """`LayerNorm` followed by `F.linear(·, weight, bias)` with the linear weights passed to forward."""


class GroupNormLinear(_GroupArgs, _NormLinear):
    """`GroupNorm` followed by `F.linear(·, weight, bias)` with the linear weights passed to forward."""


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
