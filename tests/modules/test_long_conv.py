"""Long convolution (FFT) against the token-by-token causal convolution in float64, forward and every gradient."""
import pytest
import torch
import torch.nn.functional as F

from fla.modules import ImplicitLongConvolution, LongConvolution
from fla.modules.convolution import LongConvolution as LongConvolutionAtPeerPath
from fla.modules.long_conv import PositionalEmbedding, fft_conv
from tests.helpers import assert_close, seed


def direct_conv(u, k, k_rev=None):
    """y[b, h, t] = u[b, h, t] + sum_{j <= t} k[h, j] u[b, h, t - j] (+ sum_j k_rev[h, j] u[b, h, t + j]), one
    output at a time, float64. u: [B, H, T]; k, k_rev: [H, L] (taps past L are zero)."""
    u, k = u.double(), k.double().reshape(-1, k.shape[-1])
    T = u.shape[-1]
    outs = []
    for t in range(T):
        taps = min(t + 1, k.shape[-1])
        y = u[..., t] + (k[:, :taps] * u[..., t - taps + 1:t + 1].flip(-1)).sum(-1)
        if k_rev is not None:
            kr = k_rev.double().reshape(-1, k_rev.shape[-1])
            n = min(T - t, kr.shape[-1])
            y = y + (kr[:, :n] * u[..., t:t + n]).sum(-1)
        outs.append(y)
    return torch.stack(outs, -1)


# max_len 50 > T: the filter's later taps must not reach the past (the peer's fft_conv wraps them around);
# max_len 9 < T: zero-padded; T = 1: one tap
@pytest.mark.parametrize("B, T, H, max_len", [(2, 37, 5, 50), (1, 23, 4, 9), (2, 1, 3, 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_long_conv_matches_direct(B, T, H, max_len, dtype):
    seed(B, T, H, max_len, dtype)
    conv = LongConvolution(H, max_len)
    x = torch.randn(B, T, H).to(dtype).requires_grad_()
    y = conv(x)
    assert y.dtype == dtype and y.shape == x.shape
    dy = torch.randn_like(y)
    dx, dk = torch.autograd.grad(y, (x, conv.filter), dy)
    ref = direct_conv(x.transpose(1, 2), conv.filter).transpose(1, 2)
    dx_ref, dk_ref = torch.autograd.grad(ref, (x, conv.filter), dy.double())
    rel = 1e-5 if dtype == torch.float32 else 2e-3
    assert_close("y", y, ref, rel)
    assert_close("dx", dx, dx_ref, rel)
    assert_close("dfilter", dk, dk_ref, rel)
    if max_len > T:
        assert dk[:, T:].abs().max() == 0  # taps past the sequence do not take part


def test_long_conv_is_causal():
    seed("causal")
    conv = LongConvolution(4, 64)
    x = torch.randn(1, 10, 4, requires_grad=True)
    (dx,) = torch.autograd.grad(conv(x)[0, 3].sum(), x)
    # FFT round-off only (~1e-7) on the future inputs; the peer's filter, longer than T + 1, gives them ~1
    assert dx[0, 4:].abs().max() < 1e-5 and dx[0, :4].abs().min() > 1e-2


@pytest.mark.parametrize("T, max_len, d_emb", [(29, 40, 5), (40, 40, 3)])
def test_implicit_long_conv_matches_direct(T, max_len, d_emb):
    seed(T, max_len, d_emb)
    conv = ImplicitLongConvolution(6, max_len, d_emb=d_emb, d_hidden=8)
    x = torch.randn(2, T, 6, requires_grad=True)
    params = [x, *conv.mlp.parameters()]
    y = conv(x)
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, params, dy)
    # the filter from the same MLP in float64, then the direct convolution
    mlp64 = [m.double() if isinstance(m, torch.nn.Linear) else m for m in conv.mlp]
    z = conv.pos_emb.z[:, :T].double()
    k = mlp64[2](mlp64[1](mlp64[0](z))).transpose(1, 2)
    ref = direct_conv(x.transpose(1, 2), k[0]).transpose(1, 2)
    grads_ref = torch.autograd.grad(ref, params, dy.double())
    assert_close("y", y, ref, 1e-5)
    for name, g, g_ref in zip(["dx", "dw1", "db1", "dw2", "db2"], grads, grads_ref):
        assert_close(name, g, g_ref, 1e-5)
    assert not conv.pos_emb.z.requires_grad
    assert sorted(conv.state_dict()) == ["mlp.0.bias", "mlp.0.weight", "mlp.2.bias", "mlp.2.weight", "pos_emb.z"]


def test_positional_embedding_features():
    z = PositionalEmbedding(7, 16).z
    assert z.shape == (1, 16, 7)
    t = torch.arange(16.)
    f = torch.linspace(1e-4, 2, 3)
    w = 2 * torch.pi * t[:, None] / 16
    want = torch.cat([t[:, None] / 15, torch.cos(f * w), -torch.sin(f * w)], -1)
    assert_close("z", z[0], want, 1e-6)
    assert PositionalEmbedding(3, 16)(5).shape == (1, 5, 3)


def test_fft_conv_options():
    """gelu, the per-channel dropout mask and the anti-causal filter, against the direct form."""
    seed("options")
    u = torch.randn(2, 3, 21, requires_grad=True)
    k, k_rev = torch.randn(3, 30, requires_grad=True), torch.randn(3, 12, requires_grad=True)
    mask = (torch.rand(2, 3) > 0.3).float() / 0.7
    y = fft_conv(u, k, mask, gelu=True, k_rev=k_rev)
    ref = F.gelu(direct_conv(u, k, k_rev)) * mask.double()[..., None]
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, (u, k, k_rev), dy)
    grads_ref = torch.autograd.grad(ref, (u, k, k_rev), dy.double())
    assert_close("y", y, ref, 1e-5)
    for name, g, g_ref in zip(["du", "dk", "dk_rev"], grads, grads_ref):
        assert_close(name, g, g_ref, 1e-5)
    # [B, H, X, T]: one filter per channel shared across X
    u4 = torch.randn(2, 3, 2, 21)
    assert_close("y4", fft_conv(u4, k, None, gelu=False)[:, :, 1], direct_conv(u4[:, :, 1], k), 1e-5)


def test_rejects_bad_shapes():
    conv = LongConvolution(8, 16)
    with pytest.raises(ValueError, match="hidden_size=8"):
        conv(torch.randn(2, 10, 6))
    with pytest.raises(ValueError, match=r"batch_size, seq_len"):
        conv(torch.randn(10, 8))
    with pytest.raises(ValueError, match="one filter per channel"):
        fft_conv(torch.randn(2, 8, 10), torch.randn(5, 10), None)
    with pytest.raises(ValueError, match="dropout_mask"):
        fft_conv(torch.randn(2, 8, 10), torch.randn(8, 10), torch.ones(8))
    with pytest.raises(ValueError, match="d_emb must be an odd"):
        ImplicitLongConvolution(8, 16, d_emb=4)
    with pytest.raises(ValueError, match="emb_dim must be an odd"):
        PositionalEmbedding(1, 16)
    assert LongConvolutionAtPeerPath is LongConvolution
