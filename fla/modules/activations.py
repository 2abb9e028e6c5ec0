"""Elementwise activations and gated linear units, under the peer library's names (`fla.modules.activations`).

- unary, `y = act(x)`: `sigmoid`, `logsigmoid` (divided by a temperature), `swish` (= silu), `elu_p1` (elu + 1),
  `sqrelu` (relu squared), `fast_gelu_impl` (tanh-approximated GELU), `bias_gelu_impl` (that GELU of x + bias);
- gated, `z = gate(x) * y`: `swiglu` (swish gate), `sigmoidglu`, `powglu` (PowGLU: x ** (p / (sqrt(x) + 1))
  * sigmoid(x) for x > 0, swish otherwise; bounded growth instead of swish's);
- gated then projected, `F.linear(gate(x) * y, weight, bias)`: `swiglu_linear`, `sigmoidglu_linear`,
  `powglu_linear`; backward recomputes the product from x and y instead of keeping it (one [..., D] tensor less);
- `ACT2FN`: name -> function, what configs pass as `hidden_act` / `feature_map`.

One pair of Triton kernels does every unary activation and one pair every gated unit: the activation is a constexpr
switch (`_act`, value and derivative in float32), so each formula is written once, and once more in PyTorch for the
CPU path (`_act_torch`). Backward recomputes from the inputs; nothing but the inputs is saved. Inputs may be row
strided (one half of `x.chunk(2, -1)`): such a layout is read in place, any other is copied first. Outputs are dense
and in the input's dtype.

The peer's `<name>_fwd` / `<name>_bwd` / `<name>_fwdbwd` launchers and its closed-form helpers (`gelu_bwd(g, x)`,
`sqrelu_bwd(g, x)`, `bias_gelu_bwd(g, y, bias)`, ...) are kept under their names at the bottom of the file.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from fla.ops.utils.dispatch import dispatch, is_interpreter

# The activation codes of the kernels' ACT switch.
SIGMOID, LOGSIGMOID, SWISH, ELU_P1, SQRELU, GELU, POW = range(7)
GATES = (SWISH, SIGMOID, POW)  # the codes a gated unit takes
BLOCK = 1024
_GELU_C = 0.7978845608028654  # sqrt(2 / pi)
_GELU_A = 0.044715


@triton.jit
def _act(b_x, param, ACT: tl.constexpr):
    """(act(x), act'(x)) in float32. param: the temperature (LOGSIGMOID) or the power (POW); unused otherwise."""
    b_s = tl.sigmoid(b_x)
    b_y = b_s
    b_d = b_s * (1.0 - b_s)
    if ACT == 1:  # LOGSIGMOID, / temperature; log(1 + exp(-|x|)) never overflows
        b_y = (tl.minimum(b_x, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(b_x)))) / param
        b_d = (1.0 - b_s) / param
    elif ACT == 2:  # SWISH
        b_y = b_x * b_s
        b_d = b_s * (1.0 + b_x * (1.0 - b_s))
    elif ACT == 3:  # ELU_P1: exp(x) itself for x < 0, not exp(x) - 1 + 1 (no cancellation)
        b_e = tl.exp(tl.minimum(b_x, 0.0))
        b_y = tl.where(b_x >= 0, b_x + 1.0, b_e)
        b_d = b_e
    elif ACT == 4:  # SQRELU
        b_r = tl.maximum(b_x, 0.0)
        b_y = b_r * b_r
        b_d = 2.0 * b_r
    elif ACT == 5:  # GELU, tanh form; tanh(u) = 2 sigmoid(2u) - 1 (triton has no tanh of its own)
        b_t = 2.0 * tl.sigmoid(2.0 * 0.7978845608028654 * b_x * (1.0 + 0.044715 * b_x * b_x)) - 1.0
        b_y = 0.5 * b_x * (1.0 + b_t)
        b_d = 0.5 * (1.0 + b_t) + 0.5 * b_x * (1.0 - b_t * b_t) * 0.7978845608028654 * (1.0 + 3 * 0.044715 * b_x * b_x)
    elif ACT == 6:  # POW: only positive lanes reach log / sqrt, the others get 1 and are dropped by the where
        b_pos = b_x > 0
        b_xp = tl.where(b_pos, b_x, 1.0)
        b_r = tl.sqrt(b_xp)
        b_ln = tl.log(b_xp)
        b_p = param / (b_r + 1.0)
        b_gate = tl.exp(b_p * b_ln) * b_s
        # d/dx [p(x) ln x] = p'(x) ln x + p / x, with p'(x) = -power / (2 sqrt(x) (sqrt(x) + 1)^2)
        b_dexp = -param / (2.0 * b_r * (b_r + 1.0) * (b_r + 1.0)) * b_ln + b_p / b_xp
        b_y = tl.where(b_pos, b_gate, b_x * b_s)
        b_d = tl.where(b_pos, b_gate * (b_dexp + 1.0 - b_s), b_s * (1.0 + b_x * (1.0 - b_s)))
    return b_y, b_d


@triton.jit
def _offsets(o, D, stride, STRIDED: tl.constexpr):
    """Element offsets of the flat indices o in a [rows, D] view with the given row stride (dense: o itself)."""
    if STRIDED:
        return (o // D) * stride + o % D
    return o


# Grid: (cdiv(n, BLOCK),) over the n elements in row-major order; outputs are dense, inputs [rows, D] with their row
# stride (STRIDED is False when every input is dense, which saves the index division).
@triton.jit
def act_fwd_kernel(x, y, n, D, s_x, param, ACT: tl.constexpr, STRIDED: tl.constexpr, BLOCK: tl.constexpr):
    o = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = o < n
    b_x = tl.load(x + _offsets(o, D, s_x, STRIDED), mask=m, other=0.).to(tl.float32)
    b_y, _ = _act(b_x, param, ACT)
    tl.store(y + o, b_y.to(y.dtype.element_ty), mask=m)


@triton.jit
def act_bwd_kernel(x, dy, dx, n, D, s_x, s_dy, param, ACT: tl.constexpr, STRIDED: tl.constexpr,
                   BLOCK: tl.constexpr):
    o = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = o < n
    b_x = tl.load(x + _offsets(o, D, s_x, STRIDED), mask=m, other=0.).to(tl.float32)
    b_dy = tl.load(dy + _offsets(o, D, s_dy, STRIDED), mask=m, other=0.).to(tl.float32)
    _, b_d = _act(b_x, param, ACT)
    tl.store(dx + o, (b_dy * b_d).to(dx.dtype.element_ty), mask=m)


@triton.jit
def glu_fwd_kernel(x, y, z, n, D, s_x, s_y, param, ACT: tl.constexpr, STRIDED: tl.constexpr, BLOCK: tl.constexpr):
    o = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = o < n
    b_x = tl.load(x + _offsets(o, D, s_x, STRIDED), mask=m, other=0.).to(tl.float32)
    b_y = tl.load(y + _offsets(o, D, s_y, STRIDED), mask=m, other=0.).to(tl.float32)
    b_gate, _ = _act(b_x, param, ACT)
    tl.store(z + o, (b_gate * b_y).to(z.dtype.element_ty), mask=m)


@triton.jit
def glu_bwd_kernel(x, y, dz, dx, dy, z, n, D, s_x, s_y, s_dz, param, ACT: tl.constexpr, WRITE_Z: tl.constexpr,
                   STRIDED: tl.constexpr, BLOCK: tl.constexpr):
    """dx = dz * y * gate'(x), dy = dz * gate(x); with WRITE_Z also z = gate(x) * y (the *_linear weight gradient
    needs the product again, which costs nothing more here)."""
    o = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = o < n
    b_x = tl.load(x + _offsets(o, D, s_x, STRIDED), mask=m, other=0.).to(tl.float32)
    b_y = tl.load(y + _offsets(o, D, s_y, STRIDED), mask=m, other=0.).to(tl.float32)
    b_dz = tl.load(dz + _offsets(o, D, s_dz, STRIDED), mask=m, other=0.).to(tl.float32)
    b_gate, b_d = _act(b_x, param, ACT)
    tl.store(dx + o, (b_dz * b_y * b_d).to(dx.dtype.element_ty), mask=m)
    tl.store(dy + o, (b_dz * b_gate).to(dy.dtype.element_ty), mask=m)
    if WRITE_Z:
        tl.store(z + o, (b_gate * b_y).to(z.dtype.element_ty), mask=m)


def _is_inner_contiguous(x: torch.Tensor) -> bool:
    """Whether x reads as rows of its last dim with one row stride: the last dim dense, every dim above it laid out
    like a dense tensor of those rows (one half of `t.chunk(2, -1)` is; a transpose or `t[::2]` is not). Dims of
    size 1 are ignored, their stride never matters."""
    if x.ndim < 2:
        return x.ndim == 0 or x.shape[0] <= 1 or x.stride(0) == 1
    if x.shape[-1] > 1 and x.stride(-1) != 1:
        return False
    expected = None
    for size, stride in zip(reversed(x.shape[:-1]), reversed(x.stride()[:-1])):
        if size == 1:
            continue
        if expected is not None and stride != expected:
            return False
        expected = stride * size
    return True


def _rows(x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """(x or a dense copy, D = its last dim, its row stride): the [rows, D] view the kernels address."""
    if not _is_inner_contiguous(x):
        x = x.contiguous()
    D = x.shape[-1] if x.ndim else 1
    stride = next((s for size, s in zip(reversed(x.shape[:-1]), reversed(x.stride()[:-1])) if size != 1), D)
    return x, D, stride


def _grid(n: int) -> tuple[int]:
    return (triton.cdiv(n, BLOCK),)


def _act_fwd_triton(x: torch.Tensor, act: int, param: float = 1.0) -> torch.Tensor:
    x, D, s_x = _rows(x)
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel():
        act_fwd_kernel[_grid(x.numel())](x, y, x.numel(), D, s_x, param, ACT=act, STRIDED=s_x != D, BLOCK=BLOCK)
    return y


def _act_bwd_triton(x: torch.Tensor, dy: torch.Tensor, act: int, param: float = 1.0) -> torch.Tensor:
    (x, D, s_x), (dy, _, s_dy) = _rows(x), _rows(dy)
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel():
        act_bwd_kernel[_grid(x.numel())](x, dy, dx, x.numel(), D, s_x, s_dy, param, ACT=act,
                                         STRIDED=s_x != D or s_dy != D, BLOCK=BLOCK)
    return dx


def _glu_fwd_triton(x: torch.Tensor, y: torch.Tensor, act: int, param: float = 1.0) -> torch.Tensor:
    (x, D, s_x), (y, _, s_y) = _rows(x), _rows(y)
    z = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel():
        glu_fwd_kernel[_grid(x.numel())](x, y, z, x.numel(), D, s_x, s_y, param, ACT=act,
                                         STRIDED=s_x != D or s_y != D, BLOCK=BLOCK)
    return z


def _glu_bwd_triton(x: torch.Tensor, y: torch.Tensor, dz: torch.Tensor, act: int, param: float = 1.0,
                    want_z: bool = False):
    (x, D, s_x), (y, _, s_y), (dz, _, s_dz) = _rows(x), _rows(y), _rows(dz)
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    dy = torch.empty(y.shape, dtype=y.dtype, device=y.device)
    z = torch.empty(x.shape, dtype=x.dtype, device=x.device) if want_z else None
    if x.numel():
        glu_bwd_kernel[_grid(x.numel())](x, y, dz, dx, dy, z if want_z else dx, x.numel(), D, s_x, s_y, s_dz, param,
                                         ACT=act, WRITE_Z=want_z, STRIDED=s_x != D or s_y != D or s_dz != D,
                                         BLOCK=BLOCK)
    return dx, dy, z


def _act_torch(x: torch.Tensor, act: int, param: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The PyTorch twin of `_act`: (act(x), act'(x)) for x already in float32 (or float64)."""
    s = torch.sigmoid(x)
    if act == SIGMOID:
        return s, s * (1 - s)
    if act == LOGSIGMOID:
        return F.logsigmoid(x) / param, (1 - s) / param
    if act == SWISH:
        return x * s, s * (1 + x * (1 - s))
    if act == ELU_P1:
        e = x.clamp_max(0).exp()
        return torch.where(x >= 0, x + 1, e), e
    if act == SQRELU:
        r = x.clamp_min(0)
        return r * r, 2 * r
    if act == GELU:
        t = torch.tanh(_GELU_C * x * (1 + _GELU_A * x * x))
        return 0.5 * x * (1 + t), 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _GELU_C * (1 + 3 * _GELU_A * x * x)
    if act == POW:
        pos = x > 0
        xp = torch.where(pos, x, torch.ones_like(x))
        r, ln = xp.sqrt(), xp.log()
        p = param / (r + 1)
        gate = torch.exp(p * ln) * s
        dexp = -param / (2 * r * (r + 1) ** 2) * ln + p / xp
        return (torch.where(pos, gate, x * s),
                torch.where(pos, gate * (dexp + 1 - s), s * (1 + x * (1 - s))))
    raise ValueError(f"unknown activation code {act}")


def _f32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _act_fwd_torch(x, act, param=1.0):
    return _act_torch(_f32(x), act, param)[0].to(x.dtype)


def _act_bwd_torch(x, dy, act, param=1.0):
    return (_f32(dy) * _act_torch(_f32(x), act, param)[1]).to(x.dtype)


def _glu_fwd_torch(x, y, act, param=1.0):
    return (_act_torch(_f32(x), act, param)[0] * _f32(y)).to(x.dtype)


def _glu_bwd_torch(x, y, dz, act, param=1.0, want_z=False):
    gate, d = _act_torch(_f32(x), act, param)
    y32, dz32 = _f32(y), _f32(dz)
    z = (gate * y32).to(x.dtype) if want_z else None
    return (dz32 * y32 * d).to(x.dtype), (dz32 * gate).to(y.dtype), z


def _eager_when_interpreted(launcher):
    """torch.compile would trace into the interpreter's numpy code and fail there, so under TRITON_INTERPRET the
    Triton launchers run eagerly (a graph break); on a GPU dynamo captures the kernel launch itself."""
    return torch.compiler.disable(launcher) if is_interpreter() else launcher


# The block launchers: Triton on CUDA and under the interpreter, the PyTorch twins on a plain CPU.
act_fwd = dispatch(_eager_when_interpreted(_act_fwd_triton), _act_fwd_torch)
act_bwd = dispatch(_eager_when_interpreted(_act_bwd_triton), _act_bwd_torch)
glu_fwd = dispatch(_eager_when_interpreted(_glu_fwd_triton), _glu_fwd_torch)
glu_bwd = dispatch(_eager_when_interpreted(_glu_bwd_triton), _glu_bwd_torch)


class ActivationFunction(torch.autograd.Function):
    """y = act(x); saves x only."""

    @staticmethod
    def forward(ctx, x, act, param):
        ctx.save_for_backward(x)
        ctx.act, ctx.param = act, param
        return act_fwd(x, act, param)

    @staticmethod
    def backward(ctx, dy):
        x, = ctx.saved_tensors
        return act_bwd(x, dy, ctx.act, ctx.param), None, None


class GLUFunction(torch.autograd.Function):
    """z = gate(x) * y; saves x and y only."""

    @staticmethod
    def forward(ctx, x, y, act, param):
        ctx.save_for_backward(x, y)
        ctx.act, ctx.param = act, param
        return glu_fwd(x, y, act, param)

    @staticmethod
    def backward(ctx, dz):
        x, y = ctx.saved_tensors
        dx, dy, _ = glu_bwd(x, y, dz, ctx.act, ctx.param)
        return dx, dy, None, None


class GLULinearFunction(torch.autograd.Function):
    """out = F.linear(gate(x) * y, weight, bias); saves x, y and weight, not the product: backward recomputes it
    in the same kernel that computes dx and dy. custom_fwd/bwd: under CUDA autocast backward sees the dtypes that
    forward saw."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, x, y, weight, bias, act, param):
        ctx.save_for_backward(x, y, weight)
        ctx.act, ctx.param, ctx.bias_dtype = act, param, None if bias is None else bias.dtype
        return F.linear(glu_fwd(x, y, act, param), weight, bias)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, dout):
        x, y, weight = ctx.saved_tensors
        dout2 = dout.reshape(-1, dout.shape[-1])
        need_xy, need_w = ctx.needs_input_grad[0] or ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        dx = dy = dw = db = z = None
        if need_xy:
            dz = (dout2 @ weight.to(dout2.dtype)).reshape(x.shape)
            dx, dy, z = glu_bwd(x, y, dz, ctx.act, ctx.param, want_z=need_w)
        elif need_w:
            z = glu_fwd(x, y, ctx.act, ctx.param)
        if need_w:
            dw = (dout2.t() @ z.reshape(-1, z.shape[-1]).to(dout2.dtype)).to(weight.dtype)
        if ctx.bias_dtype is not None and ctx.needs_input_grad[3]:
            db = dout2.sum(0).to(ctx.bias_dtype)
        return dx, dy, dw, db, None, None


# --- checks -------------------------------------------------------------------------------------------------------

def _check_x(name: str, x) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"{name} needs a floating-point tensor x (got {getattr(x, 'dtype', type(x).__name__)})")


def _check_pair(name: str, x, y) -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor) or x.shape != y.shape or x.dtype != y.dtype:
        raise ValueError(
            f"{name} needs x and y of the same shape and dtype (got {getattr(x, 'shape', x)} "
            f"{getattr(x, 'dtype', '')} and {getattr(y, 'shape', y)} {getattr(y, 'dtype', '')})"
        )
    _check_x(name, x)


def _check_linear(name: str, x, y, weight, bias) -> None:
    _check_pair(name, x, y)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2 or weight.shape[1] != x.shape[-1]:
        raise ValueError(f"{name} needs weight [out_features, {x.shape[-1]}] (x's last dim) "
                         f"(got {list(getattr(weight, 'shape', [weight]))})")
    if bias is not None and (not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (weight.shape[0],)):
        raise ValueError(f"{name} needs bias [{weight.shape[0]}] or None (got {list(getattr(bias, 'shape', [bias]))})")


def _number(name: str, what: str, value, nonzero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (nonzero and value == 0):
        raise ValueError(f"{name}: {what} must be a {'nonzero ' if nonzero else ''}number (got {value!r})")
    return float(value)


# --- the public functions -------------------------------------------------------------------------------------------

def sigmoid(x: torch.Tensor) -> torch.Tensor:
    """1 / (1 + exp(-x)) elementwise; x: any shape -> same shape and dtype."""
    _check_x("sigmoid", x)
    return ActivationFunction.apply(x, SIGMOID, 1.0)


def logsigmoid(x: torch.Tensor, temperature: float = 1.) -> torch.Tensor:
    """log(sigmoid(x)) / temperature elementwise (GLA's gate normalizer); x: any shape -> same shape and dtype."""
    _check_x("logsigmoid", x)
    return ActivationFunction.apply(x, LOGSIGMOID, _number("logsigmoid", "temperature", temperature, nonzero=True))


def swish(x: torch.Tensor) -> torch.Tensor:
    """x * sigmoid(x) (silu) elementwise; x: any shape -> same shape and dtype."""
    _check_x("swish", x)
    return ActivationFunction.apply(x, SWISH, 1.0)


def elu_p1(x: torch.Tensor) -> torch.Tensor:
    """elu(x) + 1 elementwise, exp(x) for x < 0 computed as such (no cancellation); any shape -> same."""
    _check_x("elu_p1", x)
    return ActivationFunction.apply(x, ELU_P1, 1.0)


def sqrelu(x: torch.Tensor) -> torch.Tensor:
    """relu(x) ** 2 elementwise (RWKV's channel mix); any shape -> same shape and dtype."""
    _check_x("sqrelu", x)
    return ActivationFunction.apply(x, SQRELU, 1.0)


def fast_gelu_impl(x: torch.Tensor) -> torch.Tensor:
    """GELU in its tanh form, `F.gelu(x, approximate="tanh")`, elementwise; any shape -> same shape and dtype."""
    _check_x("fast_gelu_impl", x)
    return ActivationFunction.apply(x, GELU, 1.0)


def bias_gelu_impl(input: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """fast_gelu_impl(input + bias) in input's dtype; bias broadcasts over input's leading dims ([..., D] + [D])."""
    _check_x("bias_gelu_impl", input)
    return fast_gelu_impl((input + bias).to(input.dtype))


def swiglu(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """swish(x) * y elementwise; x, y of the same shape and dtype -> that shape and dtype."""
    _check_pair("swiglu", x, y)
    return GLUFunction.apply(x, y, SWISH, 1.0)


def sigmoidglu(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """sigmoid(x) * y elementwise; x, y of the same shape and dtype -> that shape and dtype."""
    _check_pair("sigmoidglu", x, y)
    return GLUFunction.apply(x, y, SIGMOID, 1.0)


def powglu(x: torch.Tensor, y: torch.Tensor, power: float = 3.0) -> torch.Tensor:
    """PowGLU: gate(x) * y with gate(x) = x ** (power / (sqrt(x) + 1)) * sigmoid(x) for x > 0, swish(x) otherwise;
    x, y of the same shape and dtype -> that shape and dtype."""
    _check_pair("powglu", x, y)
    return GLUFunction.apply(x, y, POW, _number("powglu", "power", power))


def swiglu_linear(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`F.linear(swiglu(x, y), weight, bias)` without keeping the product for backward.
    x, y: [..., D]; weight: [O, D]; bias: [O] or None -> [..., O]."""
    _check_linear("swiglu_linear", x, y, weight, bias)
    return GLULinearFunction.apply(x, y, weight, bias, SWISH, 1.0)


def sigmoidglu_linear(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor,
                      bias: torch.Tensor | None) -> torch.Tensor:
    """`F.linear(sigmoidglu(x, y), weight, bias)`, the product recomputed in backward as in `swiglu_linear`."""
    _check_linear("sigmoidglu_linear", x, y, weight, bias)
    return GLULinearFunction.apply(x, y, weight, bias, SIGMOID, 1.0)


def powglu_linear(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  power: float = 3.0) -> torch.Tensor:
    """`F.linear(powglu(x, y, power), weight, bias)`, the product recomputed in backward as in `swiglu_linear`."""
    _check_linear("powglu_linear", x, y, weight, bias)
    return GLULinearFunction.apply(x, y, weight, bias, POW, _number("powglu_linear", "power", power))


ACT2FN = {
    "relu": F.relu,
    "sigmoid": sigmoid,
    "logsigmoid": logsigmoid,
    "silu": swish,
    "swish": swish,
    "sqrelu": sqrelu,
    "gelu": fast_gelu_impl,
    "bias_gelu": bias_gelu_impl,
}


# --- the peer's launcher and helper names: no autograd, outputs dense (output_contiguous changes nothing) --------

def sigmoid_fwd(x: torch.Tensor, output_contiguous: bool = False) -> torch.Tensor:
    return act_fwd(x, SIGMOID)


def sigmoid_bwd(x: torch.Tensor, dy: torch.Tensor, output_contiguous: bool = False) -> torch.Tensor:
    return act_bwd(x, dy, SIGMOID)


def logsigmoid_fwd(x: torch.Tensor, temperature: float = 1., output_contiguous: bool = False) -> torch.Tensor:
    return act_fwd(x, LOGSIGMOID, float(temperature))


def logsigmoid_bwd(x: torch.Tensor, dy: torch.Tensor, temperature: float = 1.,
                   output_contiguous: bool = False) -> torch.Tensor:
    return act_bwd(x, dy, LOGSIGMOID, float(temperature))


def swish_fwd(x: torch.Tensor, output_contiguous: bool = False) -> torch.Tensor:
    return act_fwd(x, SWISH)


def swish_bwd(x: torch.Tensor, dy: torch.Tensor, output_contiguous: bool = False) -> torch.Tensor:
    return act_bwd(x, dy, SWISH)


def elu_p1_fwd(x: torch.Tensor) -> torch.Tensor:
    return act_fwd(x, ELU_P1)


def elu_p1_bwd(x: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    return act_bwd(x, dy, ELU_P1)


def gelu_fwd(x: torch.Tensor) -> torch.Tensor:
    return act_fwd(x, GELU)


def gelu_bwd(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The gradient of `gelu_fwd` for the output gradient g (note the order: g first)."""
    return act_bwd(x, g, GELU)


def bias_gelu(y: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return gelu_fwd((y + bias).to(y.dtype))


def bias_gelu_bwd(g: torch.Tensor, y: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(d y, d bias) of `bias_gelu` for y [N, D], bias [D] and the output gradient g [N, D]."""
    grad = gelu_bwd(g, (y + bias).to(y.dtype))
    return grad, grad.sum(0, dtype=bias.dtype)


def sqrelu_fwd(x: torch.Tensor) -> torch.Tensor:
    return act_fwd(x, SQRELU)


def sqrelu_bwd(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return act_bwd(x, g, SQRELU)


def relu_bwd(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, g, torch.zeros_like(g)).to(x.dtype)


def swiglu_fwd(x: torch.Tensor, y: torch.Tensor, output_contiguous: bool = False) -> torch.Tensor:
    return glu_fwd(x, y, SWISH)


def swiglu_fwdbwd(x: torch.Tensor, y: torch.Tensor, g: torch.Tensor, use_weight: bool = False,
                  output_contiguous: bool = False):
    """(dx, dy), and with use_weight also z = swiglu(x, y), for the output gradient g."""
    return glu_bwd(x, y, g, SWISH, 1.0, use_weight)[:3 if use_weight else 2]


def sigmoidglu_fwd(x: torch.Tensor, y: torch.Tensor, output_contiguous: bool = False) -> torch.Tensor:
    return glu_fwd(x, y, SIGMOID)


def sigmoidglu_fwdbwd(x: torch.Tensor, y: torch.Tensor, g: torch.Tensor, use_weight: bool = False,
                      output_contiguous: bool = False):
    return glu_bwd(x, y, g, SIGMOID, 1.0, use_weight)[:3 if use_weight else 2]


def powglu_fwd(x: torch.Tensor, y: torch.Tensor, power: float = 3.0, output_contiguous: bool = False) -> torch.Tensor:
    return glu_fwd(x, y, POW, float(power))


def powglu_fwdbwd(x: torch.Tensor, y: torch.Tensor, g: torch.Tensor, power: float = 3.0, use_weight: bool = False,
                  output_contiguous: bool = False):
    return glu_bwd(x, y, g, POW, float(power), use_weight)[:3 if use_weight else 2]


__all__ = [
    "ACT2FN", "elu_p1", "fast_gelu_impl", "logsigmoid", "powglu", "powglu_linear", "sigmoid", "sigmoidglu",
    "sigmoidglu_linear", "sqrelu", "swiglu", "swiglu_linear", "swish",
]
