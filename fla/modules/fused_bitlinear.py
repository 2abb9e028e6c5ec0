"""BitLinear (BitNet b1.58): a norm, 8-bit activations and ternary weights, trained with straight-through gradients.

    r = x + residual (when given);   y = norm(r) * norm_weight + norm_bias          (RMSNorm, or LayerNorm)
    y_q = round(y * s) / s,  s = 127 / max(max_i |y_i|, 1e-5)    per row, round half away from zero, in [-128, 127]
    w_q = clamp(round(w * a), -1, 1) / a,  a = 1 / max(mean |w|, 1e-5)          (one scale for the whole tensor)
    out = y_q @ w_q.T + linear_bias

Straight-through estimator (as the peer library defines it): both roundings pass the gradient unchanged, so
d y = d out @ w_q, d w = d out.T @ y_q, and d r is the norm's backward of d y. (arXiv 2402.17764, 2406.02528.)

`FusedBitLinear` (and `layer_norm_linear_quant`) runs the norm and the activation quantization in one Triton kernel
per direction: forward writes y_q and the row statistics; backward recomputes y_q from the saved r (instead of
keeping it), and reuses the norm backward of `fla.modules.norm_kernels`, since with the straight-through
gradient the quantization adds nothing there. The weight quantization is one tensor-wide mean and an elementwise
map, left to PyTorch as in the peer. `BitLinear` composes the same steps from `RMSNorm` and PyTorch ops; its
`activation_quant` rounds half to even (`torch.round`), the fused kernel half away from zero, as in the peer
(they differ only at exact ties).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
import triton
import triton.language as tl

from fla.modules.layernorm import RMSNorm, _check, _r_dtype
from fla.modules.norm_kernels import _blocks, _norm_fwd_rows, norm_bwd
from fla.ops.utils.dispatch import dispatch


def activation_quant(x: torch.Tensor) -> torch.Tensor:
    """Per-row (last dim) absmax 8-bit quantization, returned dequantized in x's dtype: round(x * s) / s with
    s = 127 / max|x| (max|x| floored at 1e-5), rounding half to even."""
    scale = 127.0 / x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)
    return (x * scale).round().clamp(-128, 127) / scale


def weight_quant(w: torch.Tensor) -> torch.Tensor:
    """Absmean ternary quantization of the whole tensor, returned dequantized: {-1, 0, 1} / a with
    a = 1 / mean|w| (mean|w| floored at 1e-5)."""
    scale = 1.0 / w.abs().mean().clamp(min=1e-5)
    return (w * scale).round().clamp(-1, 1) / scale


@triton.jit
def norm_quant_fwd_kernel(
    x, residual, weight, bias, y, r_out, mean, rstd, eps, M, N,
    BM: tl.constexpr, BN: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr, STORE_R: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
    IS_RMS: tl.constexpr,
):
    # grid: (cdiv(M, BM),); x, residual, y, r_out are [M, N] row-major (row stride N); mean, rstd [M] float32.
    # The norm is norm_kernels' with one group (G = 1, D = N); the padded columns of b_y are 0, out of the max.
    b_y, offs, m_x = _norm_fwd_rows(x, residual, weight, bias, r_out, mean, rstd, eps, tl.program_id(0), 0, M, N, N,
                                    1, BM, BN, HAS_RESIDUAL, STORE_R, HAS_WEIGHT, HAS_BIAS, IS_RMS)
    # 8-bit absmax per row; round half away from zero with floor/ceil (every backend has them)
    b_s = 127. / tl.maximum(tl.max(tl.abs(b_y), axis=1), 1e-5)
    b_q = b_y * b_s[:, None]
    b_q = tl.where(b_q >= 0, tl.floor(b_q + 0.5), tl.ceil(b_q - 0.5))
    b_q = tl.minimum(tl.maximum(b_q, -128.), 127.) / b_s[:, None]
    tl.store(y + offs, b_q.to(y.dtype.element_ty), mask=m_x)


def _norm_quant_fwd(x2, residual2, weight, bias, eps, is_rms, r, y):
    """Launch the forward kernel: y_q into `y` [M, N]; r = x + residual into `r` when it is not x2 itself.
    Returns (mean [M, 1] float32 or None, rstd [M, 1] float32)."""
    M, N = x2.shape
    mean = None if is_rms else torch.empty(M, 1, dtype=torch.float32, device=x2.device)  # [M, G = 1], as norm_bwd
    rstd = torch.empty(M, 1, dtype=torch.float32, device=x2.device)
    BM, BN, NB, warps = _blocks(M, N)
    if M > 0:
        norm_quant_fwd_kernel[(NB,)](
            x2, residual2, weight, bias, y, r, mean, rstd, eps, M, N, BM=BM, BN=BN, num_warps=warps,
            HAS_RESIDUAL=residual2 is not None, STORE_R=r is not x2, HAS_WEIGHT=weight is not None,
            HAS_BIAS=bias is not None, IS_RMS=is_rms,
        )
    return mean, rstd


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype of y_q and of the matmul: autocast's when it is on (as the peer), else x's."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


class LayerNormLinearQuantFunction(torch.autograd.Function):
    """norm(x + residual) -> 8-bit y_q -> y_q @ weight_quant(linear_weight).T + linear_bias (module docstring),
    with the straight-through backward. Argument order as the peer's."""

    @staticmethod
    def forward(ctx, x, norm_weight, norm_bias, linear_weight, linear_bias, residual=None, eps=1e-6, prenorm=False,
                residual_in_fp32=False, is_rms_norm=False):
        shape, N = x.shape, x.shape[-1]
        x2 = x.reshape(-1, N).contiguous()
        res2 = residual.reshape(-1, N).contiguous() if residual is not None else None
        M = x2.shape[0]
        r_dtype = _r_dtype(x, residual, residual_in_fp32)
        r = torch.empty(M, N, dtype=r_dtype, device=x.device) if residual is not None or r_dtype != x.dtype else x2
        dtype = _compute_dtype(x)
        y = torch.empty(M, N, dtype=dtype, device=x.device)
        mean, rstd = _norm_quant_fwd(x2, res2, norm_weight, norm_bias, eps, is_rms_norm, r, y)
        w_q = weight_quant(linear_weight).to(dtype)
        out = F.linear(y, w_q, linear_bias.to(dtype) if linear_bias is not None else None)
        ctx.save_for_backward(r, norm_weight, norm_bias, w_q, mean, rstd)
        ctx.meta = (shape, eps, is_rms_norm, x.dtype, None if residual is None else residual.dtype,
                    linear_weight.dtype, None if linear_bias is None else linear_bias.dtype)
        out = out.view(*shape[:-1], out.shape[-1])
        return (out, r.view(shape)) if prenorm else out

    @staticmethod
    def backward(ctx, dout, dr_in=None):
        r, weight, bias, w_q, mean, rstd = ctx.saved_tensors
        shape, eps, is_rms, x_dtype, res_dtype, lw_dtype, lb_dtype = ctx.meta
        M, N = r.shape
        dout = dout.reshape(M, -1)
        dlinear_bias = dout.sum(0, dtype=torch.float32).to(lb_dtype) if lb_dtype is not None else None
        # straight through: the quantized weight and activations act as the values they round to
        dy = (dout @ w_q.to(dout.dtype)).contiguous()
        y = torch.empty(M, N, dtype=w_q.dtype, device=r.device)
        _norm_quant_fwd(r, None, weight, bias, eps, is_rms, r, y)  # recompute y_q (the statistics again, unused)
        dlinear_weight = (dout.t() @ y.to(dout.dtype)).to(lw_dtype)
        if dr_in is not None:
            dr_in = dr_in.reshape(M, N).contiguous()
        dr, _, dweight, dbias, _ = norm_bwd(dy, dr_in, r, None, weight, bias, mean, rstd, "swish", is_rms, 1)
        dx = dr.to(x_dtype).view(shape)
        dres = dr.to(res_dtype).view(shape) if res_dtype is not None else None
        return (dx, dweight, dbias, dlinear_weight, dlinear_bias, dres,
                None, None, None, None)


LayerNormLinearQuantFn = LayerNormLinearQuantFunction  # the peer's older name


def _round_half_away(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def _straight_through(x: torch.Tensor, x_q: torch.Tensor) -> torch.Tensor:
    """x_q's values, x's gradient."""
    return x + (x_q - x).detach()


def _quant_torch(x, norm_weight, norm_bias, linear_weight, linear_bias, residual, eps, prenorm, residual_in_fp32,
                 is_rms_norm):
    """The PyTorch twin: the same steps (float32 statistics, rounding half away from zero) under autograd."""
    r = (x if residual is None else x + residual).to(_r_dtype(x, residual, residual_in_fp32))
    c = r.float()
    if not is_rms_norm:
        c = c - c.mean(-1, keepdim=True)
    y = c * torch.rsqrt(c.pow(2).mean(-1, keepdim=True) + eps)
    if norm_weight is not None:
        y = y * norm_weight.float()
    if norm_bias is not None:
        y = y + norm_bias.float()
    scale = 127.0 / y.detach().abs().amax(-1, keepdim=True).clamp(min=1e-5)
    dtype = _compute_dtype(x)
    y_q = _straight_through(y, _round_half_away(y * scale).clamp(-128, 127) / scale).to(dtype)
    w_q = _straight_through(linear_weight, weight_quant(linear_weight)).to(dtype)
    out = F.linear(y_q, w_q, linear_bias.to(dtype) if linear_bias is not None else None)
    return (out, r) if prenorm else out


def _quant_triton(x, norm_weight, norm_bias, linear_weight, linear_bias, residual, eps, prenorm, residual_in_fp32,
                  is_rms_norm):
    if residual is None:
        # r is x (cast): let autograd route its gradient instead of returning an input from the Function
        out = LayerNormLinearQuantFunction.apply(x, norm_weight, norm_bias, linear_weight, linear_bias, None, eps,
                                                 False, False, is_rms_norm)
        return (out, x.to(_r_dtype(x, None, residual_in_fp32))) if prenorm else out
    return LayerNormLinearQuantFunction.apply(x, norm_weight, norm_bias, linear_weight, linear_bias, residual, eps,
                                              prenorm, residual_in_fp32, is_rms_norm)


_layer_norm_linear_quant = dispatch(_quant_triton, _quant_torch)


def layer_norm_linear_quant(
    x: torch.Tensor,
    norm_weight: torch.Tensor | None,
    norm_bias: torch.Tensor | None,
    linear_weight: torch.Tensor,
    linear_bias: torch.Tensor | None,
    residual: torch.Tensor | None = None,
    eps: float = 1e-6,
    prenorm: bool = False,
    residual_in_fp32: bool = False,
    is_rms_norm: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """LayerNorm (RMSNorm when is_rms_norm) of x + residual, 8-bit activations, ternary weights, linear (module
    docstring), with straight-through gradients. Argument order and defaults are the peer library's.

    Args:
        x: [..., N]; residual: [..., N] or None; norm_weight, norm_bias: [N] or None
        linear_weight: [O, N]; linear_bias: [O] or None
        prenorm: also return r = x + residual; residual_in_fp32: keep that r in float32
    Returns:
        out: [..., O] in x's dtype (autocast's when on), or (out, r) when prenorm
    """
    _check(x, None, residual, norm_weight, "swish", norm_bias)
    N = x.shape[-1]
    if not isinstance(linear_weight, torch.Tensor) or linear_weight.dim() != 2 or linear_weight.shape[1] != N:
        got = list(linear_weight.shape) if isinstance(linear_weight, torch.Tensor) else type(linear_weight).__name__
        raise ValueError(f"linear_weight must be [out_features, {N}] (N = the last dim of x), got {got}")
    O = linear_weight.shape[0]
    if linear_bias is not None and (not isinstance(linear_bias, torch.Tensor) or linear_bias.shape != (O,)):
        got = list(linear_bias.shape) if isinstance(linear_bias, torch.Tensor) else type(linear_bias).__name__
        raise ValueError(f"linear_bias must be [{O}] (out_features) or None, got {got}")
    return _layer_norm_linear_quant(x, norm_weight, norm_bias, linear_weight, linear_bias, residual, eps, prenorm,
                                    residual_in_fp32, is_rms_norm)


layer_norm_linear_quant_fn = layer_norm_linear_quant  # the peer's older name


def rms_norm_linear_quant(
    x: torch.Tensor,
    norm_weight: torch.Tensor | None,
    norm_bias: torch.Tensor | None,
    linear_weight: torch.Tensor,
    linear_bias: torch.Tensor | None,
    residual: torch.Tensor | None = None,
    eps: float = 1e-5,
    prenorm: bool = False,
    residual_in_fp32: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """`layer_norm_linear_quant` with RMSNorm (and the peer's eps 1e-5 here)."""
    return layer_norm_linear_quant(x, norm_weight, norm_bias, linear_weight, linear_bias, residual, eps, prenorm,
                                   residual_in_fp32, True)


def bit_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    norm_weight: torch.Tensor | None = None,
    norm_bias: torch.Tensor | None = None,
    eps: float = 1e-8,
) -> torch.Tensor:
    """BitLinear as a function: RMSNorm (eps 1e-8), 8-bit activations, ternary weight [O, N], bias [O]: [..., O]."""
    return layer_norm_linear_quant(x, norm_weight, norm_bias, weight, bias, eps=eps, is_rms_norm=True)


class BitLinear(nn.Linear):
    """`nn.Linear` with an RMSNorm in front (float32 weight, eps `norm_eps`), 8-bit activations and ternary weights,
    trained with straight-through gradients (module docstring), built from PyTorch ops and `RMSNorm`.

    Unlike the peer's BitLinear, whose forward drops its bias, this one adds `bias` when it has one (bias=True), as
    `FusedBitLinear` does in both libraries; with the default bias=False the two are the same."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, norm_eps: float = 1e-8) -> None:
        super().__init__(in_features=in_features, out_features=out_features, bias=bias)
        self.norm = RMSNorm(hidden_size=in_features, eps=norm_eps, dtype=torch.float32)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, norm_eps={self.norm.eps}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_norm = self.norm(x)
        x_q = _straight_through(x_norm, activation_quant(x_norm))
        w_q = _straight_through(self.weight, weight_quant(self.weight))
        return F.linear(x_q, w_q, self.bias)


class FusedBitLinear(BitLinear):
    """`BitLinear` with the norm and the activation quantization in one Triton kernel (`layer_norm_linear_quant`);
    the norm's eps is BitLinear's default, 1e-8."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__(in_features=in_features, out_features=out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm_linear_quant(x, self.norm.weight, self.norm.bias, self.weight, self.bias,
                                       eps=self.norm.eps, is_rms_norm=True)
