"""LayerNorm, RMSNorm and GroupNorm with a fused residual add, their gated forms, and the norm-then-linear modules.

`r = x + residual` (when a residual is given), `c = r - mean(r)` (LayerNorm; `c = r` for RMSNorm),
`y = c / sqrt(mean(c^2) + eps) * weight + bias`, and for the gated form `y *= act(g)` with act = swish
(g * sigmoid(g)) or sigmoid. GroupNorm normalizes each of `num_groups` equal slices of the last dim on its own and
then applies the per-channel weight and bias. Every form is one Triton kernel per direction (`fla.modules.norm_kernels`)
with a PyTorch twin; the statistics are float32. The prenorm form also returns `r`, the residual stream for the next
block. The `*Linear` forms feed y into `F.linear` and save only the norm's input (and its float32 statistics): the
backward recomputes y for the linear weight's gradient instead of keeping it alive from forward to backward.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from fla.modules.norm_kernels import norm_bwd, norm_fwd
from fla.ops.utils.dispatch import dispatch

ACTIVATIONS = ("swish", "silu", "sigmoid")


def _r_dtype(x: torch.Tensor, residual: torch.Tensor | None, residual_in_fp32: bool) -> torch.dtype:
    if residual_in_fp32:
        return torch.float32
    return x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)


def _rows(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.reshape(-1, t.shape[-1]).contiguous()


def _linear_input_grad(dout, linear_weight, bias_dtype):
    """For out = F.linear(y, W, b) with dout [M, O]: dy = dout @ W [M, N] and db = sum(dout) (None without b). In
    dout's dtype: under autocast the forward's linear ran in it while W kept its own."""
    db = dout.sum(0).to(bias_dtype) if bias_dtype is not None else None
    return dout @ linear_weight.to(dout.dtype), db


def _linear_weight_grad(dout, y, linear_weight):
    """dW = dout^T y [O, N] from the recomputed y [M, N]."""
    return (dout.t() @ y.to(dout.dtype)).to(linear_weight.dtype)


class LayerNormFunction(torch.autograd.Function):
    """The Triton path of every norm: `y = norm(x + residual)` and, given linear weights, `out = F.linear(y, W, b)`.
    Saves r (x itself without a residual), g, the parameters and the [M, G] statistics, never y."""

    @staticmethod
    def forward(ctx, x, g, residual, weight, bias, linear_weight, linear_bias, eps, prenorm, residual_in_fp32,
                activation, is_rms, num_groups):
        shape = x.shape
        y, r, mean, rstd = norm_fwd(_rows(x), _rows(g), _rows(residual), weight, bias, eps, activation, is_rms,
                                    num_groups, _r_dtype(x, residual, residual_in_fp32))
        out = y.view(shape)
        if linear_weight is not None:
            out = F.linear(out, linear_weight, linear_bias)
        ctx.save_for_backward(r, _rows(g), weight, bias, mean, rstd, linear_weight)
        ctx.meta = (shape, activation, is_rms, num_groups, x.dtype, None if residual is None else residual.dtype,
                    None if linear_bias is None else linear_bias.dtype)
        return (out, r.view(shape)) if prenorm else out

    @staticmethod
    def backward(ctx, dout, dr_in=None):
        r, g2, weight, bias, mean, rstd, linear_weight = ctx.saved_tensors
        shape, activation, is_rms, num_groups, x_dtype, res_dtype, lb_dtype = ctx.meta
        M, N = r.shape
        dlw = dlb = None
        if linear_weight is not None:
            dout = dout.reshape(M, -1)
            dy, dlb = _linear_input_grad(dout, linear_weight, lb_dtype)
        else:
            dy = dout.reshape(M, N)
        dy = dy.contiguous()
        if dr_in is not None:
            dr_in = dr_in.reshape(M, N).contiguous()
        y_dtype = x_dtype if linear_weight is not None and ctx.needs_input_grad[5] else None
        dr, dg, dw, db, y = norm_bwd(dy, dr_in, r, g2, weight, bias, mean, rstd, activation, is_rms, num_groups,
                                     y_dtype)
        if y is not None:  # the recomputed y, for the linear weight's gradient
            dlw = _linear_weight_grad(dout, y, linear_weight)
        dx = dr.to(x_dtype).view(shape)
        dres = dr.to(res_dtype).view(shape) if res_dtype is not None else None
        dg = dg.view(shape) if dg is not None else None
        return dx, dg, dres, dw, db, dlw, dlb, None, None, None, None, None, None


# the kernels serve every norm here; the old name stays for code that imported it
RMSNormFunction = LayerNormFunction


def _norm_torch_y(r, g, weight, bias, eps, activation, is_rms, num_groups):
    """The PyTorch twin's y in float32 from the residual stream r [..., N] (differentiable)."""
    c = r.float().unflatten(-1, (num_groups, -1))
    if not is_rms:
        c = c - c.mean(-1, keepdim=True)
    y = (c * torch.rsqrt(c.pow(2).mean(-1, keepdim=True) + eps)).flatten(-2)
    if weight is not None:
        y = y * weight.float()
    if bias is not None:
        y = y + bias.float()
    if g is not None:
        gf = g.float()
        y = y * (torch.sigmoid(gf) if activation == "sigmoid" else gf * torch.sigmoid(gf))
    return y


class _NormLinearTorch(torch.autograd.Function):
    """The PyTorch twin of the *Linear forms, with the Triton path's memory contract: saves r, g and the parameters
    and recomputes y in backward (autograd over `_norm_torch_y` there) instead of keeping it."""

    @staticmethod
    def forward(ctx, x, g, residual, weight, bias, linear_weight, linear_bias, eps, prenorm, residual_in_fp32,
                activation, is_rms, num_groups):
        r = (x if residual is None else x + residual).to(_r_dtype(x, residual, residual_in_fp32))
        y = _norm_torch_y(r, g, weight, bias, eps, activation, is_rms, num_groups).to(x.dtype)
        ctx.save_for_backward(r, g, weight, bias, linear_weight)
        ctx.meta = (eps, activation, is_rms, num_groups, x.dtype, None if residual is None else residual.dtype,
                    None if linear_bias is None else linear_bias.dtype)
        out = F.linear(y, linear_weight, linear_bias)
        return (out, r) if prenorm else out

    @staticmethod
    def backward(ctx, dout, dr_in=None):
        r, g, weight, bias, linear_weight = ctx.saved_tensors
        eps, activation, is_rms, num_groups, x_dtype, res_dtype, lb_dtype = ctx.meta
        with torch.enable_grad():
            leaves = [None if t is None else t.detach().requires_grad_() for t in (r, g, weight, bias)]
            y = _norm_torch_y(*leaves, eps, activation, is_rms, num_groups).to(x_dtype)
        dout2 = dout.reshape(-1, dout.shape[-1])
        dy, dlb = _linear_input_grad(dout2, linear_weight, lb_dtype)
        dlw = _linear_weight_grad(dout2, y.detach().reshape(dout2.shape[0], -1), linear_weight) \
            if ctx.needs_input_grad[5] else None
        wanted = [t for t in leaves if t is not None]
        grads = iter(torch.autograd.grad(y, wanted, dy.reshape(y.shape).to(y.dtype)))
        dr, dg, dw, db = (None if t is None else next(grads) for t in leaves)
        if dr_in is not None:
            dr = dr + dr_in
        dres = dr.to(res_dtype) if res_dtype is not None else None
        return dr.to(x_dtype), dg, dres, dw, db, dlw, dlb, None, None, None, None, None, None


def _norm_triton(x, g, residual, weight, bias, eps, prenorm, residual_in_fp32, activation, is_rms, num_groups,
                 linear_weight, linear_bias):
    return _apply(LayerNormFunction, x, g, residual, weight, bias, eps, prenorm, residual_in_fp32, activation,
                  is_rms, num_groups, linear_weight, linear_bias)


def _norm_torch(x, g, residual, weight, bias, eps, prenorm, residual_in_fp32, activation, is_rms, num_groups,
                linear_weight, linear_bias):
    if linear_weight is not None:
        return _apply(_NormLinearTorch, x, g, residual, weight, bias, eps, prenorm, residual_in_fp32, activation,
                      is_rms, num_groups, linear_weight, linear_bias)
    r = (x if residual is None else x + residual).to(_r_dtype(x, residual, residual_in_fp32))
    y = _norm_torch_y(r, g, weight, bias, eps, activation, is_rms, num_groups).to(x.dtype)
    return (y, r) if prenorm else y


def _apply(fn, x, g, residual, weight, bias, eps, prenorm, residual_in_fp32, activation, is_rms, num_groups,
           linear_weight, linear_bias):
    args = (weight, bias, linear_weight, linear_bias, eps)
    if residual is None and prenorm:
        # r is x itself: let autograd route its gradient instead of returning an input from the Function.
        out = fn.apply(x, g, None, *args, False, residual_in_fp32, activation, is_rms, num_groups)
        return out, x.to(_r_dtype(x, None, residual_in_fp32))
    return fn.apply(x, g, residual, *args, prenorm, residual_in_fp32, activation, is_rms, num_groups)


_norm = dispatch(_norm_triton, _norm_torch)


def _check(x, g, residual, weight, activation, bias=None, num_groups=1, linear_weight=None, linear_bias=None):
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
    if linear_weight is not None and (linear_weight.dim() != 2 or linear_weight.shape[1] != N):
        raise ValueError(f"linear_weight must have shape [O, {N}] (got {list(linear_weight.shape)})")
    if linear_bias is not None and (linear_weight is None or linear_bias.shape != linear_weight.shape[:1]):
        raise ValueError(f"linear_bias must have shape [O] with O = linear_weight.shape[0] or be None (got "
                         f"{list(linear_bias.shape)})")


def _group_norm(x, g, residual, weight, bias, eps, prenorm, residual_in_fp32, activation, is_rms, num_groups,
                linear_weight=None, linear_bias=None):
    """Every norm and norm-then-linear goes through here: the checks, then the dispatch (Triton kernels or the
    PyTorch twin)."""
    _check(x, g, residual, weight, activation, bias, num_groups, linear_weight, linear_bias)
    return _norm(x, g, residual, weight, bias, eps, prenorm, residual_in_fp32, activation, is_rms, num_groups,
                 linear_weight, linear_bias)


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
    prenorm). Saves x (or x + residual) and the statistics, not the normed rows: backward recomputes them."""
    return _group_norm(x, None, residual, norm_weight, norm_bias, eps, prenorm, residual_in_fp32, "swish",
                       is_rms_norm, num_groups, linear_weight, linear_bias)


# the peer has both names for the one function (the same signature)
group_norm_linear = layer_norm_linear


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
    """Every norm module here: weight [N] (ones) and bias [N] (zeros), each optional, and one call into the kernels.
    Subclasses set what they are (num_groups, is_rms_norm, activation for the gated forms) and keep the peer's
    constructor and forward arguments; the forward of this base is the plain norm's."""

    num_groups, is_rms_norm, activation, gated = 1, False, "swish", False

    def __init__(self, hidden_size: int, elementwise_affine: bool = True, bias: bool = False, eps: float = 1e-5,
                 device=None, dtype=None):
        super().__init__()
        if hidden_size % self.num_groups:
            raise ValueError(f"num_groups ({self.num_groups}) must divide hidden_size ({hidden_size})")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS} (got {self.activation!r})")
        self.hidden_size, self.eps, self.elementwise_affine = hidden_size, eps, elementwise_affine
        for name, wanted in (("weight", elementwise_affine), ("bias", bias)):
            if wanted:
                setattr(self, name, nn.Parameter(torch.empty(hidden_size, device=device, dtype=dtype)))
            else:
                self.register_parameter(name, None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.weight is not None:
            nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        groups = f"num_groups={self.num_groups}, " if self.num_groups > 1 else ""
        rms = ", is_rms_norm=True" if self.is_rms_norm and self.num_groups > 1 else ""
        act = f", activation={self.activation!r}" if self.gated else ""
        return (f"{groups}{self.hidden_size}, eps={self.eps}, elementwise_affine={self.elementwise_affine}, "
                f"bias={self.bias is not None}{rms}{act}")

    def _norm(self, x, g, residual, prenorm, residual_in_fp32, linear_weight=None, linear_bias=None):
        return _group_norm(x, g, residual, self.weight, self.bias, self.eps, prenorm, residual_in_fp32,
                           self.activation, self.is_rms_norm, self.num_groups, linear_weight, linear_bias)

    def forward(self, x, residual=None, prenorm=False, residual_in_fp32=False):
        return self._norm(x, None, residual, prenorm, residual_in_fp32)


class _NormLinear(_Norm):
    """`forward(x, weight [O, N], bias [O] or None, residual=None, prenorm=False)`: the norm, then F.linear, with
    the normed rows recomputed in backward rather than saved."""

    def forward(self, x, weight, bias, residual=None, prenorm=False, residual_in_fp32=False):
        return self._norm(x, None, residual, prenorm, residual_in_fp32, weight, bias)


class _GatedNorm(_Norm):
    """`forward(x, g, residual=None, prenorm=False)`: the norm times act(g)."""

    gated = True

    def forward(self, x, g, residual=None, prenorm=False, residual_in_fp32=False):
        return self._norm(x, g, residual, prenorm, residual_in_fp32)


class _GatedNormLinear(_Norm):
    """`forward(x, g, weight [O, N] = None, bias [O] = None, residual=None, prenorm=False)`: the gated norm, then
    F.linear with the passed weights (recomputed in backward like `_NormLinear`)."""

    gated = True

    def forward(self, x, g, weight=None, bias=None, residual=None, prenorm=False, residual_in_fp32=False):
        if weight is None:
            raise ValueError("weight (the linear weight [O, N]) is required: pass the output projection's weight")
        return self._norm(x, g, residual, prenorm, residual_in_fp32, weight, bias)


class _GroupArgs:
    """GroupNorm's constructor: num_groups first, is_rms_norm after eps (the peer's order)."""

    def __init__(self, num_groups: int, hidden_size: int, elementwise_affine: bool = True, bias: bool = False,
                 eps: float = 1e-5, is_rms_norm: bool = False, device=None, dtype=None):
        self.num_groups, self.is_rms_norm = num_groups, is_rms_norm
        super().__init__(hidden_size, elementwise_affine, bias, eps, device, dtype)


class _NoBiasArgs:
    """The constructor of the norms without a bias: (hidden_size, elementwise_affine, eps, device, dtype)."""

    def __init__(self, hidden_size: int, elementwise_affine: bool = True, eps: float = 1e-5, device=None,
                 dtype=None):
        super().__init__(hidden_size, elementwise_affine, False, eps, device, dtype)


class RMSNorm(_Norm):
    """RMSNorm over the last dim with an optional fused residual add: `forward(x, residual=None, prenorm=False,
    residual_in_fp32=False)` returns norm(x + residual), and also x + residual when prenorm (as a tuple).
    Arguments and defaults (eps 1e-5) are the peer library's; the models pass their config's norm_eps."""

    is_rms_norm = True


class LayerNorm(_Norm):
    """LayerNorm over the last dim (mean-centred), otherwise as `RMSNorm`; the peer's defaults (no bias)."""


class GroupNorm(_GroupArgs, _Norm):
    """Normalizes each of num_groups equal slices of the last dim, then the per-channel affine (torch.nn.GroupNorm
    on [rows, N] unless is_rms_norm)."""


class GroupNormRef(_GroupArgs, _Norm):
    """Plain-PyTorch GroupNorm (`group_norm_ref`), the reference the peer's tests compare against."""

    def __init__(self, num_groups: int, hidden_size: int, elementwise_affine: bool = True, bias: bool = False,
                 eps: float = 1e-5, is_rms_norm: bool = False):
        super().__init__(num_groups, hidden_size, elementwise_affine, bias, eps, is_rms_norm)

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


class FusedRMSNormGated(_GatedNorm):
    """`forward(x, g, residual=None, prenorm=False)` -> rms_norm(x + residual) * weight * act(g), the output norm of
    gated linear-attention layers; act = "swish" (default, alias "silu") or "sigmoid". Arguments and defaults (eps
    1e-5) are the peer library's; the layers pass their norm_eps."""

    is_rms_norm = True

    def __init__(self, hidden_size: int, elementwise_affine: bool = True, eps: float = 1e-5, activation: str = "swish",
                 device=None, dtype=None):
        self.activation = activation
        super().__init__(hidden_size, elementwise_affine, False, eps, device, dtype)
