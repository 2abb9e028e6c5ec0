"""The peer library's other entry points for our families (fused_chunk_*, parallel_*, and its naive references at
its import paths) compute what the peer's compute: checked against our own references and kernels."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fla.ops.attn import naive_attn, naive_parallel_attn
from fla.ops.gated_delta_rule import naive_chunk_gated_delta_rule, naive_recurrent_gated_delta_rule
from fla.ops.linear_attn import chunk_linear_attn, fused_chunk_linear_attn, naive_recurrent_linear_attn
from fla.ops.linear_attn.naive import naive_chunk_linear_attn
from fla.ops.retention import chunk_retention, fused_chunk_retention, parallel_retention
from fla.ops.retention.naive import naive_retention
from fla.ops.simple_gla import (chunk_simple_gla, fused_chunk_simple_gla, naive_recurrent_simple_gla,
                                parallel_simple_gla)
from fla.ops.simple_gla.naive import naive_chunk_simple_gla, naive_parallel_simple_gla
from fla.ops.utils.dispatch import use_backend
from tests.helpers import assert_close, seed

B, T, H, K, V = 2, 23, 2, 8, 4


@pytest.fixture(autouse=True)
def torch_backend():
    with use_backend("torch"):
        yield


def qkv(heads_kv=H):
    return torch.randn(B, T, H, K), torch.randn(B, T, heads_kv, K), torch.randn(B, T, heads_kv, V)


def test_fused_chunk_names_are_the_chunk_ops():
    seed("fused-chunk")
    q, k, v = qkv()
    g, h0 = F.logsigmoid(torch.randn(B, T, H)), torch.randn(B, H, K, V)
    for fused, chunk, args in [(fused_chunk_simple_gla, chunk_simple_gla, (g,)), (fused_chunk_retention,
                                                                                 chunk_retention, ())]:
        got = fused(q, k, v, *args, initial_state=h0, output_final_state=True)
        want = chunk(q, k, v, *args, initial_state=h0, output_final_state=True)
        assert_close("o", got[0], want[0], 0)
        assert_close("ht", got[1], want[1], 0)
    assert_close("linear", fused_chunk_linear_attn(q, k.sigmoid(), v)[0], chunk_linear_attn(q, k.sigmoid(), v)[0], 0)


def test_parallel_forms_give_the_output_and_the_attention_matrix():
    seed("parallel")
    q, k, v = qkv()
    g = F.logsigmoid(torch.randn(B, T, H))
    o, A = parallel_simple_gla(q, k, v, g, output_attentions=True)
    o_ref, A_ref = naive_parallel_simple_gla(q, k, v, g)
    assert A.shape == (B, H, T, T) and parallel_simple_gla(q, k, v, g)[1] is None
    assert_close("o", o, naive_recurrent_simple_gla(q, k, v, g)[0], 1e-5)
    assert_close("o_ref", o_ref, o, 1e-5)
    assert_close("A", A, A_ref, 0)
    assert_close("A v", torch.einsum("bhij,bjhv->bihv", A, v), o, 1e-5)
    o_ret, A_ret = parallel_retention(q, k, v, output_attentions=True)
    assert_close("retention", o_ret, chunk_retention(q, k, v)[0], 1e-6)
    assert_close("retention A v", torch.einsum("bhij,bjhv->bihv", A_ret, v), o_ret, 1e-5)
    cu = torch.tensor([0, 9, T], dtype=torch.int32)
    with pytest.raises(ValueError, match="output_attentions"):
        parallel_simple_gla(q[:1], k[:1], v[:1], g[:1], output_attentions=True, cu_seqlens=cu)


def test_naive_references_at_the_peer_paths():
    seed("naive-peer")
    q, k, v = qkv()
    g, beta = F.logsigmoid(torch.randn(B, T, H)), torch.rand(B, T, H)
    h0 = torch.randn(B, H, K, V)
    for normalize in (False, True):
        kp = k.sigmoid()  # positive keys keep the normalizer away from 0
        assert_close(f"linear normalize={normalize}", naive_chunk_linear_attn(q.sigmoid(), kp, v, normalize=normalize),
                     naive_recurrent_linear_attn(q.sigmoid(), kp, v, normalize=normalize)[0], 1e-5)
    assert_close("retention (head-first)", naive_retention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)),
                 chunk_retention(q, k, v)[0].transpose(1, 2), 1e-5)
    got = naive_chunk_simple_gla(q, k, v, g, h0, True)
    want = naive_recurrent_simple_gla(q, k, v, g, None, h0, True)
    assert_close("simple_gla", got[0], want[0], 0)
    kn = F.normalize(k, dim=-1)
    got = naive_chunk_gated_delta_rule(q, kn, v, g, beta, 64, None, h0, True)
    want = naive_recurrent_gated_delta_rule(q, kn, v, beta, g, None, h0, True)
    assert_close("gated_delta_rule", got[1], want[1], 0)


def test_naive_parallel_attn():
    seed("naive-parallel-attn")
    q, k, v = qkv(heads_kv=1)
    g = F.logsigmoid(torch.randn(B, T, H))
    o, max_logits = naive_parallel_attn(q, k, v, window_size=7, g=g)
    assert_close("o", o, naive_attn(q, k, v, g, window_size=7), 1e-6)
    s = K ** -0.5 * torch.einsum("bihk,bjhk->bhij", q, k.expand(B, T, H, K))
    assert_close("max (no mask)", naive_parallel_attn(q, k, v, causal=False)[1], s.amax(-1).transpose(1, 2), 1e-6)
    assert max_logits.shape == (B, T, H)
    # a sink only adds to the softmax denominators: o shrinks by sum / (sum + exp(sink)) per query and head
    sink = torch.randn(H)
    o_sink, _ = naive_parallel_attn(q, k, v, sink_bias=sink)
    o_plain, m = naive_parallel_attn(q, k, v)
    s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    total = s.exp().sum(-1).transpose(1, 2)  # [B, T, H]
    assert_close("sink", o_sink, o_plain * (total / (total + sink.exp()))[..., None], 1e-5)
