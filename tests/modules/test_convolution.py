"""ShortConvolution against a shift-and-add float64 reference: full, varlen, cached prefix, step-by-step decode."""
import pytest
import torch

from fla.modules import ShortConvolution
from fla.ops.utils.dispatch import use_backend
from tests.helpers import assert_close, poisoned_empty, seed


def reference(x, weight, bias, prefix, activation):
    """x [T, D], weight [D, W], prefix [W - 1, D] (inputs before x) -> y [T, D], float64."""
    W = weight.shape[1]
    xp = torch.cat([prefix.double(), x.double()])
    y = sum(weight[:, i].double() * xp[i:i + len(x)] for i in range(W))
    if bias is not None:
        y = y + bias.double()
    return torch.nn.functional.silu(y) if activation else y


def make_conv(D, W, bias, activation):
    conv = ShortConvolution(D, kernel_size=W, bias=bias, activation=activation)
    with torch.no_grad():
        conv.weight.copy_(torch.randn_like(conv.weight) / W**0.5)
        if bias:
            conv.bias.copy_(torch.randn_like(conv.bias))
    return conv


def params(conv):
    return [p for p in (conv.weight, conv.bias) if p is not None]


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize(
    "B, T, D, W, bias, activation, with_cache",
    [(2, 50, 40, 4, True, "silu", False), (2, 37, 64, 3, False, None, True), (3, 70, 24, 4, True, "silu", True)],
)
def test_conv_matches_reference(backend, B, T, D, W, bias, activation, with_cache):
    seed(backend, B, T, D, W, bias, activation, with_cache)
    conv = make_conv(D, W, bias, activation)
    x = torch.randn(B, T, D, requires_grad=True)
    cache = torch.randn(B, D, W) if with_cache else None
    dy = torch.randn(B, T, D)
    with use_backend(backend), poisoned_empty():
        y, final = conv(x, cache=cache, output_final_state=True)
        grads = torch.autograd.grad(y, [x] + params(conv), dy)
    w = conv.weight[:, 0]
    prefix = [cache[b, :, 1:].T if with_cache else torch.zeros(W - 1, D) for b in range(B)]
    y_ref = torch.stack([reference(x[b], w, conv.bias, prefix[b], activation) for b in range(B)])
    grads_ref = torch.autograd.grad(y_ref, [x] + params(conv), dy.double())
    assert_close("y", y, y_ref, 1e-5)
    for name, got, want in zip(["dx", "dweight", "dbias"], grads, grads_ref):
        assert_close(name, got, want, 1e-5)
    assert_close("final", final, x[:, -W:].transpose(1, 2), 0)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("lens, with_cache", [([20, 1, 45, 33], False), ([2, 40, 1, 31], True)])
def test_varlen_matches_per_document(backend, lens, with_cache):
    seed(backend, lens, with_cache)
    D, W = 24, 4
    conv = make_conv(D, W, True, "silu")
    cu_seqlens = torch.tensor([0] + lens).cumsum(0)
    x = torch.randn(1, sum(lens), D, requires_grad=True)
    cache = torch.randn(len(lens), D, W) if with_cache else None
    dy = torch.randn_like(x)
    with use_backend(backend), poisoned_empty():
        y, final = conv(x, cache=cache, output_final_state=True, cu_seqlens=cu_seqlens)
        grads = torch.autograd.grad(y, [x] + params(conv), dy)
    ys, finals = [], []
    with use_backend(backend):
        for n, (bos, eos) in enumerate(zip(cu_seqlens[:-1], cu_seqlens[1:])):
            c = cache[n:n + 1] if with_cache else None
            y_n, f_n = conv(x[:, bos:eos], cache=c, output_final_state=True)
            ys.append(y_n)
            finals.append(f_n)
        y_ref = torch.cat(ys, 1)
        grads_ref = torch.autograd.grad(y_ref, [x] + params(conv), dy)
    assert_close("y", y, y_ref, 1e-6)
    assert_close("final", final, torch.cat(finals), 0)
    for name, got, want in zip(["dx", "dweight", "dbias"], grads, grads_ref):
        assert_close(name, got, want, 1e-6)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("prefill", [0, 2, 9])
def test_decode_step_by_step_matches_full(backend, prefill):
    seed(backend, prefill)
    B, T, D, W = 2, 14, 40, 4
    conv = make_conv(D, W, True, "silu")
    x = torch.randn(B, T, D)
    with use_backend(backend), torch.no_grad(), poisoned_empty():
        y_full, final_full = conv(x, output_final_state=True)
        if prefill:
            y_pre, cache = conv(x[:, :prefill], output_final_state=True)
        else:
            y_pre, cache = x[:, :0], torch.zeros(B, D, W)
        steps = [y_pre]
        for t in range(prefill, T):
            y_t, cache = conv(x[:, t:t + 1], cache=cache, output_final_state=True)
            steps.append(y_t)
    assert_close("y", torch.cat(steps, 1), y_full, 1e-6)
    assert_close("cache", cache, final_full, 0)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_final_state_of_short_sequences_keeps_cache(backend):
    seed(backend)
    D, W = 8, 4
    conv = make_conv(D, W, False, None)
    cache = torch.randn(2, D, W)
    x = torch.randn(2, 2, D)
    with use_backend(backend):
        _, final = conv(x, cache=cache, output_final_state=True)
        _, fresh = conv(x, output_final_state=True)
    assert_close("final", final, torch.cat([cache[:, :, 2:], x.transpose(1, 2)], -1), 0)
    assert_close("fresh", fresh, torch.cat([torch.zeros(2, D, 2), x.transpose(1, 2)], -1), 0)


def test_conv_rejects_bad_inputs():
    conv = ShortConvolution(8, kernel_size=4)
    with pytest.raises(ValueError, match="x must be \\[B, T, D\\] with D = hidden_size = 8"):
        conv(torch.randn(2, 5, 6))
    with pytest.raises(ValueError, match="cache must be \\[N, D, W\\] = \\[2, 8, 4\\]"):
        conv(torch.randn(2, 5, 8), cache=torch.zeros(2, 8, 3))
    with pytest.raises(ValueError, match="batch size must be 1"):
        conv(torch.randn(2, 5, 8), cu_seqlens=torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="activation must be one of"):
        ShortConvolution(8, activation="relu")


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_conv_half(backend):
    seed(backend)
    D, W = 32, 4
    conv = make_conv(D, W, True, "silu").half()
    x = torch.randn(2, 30, D, dtype=torch.float16, requires_grad=True)
    with use_backend(backend):
        y, _ = conv(x)
        y.float().sum().backward()
    assert y.dtype == x.grad.dtype == conv.weight.grad.dtype == torch.float16
    zeros = torch.zeros(W - 1, D)
    y_ref = torch.stack([reference(x[b], conv.weight[:, 0], conv.bias, zeros, "silu") for b in range(2)])
    (dx_ref,) = torch.autograd.grad(y_ref.sum(), x)
    assert_close("y", y, y_ref, 2e-3)
    assert_close("dx", x.grad, dx_ref, 2e-3)


def test_peer_backend_argument():
    conv = ShortConvolution(8, 4, False, "silu", "cuda")  # the peer's positional order: backend before device
    assert conv.weight.shape == (8, 1, 4)
    with pytest.raises(ValueError, match="backend"):
        ShortConvolution(8, backend="tilelang")


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_peer_call_forms_residual_mask_and_packed_step(backend):
    """forward(x, residual, mask, cache, ...) and step(x, residual, cache, output_final_state, cu_seqlens), in the
    peer library's order: the residual is added after the activation, the mask zeroes padded inputs, and one token
    per packed sequence decodes like a batch of rows."""
    seed("peer-conv", backend)
    B, T, D, W = 3, 9, 16, 4
    conv = make_conv(D, W, True, "silu")
    x, res = torch.randn(B, T, D), torch.randn(B, T, D)
    mask = (torch.arange(T)[None] >= torch.tensor([[0], [2], [5]])).long()  # left padding
    with use_backend(backend), torch.no_grad():
        y, _ = conv(x, res, mask)
        assert_close("residual+mask", y, conv(x * mask[..., None])[0] + res, 1e-6)
        cache, x1, r1 = torch.randn(B, D, W), torch.randn(B, 1, D), torch.randn(B, 1, D)
        want, want_cache = conv.step(x1, r1, cache.clone(), True)
        got, got_cache = conv.step(x1.transpose(0, 1), r1.transpose(0, 1), cache.clone(), True,
                                   torch.arange(B + 1, dtype=torch.int32))
        assert_close("packed step", got, want.transpose(0, 1), 1e-6)
        assert_close("packed cache", got_cache, want_cache, 0)
        assert conv.step(x1, None, cache.clone())[1] is None  # the cache only when asked for
        with pytest.raises(ValueError, match="mask and cu_seqlens"):
            conv(x[:1], mask=mask[:1], cu_seqlens=torch.tensor([0, T]))
