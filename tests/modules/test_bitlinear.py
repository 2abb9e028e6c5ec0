"""BitLinear / FusedBitLinear against a plain PyTorch straight-through reference (float64 gradients), both paths."""
import pytest
import torch
import torch.nn.functional as F

from fla.modules.fused_bitlinear import (
    BitLinear, FusedBitLinear, activation_quant, bit_linear, layer_norm_linear_quant, rms_norm_linear_quant,
    weight_quant,
)
from fla.ops.utils.dispatch import use_backend
from tests.helpers import assert_close, poisoned_empty, seed


def quantized_rows(y32):
    """The kernel's activation quantization on float32 rows: absmax 8 bits, round half away from zero."""
    s = 127 / y32.abs().amax(-1, keepdim=True).clamp(min=1e-5)
    q = y32 * s
    return (torch.sign(q) * torch.floor(q.abs() + 0.5)).clamp(-128, 127) / s


def reference(x, norm_w, norm_b, lin_w, lin_b, residual, eps, is_rms):
    """Straight through, written out: the rounded values come from float32 (as the kernel computes them), the
    gradients flow in float64 through the norm and the linear as if the roundings were the identity."""
    def norm(r):
        c = r if is_rms else r - r.mean(-1, keepdim=True)
        y = c * torch.rsqrt(c.pow(2).mean(-1, keepdim=True) + eps)
        y = y * norm_w.to(r.dtype) if norm_w is not None else y
        return y + norm_b.to(r.dtype) if norm_b is not None else y
    r = x.double() + (residual.double() if residual is not None else 0)
    y = norm(r)
    y_q = y + (quantized_rows(norm(r.float())).double() - y).detach()
    w = lin_w.double()
    w_q = w + (weight_quant(lin_w.detach()).double() - w).detach()  # in the weight's dtype, as the peer
    return F.linear(y_q, w_q, lin_b.double() if lin_b is not None else None), r


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize(
    "dtype, is_rms, norm_bias, linear_bias, residual, prenorm",
    [
        (torch.float32, True, False, True, False, False),
        (torch.float16, True, False, False, False, True),
        (torch.float32, False, True, False, True, True),  # LayerNorm, residual, the returned r
        (torch.float16, False, True, True, True, False),
    ],
)
def test_layer_norm_linear_quant_matches_reference(backend, dtype, is_rms, norm_bias, linear_bias, residual,
                                                   prenorm):
    seed(backend, dtype, is_rms, norm_bias, linear_bias, residual, prenorm)
    B, T, N, O = 2, 19, 50, 33  # odd sizes: a padded row block, rows not a multiple of the block
    x = torch.randn(B, T, N).to(dtype).requires_grad_()
    res = torch.randn(B, T, N).to(dtype).requires_grad_() if residual else None
    nw = (1 + 0.2 * torch.randn(N)).requires_grad_()
    nb = (0.1 * torch.randn(N)).requires_grad_() if norm_bias else None
    lw = (torch.randn(O, N) / N ** 0.5).to(dtype).requires_grad_()
    lb = torch.randn(O).to(dtype).requires_grad_() if linear_bias else None
    inputs = [t for t in (x, res, nw, nb, lw, lb) if t is not None]
    eps = 1e-6
    with use_backend(backend), poisoned_empty():
        in_fp32 = dtype == torch.float16  # r in float32 (returned when prenorm)
        out = layer_norm_linear_quant(x, nw, nb, lw, lb, res, eps, prenorm, in_fp32, is_rms)
        out, r = out if prenorm else (out, None)
        do = torch.randn_like(out)
        dr = torch.randn_like(r) if prenorm else None
        grads = torch.autograd.grad((out, r) if prenorm else out, inputs, (do, dr) if prenorm else do)
    assert out.dtype == dtype and out.shape == (B, T, O)
    out_ref, r_ref = reference(x, nw, nb, lw, lb, res, eps, is_rms)
    targets = (out_ref, r_ref) if prenorm else out_ref
    grads_ref = torch.autograd.grad(targets, inputs, (do.double(), dr.double()) if prenorm else do.double())
    rel = 1e-5 if dtype == torch.float32 else 3e-3
    assert_close("out", out, out_ref, rel)
    if prenorm:
        assert r.dtype == (torch.float32 if in_fp32 else dtype)
        assert_close("r", r, r_ref, rel)
    names = [n for n, t in zip(["dx", "dres", "dnorm_w", "dnorm_b", "dlin_w", "dlin_b"], (x, res, nw, nb, lw, lb))
             if t is not None]
    for name, g, g_ref in zip(names, grads, grads_ref):
        assert g.dtype == dict(zip(names, inputs))[name].dtype
        assert_close(name, g, g_ref, rel if name != "dlin_w" else 2 * rel)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_fused_bitlinear_matches_bitlinear(backend):
    """The two modules agree (float32: only exact rounding ties could differ), and both match the reference."""
    seed(backend)
    fused = FusedBitLinear(40, 27, bias=True)
    plain = BitLinear(40, 27, bias=True)
    plain.load_state_dict(fused.state_dict())
    x = torch.randn(3, 11, 40, requires_grad=True)
    with use_backend(backend), poisoned_empty():
        outs = [m(x) for m in (fused, plain)]
        do = torch.randn_like(outs[0])
        grads = [torch.autograd.grad(o, [x, *m.parameters()], do) for o, m in zip(outs, (fused, plain))]
    out_ref, _ = reference(x, fused.norm.weight, None, fused.weight, fused.bias, None, 1e-8, True)
    assert_close("fused", outs[0], out_ref, 1e-5)
    assert_close("plain", outs[1], out_ref, 1e-5)
    for name, a, b in zip(["dx", "dw", "db", "dnorm_w"], *grads):
        assert_close(name, a, b, 1e-5)
    # bit_linear is the functional form of the same
    with use_backend(backend):
        assert_close("bit_linear", bit_linear(x, fused.weight, fused.bias, fused.norm.weight), outs[0], 1e-6)


def test_quantizers():
    seed("quant")
    x = torch.randn(7, 50) * torch.rand(7, 1) * 10
    q = activation_quant(x)
    scale = 127 / x.abs().amax(-1, keepdim=True)
    levels = q * scale
    assert_close("levels", levels, levels.round(), 1e-6)  # integers
    assert levels.abs().max() <= 127.5 and (q - x).abs().le(0.5 / scale + 1e-6).all()
    w = torch.randn(33, 50)
    wq = weight_quant(w)
    a = w.abs().mean()
    assert set((wq / a).round().unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert_close("ternary", wq, (w / a).round().clamp(-1, 1) * a, 1e-6)
    assert activation_quant(torch.zeros(2, 4)).abs().max() == 0  # the 1e-5 floor, not a division by zero


def test_rejects_bad_shapes():
    x, lw = torch.randn(4, 16), torch.randn(8, 16)
    with pytest.raises(ValueError, match="linear_weight must be"):
        layer_norm_linear_quant(x, None, None, torch.randn(8, 12), None)
    with pytest.raises(ValueError, match="linear_bias must be"):
        layer_norm_linear_quant(x, None, None, lw, torch.randn(5))
    with pytest.raises(ValueError, match="weight must have shape"):
        rms_norm_linear_quant(x, torch.randn(12), None, lw, None)
    with pytest.raises(ValueError, match="residual must be"):
        rms_norm_linear_quant(x, None, None, lw, None, residual=torch.randn(4, 12))
