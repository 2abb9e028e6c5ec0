"""`fla.ops.gated_delta_rule`: chunk and fused recurrent, Triton (interpreted on CPU) and PyTorch paths, against the
token-by-token naive recurrence: output, final state and every gradient (q, k, v, g, beta, initial state, with a
final-state gradient flowing in)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fla.ops.gated_delta_rule import (chunk_gated_delta_rule, fused_recurrent_gated_delta_rule,
                                      naive_recurrent_gated_delta_rule)
from fla.ops.utils.dispatch import use_backend
from tests.helpers import assert_close, poisoned_empty, seed

OPS = {"chunk": chunk_gated_delta_rule, "recurrent": fused_recurrent_gated_delta_rule}
NAMES = ("o", "ht", "dq", "dk", "dv", "dg", "dbeta", "dh0")


def make_inputs(B, T, H, HV, K, V, num_states, use_h0, l2norm, dtype):
    q = torch.randn(B, T, H, K)
    k = torch.randn(B, T, H, K)
    if not l2norm:
        # The delta rule is only stable for ||k||^2 beta <= ~1: without the in-kernel norm, feed unit keys.
        k = F.normalize(k, dim=-1)
    v = torch.randn(B, T, HV, V)
    g = F.logsigmoid(torch.randn(B, T, HV))
    beta = torch.randn(B, T, HV).sigmoid()
    h0 = torch.randn(num_states, HV, K, V) if use_h0 else None
    xs = [q.to(dtype), k.to(dtype), v.to(dtype), g.to(dtype), beta.to(dtype), h0]
    return [x.requires_grad_() if x is not None else None for x in xs]


def run(fn, xs, do, dht, output_final_state, l2norm, cu_seqlens):
    q, k, v, g, beta, h0 = xs
    o, ht = fn(q, k, v, g=g, beta=beta, initial_state=h0, output_final_state=output_final_state,
               use_qk_l2norm_in_kernel=l2norm, cu_seqlens=cu_seqlens)
    loss = (o.float() * do).sum() + ((ht * dht).sum() if output_final_state else 0.)
    leaves = [x for x in xs if x is not None]
    grads = iter(torch.autograd.grad(loss, leaves))
    return [o, ht] + [next(grads) if x is not None else None for x in xs]


CASES = [
    # op, backend, B, T, H, HV, K, V, cu_seqlens, h0, final_state, l2norm, dtype
    ("chunk", "triton", 2, 100, 1, 2, 20, 24, None, True, True, False, "float32"),  # grouped values
    ("chunk", "triton", 1, 163, 2, 2, 72, 40, [0, 1, 64, 64, 100, 163], True, True, True, "float32"),  # len 0
    ("chunk", "triton", 2, 70, 2, 2, 32, 16, None, False, False, True, "float32"),
    ("chunk", "triton", 1, 80, 1, 2, 32, 32, [0, 37, 80], True, True, False, "float16"),
    ("chunk", "torch", 1, 150, 2, 4, 20, 24, [0, 1, 70, 150], True, True, False, "float32"),
    ("chunk", "torch", 2, 100, 2, 2, 32, 32, None, False, True, True, "float32"),
    ("recurrent", "triton", 2, 20, 1, 2, 20, 24, None, True, True, False, "float32"),
    ("recurrent", "triton", 1, 24, 2, 2, 40, 72, [0, 1, 9, 9, 24], False, True, True, "float32"),
    ("recurrent", "triton", 1, 24, 1, 1, 32, 16, None, True, False, False, "float16"),
    ("recurrent", "torch", 1, 40, 1, 2, 20, 24, [0, 1, 17, 40], True, True, True, "float32"),
]


@pytest.mark.parametrize("op,backend,B,T,H,HV,K,V,cu,use_h0,final_state,l2norm,dtype", CASES)
def test_matches_naive(op, backend, B, T, H, HV, K, V, cu, use_h0, final_state, l2norm, dtype):
    seed(op, backend, B, T, H, HV, K, V, cu, use_h0, final_state, l2norm, dtype)
    dtype = getattr(torch, dtype)
    cu_seqlens = torch.tensor(cu, dtype=torch.int32) if cu is not None else None
    N = len(cu) - 1 if cu is not None else B
    xs = make_inputs(B, T, H, HV, K, V, N, use_h0, l2norm, dtype)
    do, dht = torch.randn(B, T, HV, V), torch.randn(N, HV, K, V)
    with use_backend(backend), poisoned_empty():
        got = run(OPS[op], xs, do, dht, final_state, l2norm, cu_seqlens)
    # The reference sees the same (possibly float16-rounded) inputs in float32.
    ref_xs = [x.detach().float().requires_grad_() if x is not None else None for x in xs]
    want = run(naive_recurrent_gated_delta_rule, ref_xs, do, dht, final_state, l2norm, cu_seqlens)
    rel = 1e-4 if dtype == torch.float32 else 1e-2
    for name, a, b in zip(NAMES, got, want):
        if b is None:
            assert a is None, f"{name}: expected None"
            continue
        assert a.dtype == (torch.float32 if name in ("ht", "dh0") else dtype), f"{name}: dtype {a.dtype}"
        assert_close(name, a.float(), b, rel)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_recurrent_beta_per_channel_matches_naive(backend):
    """fused_recurrent_gated_delta_rule with beta [B, T, HV, V] (one strength per value channel), gated, grouped."""
    seed("beta-per-channel", backend)
    B, T, H, HV, K, V = 2, 16, 1, 2, 16, 20
    xs = [torch.randn(B, T, H, K), F.normalize(torch.randn(B, T, H, K), dim=-1), torch.randn(B, T, HV, V),
          F.logsigmoid(torch.randn(B, T, HV)), torch.randn(B, T, HV, V).sigmoid(), torch.randn(B, HV, K, V)]
    xs = [x.requires_grad_() for x in xs]
    do, dht = torch.randn(B, T, HV, V), torch.randn(B, HV, K, V)
    with use_backend(backend), poisoned_empty():
        got = run(fused_recurrent_gated_delta_rule, xs, do, dht, True, backend == "torch", None)
    want = run(naive_recurrent_gated_delta_rule, xs, do, dht, True, backend == "torch", None)
    for name, a, b in zip(NAMES, got, want):
        assert_close(name, a, b, 1e-4)


@pytest.mark.parametrize("op", ["chunk", "recurrent"])
def test_matches_naive_under_strong_decay(op):
    """Strong gates (chunk-local cumsums down to ~ -1000): the chunk form's exp(G_t - G_s) ratios stay finite. The gate
    gradient is where float32 shows: both fast paths get it from identities whose terms cancel when the state has
    decayed to ~0 (chunk: q.dq - k.dk, ~1e-3 here; recurrent: a running sum, ~3e-3 here; ~1e-6 with usual gates)."""
    seed("strong-decay", op)
    B, T, H, K, V = 1, 130, 1, 16, 16
    q, k, v = torch.randn(B, T, H, K), F.normalize(torch.randn(B, T, H, K), dim=-1), torch.randn(B, T, H, V)
    g = F.logsigmoid(torch.randn(B, T, H) - 3) * 4
    beta = torch.rand(B, T, H)
    xs = [x.requires_grad_() for x in (q, k, v, g, beta, torch.randn(B, H, K, V))]
    do, dht = torch.randn(B, T, H, V), torch.randn(B, H, K, V)
    with poisoned_empty():
        got = run(OPS[op], xs, do, dht, True, False, None)
    want = run(naive_recurrent_gated_delta_rule, xs, do, dht, True, False, None)
    for name, a, b in zip(NAMES, got, want):
        assert_close(name, a, b, 1e-2 if name == "dg" else 1e-4)


def _bad(name):
    B, T, H, K, V = 2, 8, 2, 16, 16
    q, k, v = torch.randn(B, T, H, K), torch.randn(B, T, H, K), torch.randn(B, T, H, V)
    g, beta = torch.randn(B, T, H), torch.rand(B, T, H)
    kw = dict(q=q, k=k, v=v, g=g, beta=beta)
    if name == "q_rank":
        kw["q"] = q[0]
    elif name == "k_shape":
        kw["k"] = torch.randn(B, T, H, K + 1)
    elif name == "k_dtype":
        kw["k"] = k.half()
    elif name == "v_heads":
        kw["v"] = torch.randn(B, T, 3, V)
    elif name == "g_shape":
        kw["g"] = torch.randn(B, T, H, K)
    elif name == "g_none":
        kw["g"] = None
    elif name == "beta_shape":
        kw["beta"] = torch.rand(B, T + 1, H)
    elif name == "head_dim":
        kw["q"], kw["k"] = torch.randn(B, T, H, 300), torch.randn(B, T, H, 300)
    elif name == "cu_batch":
        kw["cu_seqlens"] = torch.tensor([0, 3, 8])
    elif name == "cu_end":
        kw = {n: x[:1] for n, x in kw.items()}
        kw["cu_seqlens"] = torch.tensor([0, 3, 7])
    elif name == "h0_shape":
        kw["initial_state"] = torch.zeros(B, H, K, V + 1)
    elif name == "h0_dtype":
        kw["initial_state"] = torch.zeros(B, H, K, V, dtype=torch.float64)
    elif name == "scale":
        kw["scale"] = torch.tensor(0.5)
    return kw


BAD = [
    ("q_rank", "q must have 4 dims"), ("k_shape", "k must have shape"), ("k_dtype", "k must have dtype"),
    ("v_heads", "multiple of"), ("g_shape", "g must have"), ("g_none", "g must be"),
    ("beta_shape", "beta must have shape"), ("head_dim", "head dim"), ("cu_batch", "batch size must be 1"),
    ("cu_end", "cu_seqlens must end"), ("h0_shape", "initial_state must have shape"),
    ("h0_dtype", "initial_state must have dtype"), ("scale", "scale must be"),
]


# the fused op takes g=None as the plain delta rule (as the peer's does), and q/k/v in dtypes of their own
# (tests/ops/test_gated_delta_rule_peer.py); the chunk op needs its gate and one dtype
@pytest.mark.parametrize("op,name,match", [(op, name, match) for op in ("chunk", "recurrent") for name, match in BAD
                                           if (op, name) not in (("recurrent", "g_none"), ("recurrent", "k_dtype"))])
def test_rejects_bad_input(op, name, match):
    with pytest.raises(ValueError, match=match):
        OPS[op](**_bad(name))


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_recurrent_peer_argument_forms(backend):
    """The peer's order puts gk, gv before beta: beta=None means 1, g=None the plain delta rule, and a gk/gv (which
    fla lacks) is refused rather than read as beta."""
    seed("gdr-peer-forms", backend)
    B, T, H, K, V = 1, 12, 2, 16, 16
    q, k, v = torch.randn(B, T, H, K), F.normalize(torch.randn(B, T, H, K), dim=-1), torch.randn(B, T, H, V)
    g, beta = F.logsigmoid(torch.randn(B, T, H)), torch.rand(B, T, H)
    with use_backend(backend):
        o, _ = fused_recurrent_gated_delta_rule(q, k, v, g, beta=beta)
        assert_close("o", o, naive_recurrent_gated_delta_rule(q, k, v, beta, g)[0], 1e-5)
        ones, _ = fused_recurrent_gated_delta_rule(q, k, v, g)
        assert_close("beta=1", ones, naive_recurrent_gated_delta_rule(q, k, v, torch.ones_like(beta), g)[0], 1e-5)
        plain, _ = fused_recurrent_gated_delta_rule(q, k, v, beta=beta)
        assert_close("no gate", plain, naive_recurrent_gated_delta_rule(q, k, v, beta, None)[0], 1e-5)
        with pytest.raises(ValueError, match="gk / gv"):
            fused_recurrent_gated_delta_rule(q, k, v, g, beta)  # beta in the peer's gk slot


def test_recurrent_forward_saves_for_backward_only_when_one_can_follow(monkeypatch):
    """u and o32 (float32 [B, T, HV, V] each) are written only if a backward can follow: not under no_grad, not
    when no input requires grad (ctx.needs_input_grad is True under no_grad, so it cannot decide this)."""
    import fla.ops.gated_delta_rule.fused_recurrent as fr

    saved = []
    forward = fr.fused_recurrent_gdr_fwd

    def spy(*args):
        saved.append(args[-1])
        return forward(*args)

    monkeypatch.setattr(fr, "fused_recurrent_gdr_fwd", spy)
    seed("save")
    q, k, v = (torch.randn(1, 5, 2, 16) for _ in range(3))
    g, beta = F.logsigmoid(torch.randn(1, 5, 2)), torch.rand(1, 5, 2)
    leaves = [t.requires_grad_() for t in (q, k, v)]
    with use_backend("triton"):
        with torch.no_grad():
            o_eval, _ = fused_recurrent_gated_delta_rule(*leaves, g, beta=beta)
        o_train, _ = fused_recurrent_gated_delta_rule(*leaves, g, beta=beta)
        fused_recurrent_gated_delta_rule(*(t.detach() for t in leaves), g, beta=beta)
    assert saved == [False, True, False]
    assert_close("o", o_eval, o_train.detach(), 1e-6)


def test_recurrent_forward_in_narrow_value_tiles_matches_naive(monkeypatch):
    """On a GPU the forward splits V into narrow tiles to fill the SMs (`_forward_block_v`); under the interpreter
    it would keep one wide tile, so the narrow one is forced here: 68 columns in tiles of 8 (the last one half full)."""
    import fla.ops.gated_delta_rule.fused_recurrent as fr

    monkeypatch.setattr(fr, "_forward_block_v", lambda K, V, programs, device: 8)
    seed("narrow tiles")
    cu = [0, 1, 9, 24]
    xs = make_inputs(1, 24, 2, 2, 40, 68, len(cu) - 1, True, False, torch.float32)
    do, dht = torch.randn(1, 24, 2, 68), torch.randn(3, 2, 40, 68)
    cu_seqlens = torch.tensor(cu, dtype=torch.int32)
    with use_backend("triton"), poisoned_empty():
        got = run(OPS["recurrent"], xs, do, dht, True, False, cu_seqlens)
    ref_xs = [x.detach().float().requires_grad_() if x is not None else None for x in xs]
    want = run(naive_recurrent_gated_delta_rule, ref_xs, do, dht, True, False, cu_seqlens)
    for name, a, b in zip(NAMES, got, want):
        if b is not None:
            assert_close(name, a, b, 1e-4)


def test_forward_value_tile_fills_an_h100():
    """B * HV = 64 heads, K = V = 128: >= 4 programs per SM of an H100 (132 SMs), never narrower than 8."""
    from fla.ops.gated_delta_rule.fused_recurrent import H100_SMS, _forward_block_v

    cpu = torch.device("cpu")
    with pytest.MonkeyPatch.context() as m:
        m.setattr("fla.ops.gated_delta_rule.fused_recurrent.is_interpreter", lambda: False)
        BV = _forward_block_v(128, 128, 64, cpu)
        assert -(-128 // BV) * 64 >= 4 * H100_SMS and BV >= 8
        assert _forward_block_v(128, 128, 4096, cpu) == 64  # enough heads already: the wide tile stays
