"""fla.layers: every mixer's forward shapes, packed sequences, decoding with a cache and padding. The torch backend
unless the test name says "interpreted" (Triton kernels in the interpreter)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fla.layers import Attention, DeltaNet, GatedDeltaNet, GatedLinearAttention, LinearAttention, MultiScaleRetention
from fla.layers import GatedDeltaProduct, HGRN2Attention, HGRNAttention
from fla.layers import ForgettingAttention, Mamba2
from fla.layers.kda import KimiDeltaAttention
from fla.layers.rwkv7 import RWKV7Attention
from fla.models import FLACache
from fla.ops.utils.dispatch import use_backend
from tests.helpers import assert_close, seed

D = 32
LAYERS = {
    "attn": lambda: Attention(D, num_heads=4, num_kv_heads=2, layer_idx=0),
    "attn_window": lambda: Attention(D, num_heads=2, window_size=5, qk_norm=True, layer_idx=0),
    "linear_attn": lambda: LinearAttention(D, num_heads=2, layer_idx=0),
    "gla": lambda: GatedLinearAttention(D, num_heads=2, use_short_conv=True, layer_idx=0),
    "retention": lambda: MultiScaleRetention(D, num_heads=2, layer_idx=0),
    "delta_net": lambda: DeltaNet(D, num_heads=2, use_gate=True, layer_idx=0),
    "gated_deltanet": lambda: GatedDeltaNet(D, head_dim=16, num_heads=2, expand_v=1.0, layer_idx=0),
    "kda": lambda: KimiDeltaAttention(D, head_dim=16, num_heads=2, num_v_heads=4, layer_idx=0),
    "gated_deltaproduct": lambda: GatedDeltaProduct(D, expand_v=1.0, head_dim=16, num_heads=2, num_householder=2,
                                                    layer_idx=0),
    "hgrn": lambda: HGRNAttention(hidden_size=D, use_short_conv=True, layer_idx=0),
    "hgrn2": lambda: HGRN2Attention(hidden_size=D, expand_ratio=8, use_short_conv=True, layer_idx=0),
    "mamba2": lambda: Mamba2(hidden_size=D, head_dim=8, state_size=16, n_groups=2, layer_idx=0),
    "forgetting_attn": lambda: ForgettingAttention(D, num_heads=4, num_kv_heads=2, qk_norm=True,
                                                   use_output_gate=True, window_size=9, layer_idx=0),
    "rwkv7": lambda: FirstOf3(RWKV7Attention(hidden_size=D, head_dim=16, decay_low_rank_dim=8, gate_low_rank_dim=8,
                                             a_low_rank_dim=8, v_low_rank_dim=8, layer_idx=0, num_hidden_layers=2)),
}


class FirstOf3(torch.nn.Module):
    """RWKV7Attention returns (o, None, cache, v_first), the peer's form: the common checks read the first three."""

    def __init__(self, layer: torch.nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, *args, **kwargs):
        return self.layer(*args, **kwargs)[:3]


def make_layer(name: str) -> torch.nn.Module:
    seed(name, "init")
    layer = LAYERS[name]()
    with torch.no_grad():  # away from the all-ones / zero inits, so every part of the layer matters
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return layer


@pytest.fixture(autouse=True)
def torch_backend(request):
    if "interpreted" in request.node.name:
        yield
    else:
        with use_backend("torch"):
            yield


@pytest.mark.parametrize("name", LAYERS)
def test_forward_shapes(name):
    layer = make_layer(name)
    x = torch.randn(2, 19, D, requires_grad=True)
    o, attentions, cache = layer(x)
    assert o.shape == x.shape and attentions is None and cache is None
    o.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("lens", [(7, 1, 40, 13), (64, 3)])
def test_varlen_matches_per_sequence(name, lens):
    layer = make_layer(name).train()
    seed(name, lens)
    xs = [torch.randn(1, n, D) for n in lens]
    cu_seqlens = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    got, _, _ = layer(torch.cat(xs, 1), cu_seqlens=cu_seqlens)
    want = torch.cat([layer(x)[0] for x in xs], 1)
    assert_close("o", got, want, 1e-5)


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("prefill", [1, 9, 70])
def test_decoding_with_cache_matches_full_forward(name, prefill):
    """Chunked full forward (training mode) vs a prefill (fused recurrent when short, chunked when long) and
    one-token steps (fused recurrent, conv step) carrying the cache."""
    layer = make_layer(name)
    seed(name, prefill)
    x = torch.randn(2, prefill + 6, D)
    want, _, _ = layer.train()(x)
    layer.eval()
    cache = FLACache()
    outs = [layer(x[:, :prefill], past_key_values=cache, use_cache=True)[0]]
    for t in range(prefill, x.shape[1]):
        outs.append(layer(x[:, t:t + 1], past_key_values=cache, use_cache=True)[0])
    assert cache.get_seq_length() == x.shape[1]
    assert_close("o", torch.cat(outs, 1), want, 1e-5)


@pytest.mark.parametrize("name", LAYERS)
def test_left_padding_matches_unpadded(name):
    layer = make_layer(name).eval()
    seed(name, "pad")
    lens = [12, 5, 1]
    T = max(lens)
    xs = [torch.randn(1, n, D) for n in lens]
    x = torch.cat([F.pad(xi, (0, 0, T - xi.shape[1], 0)) for xi in xs])
    mask = torch.stack([(torch.arange(T) >= T - n).long() for n in lens])
    cache = FLACache()
    o, _, _ = layer(x, attention_mask=mask, past_key_values=cache, use_cache=True)
    step = torch.randn(3, 1, D)
    o_step, _, _ = layer(step, attention_mask=F.pad(mask, (0, 1), value=1), past_key_values=cache, use_cache=True)
    for i, xi in enumerate(xs):
        ref_cache = FLACache()
        want, _, _ = layer(xi, past_key_values=ref_cache, use_cache=True)
        assert_close(f"row{i}", o[i:i + 1, T - lens[i]:], want, 1e-5)
        assert (o[i, :T - lens[i]] == 0).all()
        want_step, _, _ = layer(step[i:i + 1], past_key_values=ref_cache, use_cache=True)
        assert_close(f"step{i}", o_step[i:i + 1], want_step, 1e-5)


def test_rejects_padding_with_cu_seqlens_and_bad_masks():
    layer = make_layer("gla")
    x = torch.randn(1, 8, D)
    mask = torch.tensor([[0, 1, 1, 1, 1, 1, 1, 1]])
    with pytest.raises(ValueError, match="cu_seqlens"):
        layer(x, attention_mask=mask, cu_seqlens=torch.tensor([0, 3, 8], dtype=torch.int32))
    with pytest.raises(ValueError, match="2-D"):
        layer(x, attention_mask=torch.ones(1, 1, 8, 8))
    with pytest.raises(ValueError, match="num_kv_heads"):
        Attention(D, num_heads=4, num_kv_heads=3)


@pytest.mark.parametrize("name", ["attn_window", "gated_deltanet", "delta_net", "retention", "linear_attn", "mamba2",
                                  "forgetting_attn"])
def test_interpreted_varlen_and_decoding(name):
    """The Triton kernels (interpreter): packed sequences against separate runs, and decoding against the chunked
    forward."""
    layer = make_layer(name).train()
    lens = (5, 1, 30)
    xs = [torch.randn(1, n, D) for n in lens]
    cu_seqlens = torch.tensor([0, 5, 6, 36], dtype=torch.int32)
    got, _, _ = layer(torch.cat(xs, 1), cu_seqlens=cu_seqlens)
    want = [layer(x)[0] for x in xs]
    assert_close("varlen", got, torch.cat(want, 1), 1e-4)
    layer.eval()
    cache = FLACache()
    outs = [layer(xs[2][:, :26], past_key_values=cache, use_cache=True)[0]]
    for t in range(26, 30):
        outs.append(layer(xs[2][:, t:t + 1], past_key_values=cache, use_cache=True)[0])
    assert_close("decode", torch.cat(outs, 1), want[2], 1e-4)


def test_interpreted_varlen_and_decoding_rwkv7():
    """RWKV7Attention through the same checks (chunk_rwkv7 packed, fused_mul_recurrent_rwkv7 decoding)."""
    test_interpreted_varlen_and_decoding("rwkv7")
