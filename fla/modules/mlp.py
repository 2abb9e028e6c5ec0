"""The gated MLP of the decoder blocks (SwiGLU): `down(swish(gate(x)) * up(x))`, or the peer's PowGLU.

The activation-times-up product is one elementwise Triton kernel (forward writes y = silu(g) * u; backward
recomputes silu from g instead of saving it), so that only the two projections are kept for backward.
`swiglu_linear` / `powglu_linear` go one step further (the peer's `fuse_swiglu`): the product is not kept either,
backward recomputes it from g and u for the down projection's weight gradient.

PowGLU (`hidden_act="powlu"`): gate(g) = g ** (p / (sqrt(g) + 1)) * sigmoid(g) for g > 0 and silu(g) otherwise,
with p = `powglu_power`: a power that is p near 0 and falls off for large g.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
import triton
import triton.language as tl

from fla.ops.utils.dispatch import dispatch

ACTIVATIONS = ("swish", "silu", "powlu")
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


@triton.jit
def _powglu_gate(b_g, power):
    """(gate, d gate / d g) of PowGLU in float32; only positive lanes reach log/sqrt."""
    b_s = tl.sigmoid(b_g)
    b_pos = b_g > 0
    b_x = tl.where(b_pos, b_g, 1.0)
    b_r = tl.sqrt(b_x)
    b_ln = tl.log(b_x)
    b_p = power / (b_r + 1.0)
    b_pow = tl.exp(b_p * b_ln)
    # d/dg [p(g) ln g] = p'(g) ln g + p / g with p'(g) = -power / (2 sqrt(g) (sqrt(g) + 1)^2)
    b_dexp = -power / (2.0 * b_r * (b_r + 1.0) * (b_r + 1.0)) * b_ln + b_p / b_x
    b_gate = tl.where(b_pos, b_pow * b_s, b_g * b_s)
    b_dgate = tl.where(b_pos, b_pow * b_s * (b_dexp + 1.0 - b_s), b_s * (1.0 + b_g * (1.0 - b_s)))
    return b_gate, b_dgate


@triton.jit
def powglu_fwd_kernel(g, u, y, n, power, BLOCK: tl.constexpr):
    o = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = o < n
    b_g = tl.load(g + o, mask=m, other=0.).to(tl.float32)
    b_u = tl.load(u + o, mask=m, other=0.).to(tl.float32)
    b_gate, _ = _powglu_gate(b_g, power)
    tl.store(y + o, (b_gate * b_u).to(y.dtype.element_ty), mask=m)


@triton.jit
def powglu_bwd_kernel(g, u, dy, dg, du, n, power, BLOCK: tl.constexpr):
    o = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = o < n
    b_g = tl.load(g + o, mask=m, other=0.).to(tl.float32)
    b_u = tl.load(u + o, mask=m, other=0.).to(tl.float32)
    b_dy = tl.load(dy + o, mask=m, other=0.).to(tl.float32)
    b_gate, b_dgate = _powglu_gate(b_g, power)
    tl.store(dg + o, (b_dy * b_u * b_dgate).to(dg.dtype.element_ty), mask=m)
    tl.store(du + o, (b_dy * b_gate).to(du.dtype.element_ty), mask=m)


def _act_fwd(g, u, power):
    """y = act(g) * u by one elementwise kernel; power None is SwiGLU, a number PowGLU."""
    y = torch.empty_like(g)
    n = g.numel()
    if n > 0:
        if power is None:
            swiglu_fwd_kernel[(triton.cdiv(n, BLOCK),)](g, u, y, n, BLOCK=BLOCK)
        else:
            powglu_fwd_kernel[(triton.cdiv(n, BLOCK),)](g, u, y, n, float(power), BLOCK=BLOCK)
    return y


def _act_bwd(g, u, dy, power):
    dg, du = torch.empty_like(g), torch.empty_like(u)
    n = g.numel()
    if n > 0:
        if power is None:
            swiglu_bwd_kernel[(triton.cdiv(n, BLOCK),)](g, u, dy.contiguous(), dg, du, n, BLOCK=BLOCK)
        else:
            powglu_bwd_kernel[(triton.cdiv(n, BLOCK),)](g, u, dy.contiguous(), dg, du, n, float(power), BLOCK=BLOCK)
    return dg, du


class GLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, g, u, power=None):
        g, u = g.contiguous(), u.contiguous()
        ctx.save_for_backward(g, u)
        ctx.power = power
        return _act_fwd(g, u, power)

    @staticmethod
    def backward(ctx, dy):
        g, u = ctx.saved_tensors
        return (*_act_bwd(g, u, dy, ctx.power), None)


class GLULinearFunction(torch.autograd.Function):
    """out = F.linear(act(g) * u, weight, bias), keeping g, u and weight only: the product is recomputed."""

    @staticmethod
    def forward(ctx, g, u, weight, bias, power=None):
        g, u = g.contiguous(), u.contiguous()
        ctx.save_for_backward(g, u, weight)
        ctx.power, ctx.has_bias = power, bias is not None
        return F.linear(_act_fwd(g, u, power), weight, bias)

    @staticmethod
    def backward(ctx, dout):
        g, u, weight = ctx.saved_tensors
        dout = dout.reshape(-1, dout.shape[-1])
        y = _act_fwd(g, u, ctx.power).reshape(-1, g.shape[-1])
        dg, du = _act_bwd(g, u, (dout @ weight).reshape(g.shape), ctx.power)
        dw = dout.t() @ y
        db = dout.sum(0) if ctx.has_bias else None
        return dg, du, dw, db, None


def _powglu_torch_gate(g: torch.Tensor, power: float) -> torch.Tensor:
    x = torch.where(g > 0, g, torch.ones_like(g))
    return torch.where(g > 0, x ** (power / (x.sqrt() + 1)) * torch.sigmoid(g), F.silu(g))


def _glu_torch(g, u, power=None):
    gate = F.silu(g.float()) if power is None else _powglu_torch_gate(g.float(), float(power))
    return (gate * u.float()).to(g.dtype)


_glu = dispatch(lambda g, u, power=None: GLUFunction.apply(g, u, power), _glu_torch)
_glu_linear = dispatch(lambda g, u, w, b, power=None: GLULinearFunction.apply(g, u, w, b, power),
                       lambda g, u, w, b, power=None: F.linear(_glu_torch(g, u, power), w, b))


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


def _check_pair(name: str, x, y) -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor) or x.shape != y.shape or x.dtype != y.dtype:
        raise ValueError(
            f"{name} needs x and y of the same shape and dtype (got {getattr(x, 'shape', x)} "
            f"{getattr(x, 'dtype', '')} and {getattr(y, 'shape', y)} {getattr(y, 'dtype', '')})"
        )


def powglu(x: torch.Tensor, y: torch.Tensor, power: float = 3.0) -> torch.Tensor:
    """PowGLU(x) * y elementwise (float32 inside), the peer's `powglu`; x and y of the same shape and dtype."""
    _check_pair("powglu", x, y)
    return _glu(x, y, float(power))


def swiglu_linear(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`F.linear(silu(x) * y, weight, bias)` that keeps only x, y, weight for backward (the product is
    recomputed). x, y: [..., I]; weight: [D, I]; bias: [D] or None -> [..., D]."""
    _check_pair("swiglu_linear", x, y)
    return _glu_linear(x, y, weight, bias, None)


def powglu_linear(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  power: float = 3.0) -> torch.Tensor:
    """`F.linear(powglu(x, y, power), weight, bias)`, the product recomputed in backward as in `swiglu_linear`."""
    _check_pair("powglu_linear", x, y)
    return _glu_linear(x, y, weight, bias, float(power))


def default_intermediate_size(hidden_size: int, hidden_ratio: float = 4) -> int:
    """2/3 of hidden_ratio * hidden_size (the SwiGLU convention: same parameters as a plain MLP), rounded up to 256."""
    size = int(hidden_size * hidden_ratio * 2 / 3)
    return 256 * ((size + 255) // 256)


class GatedMLP(nn.Module):
    """`forward(x [..., hidden_size]) -> down_proj(act(gate_proj(x)) * up_proj(x))`, act = swish ("swish"/"silu")
    or PowGLU ("powlu", with `powglu_power`). `fuse_swiglu=True` (the peer's default) fuses the product into the
    down projection (`swiglu_linear` / `powglu_linear`: the product is recomputed in backward, not kept); False
    applies the activation kernel, then `down_proj`. Same result either way. The positional order is the peer
    library's (hidden_size, hidden_ratio, intermediate_size, hidden_act, fuse_swiglu, powglu_power); the rest is
    keyword-only."""

    def __init__(
        self, hidden_size: int, hidden_ratio: float | None = None, intermediate_size: int | None = None,
        hidden_act: str = "swish", fuse_swiglu: bool = True, powglu_power: float = 3.0, *, bias: bool = False,
        device=None, dtype=None,
    ):
        super().__init__()
        if hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act must be one of {ACTIVATIONS} (got {hidden_act!r}); a gated unit is fused")
        if not isinstance(powglu_power, (int, float)):
            raise ValueError(f"powglu_power must be a number (got {powglu_power!r})")
        if intermediate_size is None:
            intermediate_size = default_intermediate_size(hidden_size, 4 if hidden_ratio is None else hidden_ratio)
        self.hidden_size, self.intermediate_size, self.hidden_act = hidden_size, intermediate_size, hidden_act
        self.fuse_swiglu, self.powglu_power = fuse_swiglu, powglu_power
        kw = dict(bias=bias, device=device, dtype=dtype)
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, **kw)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, **kw)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, **kw)

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        gate, up = self.gate_proj(x), self.up_proj(x)
        power = float(self.powglu_power) if self.hidden_act == "powlu" else None
        if self.fuse_swiglu:
            return _glu_linear(gate, up, self.down_proj.weight, self.down_proj.bias, power)
        return self.down_proj(swiglu(gate, up) if power is None else powglu(gate, up, power))
