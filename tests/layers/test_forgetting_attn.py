"""fla.layers.ForgettingAttention against the Forgetting Transformer as its paper writes it: softmax attention
whose score (i, j) carries the forget-gate bias D_ij = sum_{l = j+1 .. i} log f_l, summed term by term (no
cumulative-sum trick), f = sigmoid(W_f x + b_f) per query head and token. Output, every parameter gradient and
the input gradient are compared; cached decoding against the full forward."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fla.layers import ForgettingAttention
from fla.models import FLACache
from fla.ops.utils.dispatch import use_backend
from tests.helpers import assert_close, seed

D = 32
CASES = {
    "plain": dict(num_heads=4),
    "gqa_qknorm_gate": dict(num_heads=4, num_kv_heads=2, qk_norm=True, use_output_gate=True, qkv_bias=True),
    "window": dict(num_heads=2, window_size=7, use_output_gate=True),
}


def make_layer(case: str) -> ForgettingAttention:
    seed("fox", case, "init")
    layer = ForgettingAttention(D, layer_idx=0, **CASES[case])
    with torch.no_grad():  # away from the ones / zeros inits, so every parameter matters
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return layer


def linear(x: torch.Tensor, lin: torch.nn.Linear) -> torch.Tensor:
    return F.linear(x, lin.weight.float(), None if lin.bias is None else lin.bias.float())


def reference(layer: ForgettingAttention, x: torch.Tensor) -> torch.Tensor:
    """x [B, T, D] -> o [B, T, D], float32."""
    B, T, _ = x.shape
    H, Hkv, Dh = layer.num_heads, layer.num_kv_heads, layer.head_dim
    x = x.float()
    q = linear(x, layer.q_proj).view(B, T, H, Dh)
    k = linear(x, layer.k_proj).view(B, T, Hkv, Dh)
    v = linear(x, layer.v_proj).view(B, T, Hkv, Dh)
    if layer.qk_norm:
        def norm(t, w):
            return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + 1e-5) * w.float().view(t.shape[2], Dh)
        q, k = norm(q, layer.q_norm.weight), norm(k, layer.k_norm.weight)
    log_f = F.logsigmoid(linear(x, layer.f_proj))  # [B, T, H]
    k = k.repeat_interleave(H // Hkv, dim=2)
    v = v.repeat_interleave(H // Hkv, dim=2)
    bias = torch.full((B, H, T, T), float("-inf"))
    for i in range(T):
        lo = 0 if layer.window_size is None else max(0, i - layer.window_size + 1)
        for j in range(lo, i + 1):
            bias[:, :, i, j] = log_f[:, j + 1:i + 1].sum(1)  # D_ij = sum_{l=j+1..i} log f_l
    s = torch.einsum("bihd,bjhd->bhij", q, k) / Dh ** 0.5 + bias
    o = torch.einsum("bhij,bjhd->bihd", s.softmax(-1), v).reshape(B, T, H * Dh)
    if layer.use_output_gate:
        o = o * torch.sigmoid(linear(x, layer.g_proj))
    return linear(o, layer.o_proj)


def check_against_reference(case: str, T: int) -> None:
    layer = make_layer(case).train()
    seed("fox", case, T)
    x = torch.randn(2, T, D, requires_grad=True)
    dout = torch.randn(2, T, D)
    want = reference(layer, x)
    got = layer(x)[0]
    assert_close("o", got, want, 1e-5)
    names = ["x", *(n for n, _ in layer.named_parameters())]
    tensors = [x, *layer.parameters()]
    want_grads = torch.autograd.grad(want, tensors, dout)
    for name, g, w in zip(names, torch.autograd.grad(got, tensors, dout), want_grads):
        assert_close(f"d{name}", g, w, 1e-4)


@pytest.mark.parametrize("case", CASES)
def test_matches_forget_gate_attention(case):
    with use_backend("torch"):
        check_against_reference(case, 21)


def test_interpreted_kernel_matches_forget_gate_attention():
    """parallel_attn's Triton kernels (interpreter), forward and backward, with GQA, QK-norm and the gate."""
    check_against_reference("gqa_qknorm_gate", 40)


@pytest.mark.parametrize("case", ["gqa_qknorm_gate", "window"])
def test_decoding_with_cache_matches_full_forward(case):
    """Prefill, then steps of one and of three tokens over the cached keys, values and log gates; the cache keeps
    the peer's (k, v, log f) layout, trimmed to the window."""
    layer = make_layer(case).eval()
    seed("fox", case, "decode")
    x = torch.randn(2, 16, D)
    with use_backend("torch"), torch.no_grad():
        want = layer(x)[0]
        cache = FLACache()
        outs = [layer(x[:, :6], past_key_values=cache, use_cache=True)[0]]
        for lo, hi in ((6, 7), (7, 10), (10, 11), (11, 16)):
            outs.append(layer(x[:, lo:hi], past_key_values=cache, use_cache=True)[0])
    assert_close("o", torch.cat(outs, 1), want, 1e-5)
    k, v, f = cache[0]["attn_state"]
    S = 16 if layer.window_size is None else layer.window_size
    assert k.shape == v.shape == (2, S, layer.kv_dim) and f.shape == (2, S, layer.num_heads)
    assert f.dtype == torch.float32 and (f <= 0).all()


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_kv_heads"):
        ForgettingAttention(D, num_heads=4, num_kv_heads=3)
    with pytest.raises(ValueError, match="window_size"):
        ForgettingAttention(D, num_heads=4, window_size=0)
