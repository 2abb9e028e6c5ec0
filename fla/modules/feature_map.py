"""Feature maps phi for linear attention (the peer library's `fla.modules.feature_map`): q, k -> phi(q), phi(k), so
that phi(q) . phi(k) stands in for a kernel of q . k. Plain PyTorch modules over our fused norms and activations.
The learned ones keep the peer's parameter names (`layer`, `layer1`, `layer2`, `gamma`, `beta`, `sketches1/2`), so
checkpoints load. `fla.layers.feature_maps` builds LinearAttention's and GLA's maps by name from these.

Widths (D = head_dim): hedgehog 2D, dpfp 2 nu D, outer product F(F+1)/2 (F = feature_dim), poly sketch S(S+1)/2
(S = sketch_size), taylor 1 + D + D(D+1)/2, rebased D(D+1)/2; the others keep D.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from fla.modules.activations import fast_gelu_impl, sigmoid, sqrelu, swish
from fla.modules.layernorm import layer_norm

__all__ = [
    "DPFPFeatureMap", "GELUFeatureMap", "HadamardFeatureMap", "HedgehogFeatureMap", "LearnableOuterProductFeatureMap",
    "LearnablePolySketchNonNegativeFeatureMap", "ReLUFeatureMap", "RebasedFeatureMap", "SigmoidFeatureMap",
    "SquaredReLUFeatureMap", "SwishFeatureMap", "T2RFeatureMap", "TaylorFeatureMap", "flatten_diag_outer_product",
    "flatten_diag_outer_product_off1", "is_power_of_2",
]


@functools.lru_cache(maxsize=None)
def _upper(n: int, offset: int, device: torch.device) -> torch.Tensor:
    """Row/column indices [2, M] of the upper triangle of an n x n matrix from diagonal `offset` (built once)."""
    return torch.triu_indices(n, n, offset, device=device)


def flatten_diag_outer_product(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[..., n], [..., n] -> [..., n(n+1)/2]: x_i y_j for i <= j, row by row (the upper triangle of x y^T)."""
    i, j = _upper(x.shape[-1], 0, x.device)
    return x[..., i] * y[..., j]


def flatten_diag_outer_product_off1(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """([..., n(n-1)/2] x_i y_j for i < j, [..., n] the diagonal x_i y_i)."""
    i, j = _upper(x.shape[-1], 1, x.device)
    return x[..., i] * y[..., j], x * y


def is_power_of_2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


class HedgehogFeatureMap(nn.Module):
    """Hedgehog (Zhang et al., 2024): softmax over [2 W x, -2 W x], a learned linear W + bias; [.., D] -> [.., 2D]."""

    def __init__(self, head_dim: int):
        super().__init__()
        self.layer = nn.Linear(head_dim, head_dim)
        self.init_weights_()

    @torch.no_grad()
    def init_weights_(self) -> None:
        """W = identity, bias 0 (a model's init redraws it as it does every linear layer)."""
        nn.init.eye_(self.layer.weight)
        nn.init.zeros_(self.layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = 2 * self.layer(x)
        return torch.cat([y, -y], dim=-1).softmax(-1)


class T2RFeatureMap(nn.Module):
    """T2R (Kasai et al., 2021): relu(W x), W a learned [dot_dim, head_dim] map (dot_dim defaults to head_dim)."""

    def __init__(self, head_dim: int, dot_dim: int | None = None, bias: bool | None = False):
        super().__init__()
        self.head_dim, self.dot_dim, self.bias = head_dim, dot_dim or head_dim, bool(bias)
        self.layer = nn.Linear(head_dim, self.dot_dim, bias=self.bias)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, dot_dim={self.dot_dim}, bias={self.bias}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x).relu()


class HadamardFeatureMap(nn.Module):
    """The elementwise product (W1 x + b1) * (W2 x + b2) of two learned linear maps."""

    def __init__(self, head_dim: int):
        super().__init__()
        self.layer1 = nn.Linear(head_dim, head_dim)
        self.layer2 = nn.Linear(head_dim, head_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer1(x) * self.layer2(x)


class DPFPFeatureMap(nn.Module):
    """DPFP (Schlag et al., 2021): r = [relu(x), relu(-x)] times its rolls by 1..nu; [.., D] -> [.., 2 nu D]."""

    def __init__(self, head_dim: int, nu: int = 4):
        super().__init__()
        self.nu = nu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = torch.cat([x.relu(), (-x).relu()], dim=-1)
        rolled = torch.cat([r.roll(shifts=j, dims=-1) for j in range(1, self.nu + 1)], dim=-1)
        return torch.cat([r] * self.nu, dim=-1) * rolled


class LearnableOuterProductFeatureMap(nn.Module):
    """The upper triangle of (W1 x)(W2 x)^T, two learned [feature_dim, head_dim] maps without bias."""

    def __init__(self, head_dim: int, feature_dim: int):
        super().__init__()
        self.layer1 = nn.Linear(head_dim, feature_dim, bias=False)
        self.layer2 = nn.Linear(head_dim, feature_dim, bias=False)
        self.normalizer = feature_dim ** -0.5  # kept as the peer has it; not applied in forward there either

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return flatten_diag_outer_product(self.layer1(x), self.layer2(x))


class LearnablePolySketchNonNegativeFeatureMap(nn.Module):
    """A learned sketch of the degree-p polynomial kernel (Kacham et al., PolySketchFormer), kept non-negative by
    a final self outer product: LayerNorm(x; gamma, beta), then log2(p) - 1 products of two learned maps (each
    scaled by head_dim^-1/2), then the upper triangle of s s^T. degree: a power of 2, at least 2."""

    def __init__(self, head_dim: int, sketch_size: int | None = None, degree: int | None = 2):
        super().__init__()
        if not isinstance(degree, int) or degree < 2 or not is_power_of_2(degree):
            raise ValueError(f"degree must be a power of 2 of at least 2 (got {degree})")
        self.head_dim, self.sketch_size, self.degree = head_dim, sketch_size or head_dim, degree
        self.gamma = nn.Parameter(torch.ones(head_dim))
        self.beta = nn.Parameter(torch.zeros(head_dim))
        steps = int(math.log2(degree)) - 1
        for name in ("sketches1", "sketches2"):
            setattr(self, name, nn.ModuleList(
                [nn.Linear(head_dim if s == 0 else self.sketch_size, self.sketch_size, bias=False)
                 for s in range(steps)]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = layer_norm(x, self.gamma, self.beta)
        for a, b in zip(self.sketches1, self.sketches2):
            x = a(x) * b(x) * self.head_dim ** -0.5
        return flatten_diag_outer_product(x, x)


class TaylorFeatureMap(nn.Module):
    """The second-order Taylor expansion of exp(q . k / sqrt(D)): phi(q) . phi(k) = 1 + s + s^2 / 2, s = q.k/sqrt(D).
    [.., D] -> [.., 1 + D + D + D(D-1)/2] = [1, x / D^1/4, x_i^2 / sqrt(2D), x_i x_j / sqrt(D) for i < j]."""

    def __init__(self, head_dim: int):
        super().__init__()
        self.head_dim = head_dim
        self.r2, self.rd, self.rrd = math.sqrt(2), math.sqrt(head_dim), head_dim ** 0.25

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        off, diag = flatten_diag_outer_product_off1(x, x)
        return torch.cat([torch.ones_like(x[..., :1]), x / self.rrd, diag / (self.rd * self.r2), off / self.rd], -1)


class RebasedFeatureMap(nn.Module):
    """ReBased (Aksenov et al., 2024): x' = LayerNorm(x) with learned gamma/beta (or the affine alone), then the
    quadratic map with phi(q) . phi(k) = (q' . k')^2 / D: [x_i^2 / sqrt(D), x_i x_j sqrt(2 / D) for i < j].
    forward(x, flatten=False) returns x' alone. Supported: normalize with any of gamma/beta, or gamma (+ beta)."""

    def __init__(self, head_dim: int, use_gamma: bool | None = True, use_beta: bool | None = True,
                 normalize: bool | None = True):
        super().__init__()
        if not normalize and not use_gamma:
            raise ValueError("RebasedFeatureMap needs normalize=True or use_gamma=True (use_beta alone is not a map "
                             f"the peer supports either): got use_gamma={use_gamma}, use_beta={use_beta}, "
                             f"normalize={normalize}")
        self.head_dim, self.use_gamma, self.use_beta, self.normalize = head_dim, use_gamma, use_beta, normalize
        self.gamma = nn.Parameter(torch.ones(head_dim)) if use_gamma else None
        self.beta = nn.Parameter(torch.zeros(head_dim)) if use_beta else None

    def forward(self, x: torch.Tensor, flatten: bool | None = True) -> torch.Tensor:
        if self.normalize and self.gamma is not None and self.beta is not None:
            x = layer_norm(x, self.gamma, self.beta)
        elif self.normalize:
            x = F.layer_norm(x, (self.head_dim,), self.gamma, self.beta)
        elif self.beta is not None:
            x = torch.addcmul(self.beta, x, self.gamma)
        else:
            x = x * self.gamma
        if not flatten:
            return x
        off, diag = flatten_diag_outer_product_off1(x, x)
        return torch.cat([diag * self.head_dim ** -0.5, off * (2 / self.head_dim) ** 0.5], dim=-1)


class _Elementwise(nn.Module):
    fn = staticmethod(F.relu)

    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


class ReLUFeatureMap(_Elementwise):
    """relu(x)."""
    fn = staticmethod(F.relu)


class SquaredReLUFeatureMap(_Elementwise):
    """relu(x)^2 (the fused kernel)."""
    fn = staticmethod(sqrelu)


class GELUFeatureMap(_Elementwise):
    """The tanh approximation of GELU (the fused kernel)."""
    fn = staticmethod(fast_gelu_impl)


class SwishFeatureMap(_Elementwise):
    """x * sigmoid(x) (the fused kernel)."""
    fn = staticmethod(swish)


class SigmoidFeatureMap(_Elementwise):
    """sigmoid(x) (the fused kernel)."""
    fn = staticmethod(sigmoid)
