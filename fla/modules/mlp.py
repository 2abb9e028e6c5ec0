"""The gated MLP of the decoder blocks (SwiGLU): `down(swish(gate(x)) * up(x))`, or the peer's PowGLU.

The activation-times-up product is one elementwise kernel of `fla.modules.activations` (backward recomputes the
gate from its input instead of saving it). With `fuse_swiglu` (the peer's default) the product goes straight into
the down projection (`swiglu_linear` / `powglu_linear`): it is not kept for backward either, backward recomputes it.

PowGLU (`hidden_act="powlu"`): gate(g) = g ** (p / (sqrt(g) + 1)) * sigmoid(g) for g > 0 and silu(g) otherwise,
with p = `powglu_power`: a power that is p near 0 and falls off for large g.
"""
from __future__ import annotations

import torch
import torch.nn as nn

# re-exported: `fla.modules.mlp.swiglu_linear` etc. were their home before `activations` was
from fla.modules.activations import powglu, powglu_linear, swiglu, swiglu_linear

ACTIVATIONS = ("swish", "silu", "powlu")


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
            if power is None:
                return swiglu_linear(gate, up, self.down_proj.weight, self.down_proj.bias)
            return powglu_linear(gate, up, self.down_proj.weight, self.down_proj.bias, power)
        return self.down_proj(swiglu(gate, up) if power is None else powglu(gate, up, power))
