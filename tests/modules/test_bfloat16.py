"""bfloat16 inputs: the Triton kernels (no tl.dot in them, so the interpreter computes bf16 right) agree with the
PyTorch twins to bf16 rounding, outputs and every gradient."""
import pytest
import torch

from fla.modules import FusedCrossEntropyLoss, FusedRMSNormGated, RMSNorm, RotaryEmbedding, ShortConvolution, swiglu
from fla.ops.utils.dispatch import use_backend
from tests.helpers import assert_close, seed

dt = torch.bfloat16
NAMES = ["rms_norm", "rms_norm_gated", "short_conv", "rotary", "swiglu", "cross_entropy"]


def make(name):
    """f(x, g) -> output for two [4, 33, 128] bf16 inputs (some modules use only one of them)."""
    if name == "rms_norm":
        norm = RMSNorm(128, dtype=dt)
        return lambda x, g: norm(x, g, prenorm=True)[0]
    if name == "rms_norm_gated":
        return FusedRMSNormGated(128, dtype=dt)
    if name == "short_conv":
        conv = ShortConvolution(128, bias=True).to(dt)
        return lambda x, g: conv(x)[0]
    if name == "rotary":
        rope = RotaryEmbedding(32)
        return lambda x, g: torch.cat(rope(x.view(4, 33, 4, 32), g.view(4, 33, 4, 32)), 2)
    if name == "swiglu":
        return swiglu
    return lambda x, g: FusedCrossEntropyLoss()(x.view(4, -1), torch.tensor([3, 700, 1200, 4000]))


@pytest.mark.parametrize("name", NAMES)
def test_bf16_triton_matches_torch_twin(name):
    seed(name)
    fn = make(name)
    inputs = torch.randn(4, 33, 128, dtype=dt), torch.randn(4, 33, 128, dtype=dt)
    results = {}
    for backend in ("triton", "torch"):
        x, g = (t.clone().requires_grad_() for t in inputs)
        with use_backend(backend):
            out = fn(x, g)
            out.float().sum().backward()
        results[backend] = [out] + [t.grad if t.grad is not None else torch.zeros(1) for t in (x, g)]
    for label, got, want in zip(["out", "dx", "dg"], results["triton"], results["torch"]):
        assert got.dtype == want.dtype
        assert_close(label, got, want, 1e-2)
