"""Softmax attention (`fla/ops/attn/`): the Triton kernels (interpreted on CPU) and the SDPA torch path against the
naive float32 attention with an explicit mask; output and every gradient (q, k, v, g)."""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from fla.ops.attn import kernels, naive_attn, parallel, parallel_attn, sdpa
from fla.ops.attn.parallel import parallel_attn_q_offset
from fla.ops.utils.dispatch import use_backend
from tests.helpers import assert_close, device, poisoned_empty, seed

@pytest.fixture(autouse=True)
def small_torch_blocks(monkeypatch):
    """The torch path cuts queries into blocks of 1024 rows; make test sequences span several."""
    monkeypatch.setattr(sdpa, "TORCH_QUERY_BLOCK", 32)


REL = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 2e-2}


def make_inputs(B, T, HQ, H, K, V, gated, dtype):
    dtype = getattr(torch, dtype)
    q = torch.randn(B, T, HQ, K, dtype=dtype, device=device())
    k = torch.randn(B, T, H, K, dtype=dtype, device=device())
    v = torch.randn(B, T, H, V, dtype=dtype, device=device())
    # log forget gates around log(sigmoid(2)): a decay that visibly reshapes the scores over tens of tokens
    g = F.logsigmoid(torch.randn(B, T, HQ, device=device()) + 2).to(dtype) if gated else None
    do = torch.randn(B, T, HQ, V, dtype=dtype, device=device())
    return q, k, v, g, do


def run(fn, q, k, v, g, do, **kwargs):
    """Output and gradients (dq, dk, dv, dg) of sum(o * do)."""
    leaves = [x.clone().requires_grad_() for x in (q, k, v)] + ([g.clone().requires_grad_()] if g is not None else [])
    o = fn(*leaves[:3], leaves[3] if g is not None else None, **kwargs)
    grads = torch.autograd.grad(o, leaves, do)
    return (o, *grads)


def check(got, want, rel):
    for name, a, b in zip(("o", "dq", "dk", "dv", "dg"), got, want):
        assert a.dtype == b.dtype, f"{name}: dtype {a.dtype} != {b.dtype}"
        assert_close(name, a, b, rel)


def check_against_naive(backend, q, k, v, g, do, rel, **kwargs):
    with use_backend(backend), poisoned_empty():
        got = run(parallel_attn, q, k, v, g, do, **kwargs)
    want = run(naive_attn, *(x.float() if x is not None else None for x in (q, k, v, g)), do.float(), **kwargs)
    check(got, [w.to(q.dtype) for w in want], rel)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("B,T,HQ,H,K,V,gated,window,dtype", [
    (2, 100, 4, 2, 32, 32, True, None, "float32"),    # GQA, gate, several query and key blocks
    (2, 90, 2, 2, 48, 48, False, None, "float32"),    # HQ == H, non-power-of-two head dim
    (2, 90, 4, 2, 32, 48, True, 20, "float32"),       # sliding window smaller than the sequence, K != V
    (1, 77, 2, 1, 48, 32, False, 33, "float32"),      # window across a block edge, all query heads on one kv head
    (2, 64, 4, 2, 32, 32, True, None, "float16"),
])
def test_parallel_matches_naive(backend, B, T, HQ, H, K, V, gated, window, dtype):
    seed(backend, B, T, HQ, H, K, V, gated, window, dtype)
    q, k, v, g, do = make_inputs(B, T, HQ, H, K, V, gated, dtype)
    check_against_naive(backend, q, k, v, g, do, REL[dtype], window_size=window)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("cu,HQ,H,gated,window", [
    ([0, 1, 40, 77, 100], 4, 2, True, None),  # lengths 1, 39, 37, 23
    ([0, 33, 33, 70, 71], 2, 2, True, 16),    # an empty sequence, a window shorter than the sequences
    ([0, 50, 53, 90], 2, 1, False, 7),
])
def test_varlen_matches_naive_and_per_sequence(backend, cu, HQ, H, gated, window):
    seed(backend, cu, HQ, H, gated, window)
    T, K, V = cu[-1], 32, 32
    q, k, v, g, do = make_inputs(1, T, HQ, H, K, V, gated, "float32")
    cu_seqlens = torch.tensor(cu, dtype=torch.int32, device=device())
    check_against_naive(backend, q, k, v, g, do, REL["float32"], window_size=window, cu_seqlens=cu_seqlens)

    # packed == each sequence alone
    with use_backend(backend), poisoned_empty():
        packed = run(parallel_attn, q, k, v, g, do, window_size=window, cu_seqlens=cu_seqlens)
        alone = [
            run(parallel_attn, *(x[:, bos:eos] if x is not None else None for x in (q, k, v, g, do)),
                window_size=window)
            for bos, eos in zip(cu[:-1], cu[1:]) if eos > bos
        ]
    check(packed, [torch.cat(parts, 1) for parts in zip(*alone)], REL["float32"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="sets the interpreter's one autotune config")
@pytest.mark.parametrize("outer,key,inner", [(16, 16, 64), (64, 32, 32), (64, 64, 64), (32, 64, 16)])
def test_triton_block_sizes(monkeypatch, outer, key, inner):
    """The GPU runs other block sizes than the interpreter's 32/16 (an inner block larger than the outer one, equal
    ones, a dk/dv key block other than the query block): the [masked, full, masked] block ranges must cover exactly
    the causal window for all of them."""
    import triton

    monkeypatch.setattr(parallel, "_outer_block", lambda D: outer)
    monkeypatch.setattr(parallel, "_key_block", lambda D: key)
    for kernel, name in ((parallel.parallel_attn_fwd_kernel, "BN"), (parallel.parallel_attn_bwd_dq_kernel, "BN"),
                         (parallel.parallel_attn_bwd_dkdv_kernel, "BM")):
        monkeypatch.setattr(kernel.fn, "configs", [triton.Config({name: inner}, num_warps=4, num_stages=1)])
    seed("blocks", outer, key, inner)
    q, k, v, g, do = make_inputs(1, 140, 2, 1, 32, 32, True, "float32")
    for window, cu in ((None, None), (40, [0, 7, 140]), (70, [0, 90, 91, 140])):
        cu_seqlens = torch.tensor(cu) if cu is not None else None
        check_against_naive("triton", q, k, v, g, do, REL["float32"], window_size=window, cu_seqlens=cu_seqlens)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_window_covering_the_sequence_is_full_attention(backend):
    seed("window", backend)
    q, k, v, g, do = make_inputs(2, 70, 2, 1, 32, 32, True, "float32")
    with use_backend(backend), poisoned_empty():
        full = run(parallel_attn, q, k, v, g, do)
        windowed = run(parallel_attn, q, k, v, g, do, window_size=70)
    check(windowed, full, REL["float32"])


def test_triton_and_torch_paths_agree():
    seed("paths")
    q, k, v, g, do = make_inputs(1, 60, 4, 2, 48, 40, True, "float32")
    cu_seqlens = torch.tensor([0, 9, 60], device=device())
    with poisoned_empty():
        with use_backend("triton"):
            a = run(parallel_attn, q, k, v, g, do, window_size=12, cu_seqlens=cu_seqlens, scale=0.3)
        with use_backend("torch"):
            b = run(parallel_attn, q, k, v, g, do, window_size=12, cu_seqlens=cu_seqlens, scale=0.3)
    check(a, b, REL["float32"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bfloat16 tl.dot is wrong in the interpreter: GPU only")
@pytest.mark.parametrize("K,window,gated", [(64, None, False), (128, 256, True), (96, None, True), (256, None, False)])
def test_bfloat16_on_gpu(K, window, gated):
    seed("bf16", K, window, gated)
    q, k, v, g, do = make_inputs(2, 1000, 8, 2, K, K, gated, "bfloat16")
    cu_seqlens = torch.tensor([0, 1, 333, 1000, 2000], device=device())
    check_against_naive("triton", q, k, v, g, do, REL["bfloat16"], window_size=window)
    flat = [x.reshape(1, -1, *x.shape[2:]) if x is not None else None for x in (q, k, v, g, do)]
    check_against_naive("triton", *flat, REL["bfloat16"], window_size=window, cu_seqlens=cu_seqlens)


def _bad_inputs():
    B, T, HQ, H, K, V = 2, 8, 4, 2, 16, 16
    q, k, v = torch.randn(B, T, HQ, K), torch.randn(B, T, H, K), torch.randn(B, T, H, V)
    g = torch.randn(B, T, HQ)
    return [
        ("q as a list", dict(q=q.tolist()), "q must be a torch.Tensor"),
        ("q rank", dict(q=q[0]), r"q must have 4 dims"),
        ("k time", dict(k=k[:, :4]), r"k must have shape"),
        ("k dim", dict(k=torch.randn(B, T, H, K + 1)), r"k must have shape"),
        ("v heads", dict(v=torch.randn(B, T, H + 1, V)), r"v must have shape"),
        ("heads not a multiple", dict(k=torch.randn(B, T, 3, K), v=torch.randn(B, T, 3, V)), "multiple"),
        ("k dtype", dict(k=k.double()), r"k must have dtype float32"),
        ("q int", dict(q=q.long(), k=k.long(), v=v.long()), r"q must have dtype"),
        ("head dim too large", dict(q=torch.randn(B, T, HQ, 300), k=torch.randn(B, T, H, 300)), "head dim"),
        ("g shape", dict(g=g[..., :H]), r"g must have shape"),
        ("g dtype", dict(g=g.long()), r"g must have dtype"),
        ("scale", dict(scale=torch.tensor(0.5)), "scale must be a Python float"),
        ("window zero", dict(window_size=0), "window_size must be a positive int"),
        ("window float", dict(window_size=4.0), "window_size must be a positive int"),
        ("window bool", dict(window_size=True), "window_size must be a positive int"),
        ("cu_seqlens with B > 1", dict(cu_seqlens=torch.tensor([0, 8])), "batch size must be 1"),
        ("cu_seqlens end", dict(q=q[:1], k=k[:1], v=v[:1], g=g[:1], cu_seqlens=torch.tensor([0, 3, 7])),
         "must end at the number of tokens"),
        ("cu_seqlens dtype", dict(q=q[:1], k=k[:1], v=v[:1], g=g[:1], cu_seqlens=torch.tensor([0., 8.])),
         "cu_seqlens must have dtype"),
    ], dict(q=q, k=k, v=v, g=g)


@pytest.mark.parametrize("case", [c[0] for c in _bad_inputs()[0]])
def test_rejects_bad_inputs(case):
    cases, good = _bad_inputs()
    _, change, match = next(c for c in cases if c[0] == case)
    with pytest.raises(ValueError, match=match):
        parallel_attn(**{**good, **change})


def test_register_prune_keeps_what_fits():
    """The GPU autotuners drop configs whose tiles would spill (at D = 128 the 4-warp dk/dv configs of a 128-key
    block did: 832-1264 B); some config always survives."""
    import triton

    configs = [triton.Config({"BM": m}, num_warps=w) for m in (16, 32, 64) for w in (4, 8)]
    kept = kernels._prune("dkdv", "BN", "BM")(configs, {}, BN=64, BK=128, BV=128)
    assert kept and all(kernels._tile_registers("dkdv", 64, c.kwargs["BM"], 128, 128, c.num_warps)
                        <= kernels.REGISTER_BUDGET for c in kept)
    assert all(c.num_warps == 8 for c in kept)
    huge = kernels._prune("dkdv", "BN", "BM")(configs, {}, BN=256, BK=256, BV=256)
    assert len(huge) == 1 and huge[0].kwargs["BM"] == 16 and huge[0].num_warps == 8


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("cu,HQ,H,gated,window,dtype", [
    (None, 4, 2, True, None, "float32"),          # B=2, GQA, a gate, several query and key blocks
    ([0, 1, 40, 77, 90], 2, 1, False, 16, "float32"),  # a length-1 sequence, a window
    (None, 2, 2, False, None, "float16"),
])
def test_sink_bias_matches_naive(backend, cu, HQ, H, gated, window, dtype):
    """An attention sink per query head: output and every gradient, the sink's own included."""
    seed("sink", backend, cu, HQ, H, gated, window, dtype)
    B, T = (2, 70) if cu is None else (1, cu[-1])
    cu_seqlens = None if cu is None else torch.tensor(cu, dtype=torch.int32, device=device())
    q, k, v, g, do = make_inputs(B, T, HQ, H, 32, 32, gated, dtype)
    sink = torch.randn(HQ, device=device()) + 1.0  # around e^1: a visible share of every denominator

    def grads(fn, inputs):
        leaves = [x.clone().requires_grad_() for x in inputs if x is not None]
        qq, kk, vv, *rest = leaves
        gg = rest[0] if g is not None else None
        o = fn(qq, kk, vv, gg, window_size=window, cu_seqlens=cu_seqlens, sink_bias=rest[-1])
        return (o, *torch.autograd.grad(o, leaves, do.to(o.dtype)))

    with use_backend(backend), poisoned_empty():
        got = grads(parallel_attn, (q, k, v, g, sink))
    want = grads(naive_attn, [x.float() if x is not None else None for x in (q, k, v, g)] + [sink])
    names = ["o", "dq", "dk", "dv"] + (["dg"] if gated else []) + ["dsink"]
    for name, a, b in zip(names, got, want):
        assert_close(name, a, b.to(a.dtype), REL[dtype])
    assert got[-1].dtype == sink.dtype and got[-1].abs().max() > 0
    with pytest.raises(ValueError, match="sink_bias"):
        parallel_attn(q, k, v, sink_bias=torch.zeros(HQ + 1, device=device()))


def _naive_q_offset(q, k, v, g, sink, window, cu_q, cu_k):
    """The reference of `parallel_attn_q_offset`: `naive_attn` over the key sequences with every query placed at
    its key position (the other positions' queries are zeros and their outputs dropped)."""
    B, T, HQ, K = q.shape
    TK = k.shape[1]
    bq, bk = (cu_q, cu_k) if cu_q is not None else ([0, T], [0, TK])
    # the key position of every query row: sequence n's queries are its last Lq_n keys
    rows = torch.cat([torch.arange(bk[n + 1] - (bq[n + 1] - bq[n]), bk[n + 1]) for n in range(len(bq) - 1)])
    full = torch.zeros(B, TK, HQ, K).index_copy(1, rows, q)
    o = naive_attn(full, k, v, g, window_size=window, cu_seqlens=torch.tensor(cu_k) if cu_k is not None else None,
                   sink_bias=sink)
    return o[:, rows]


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("B,cu_q,cu_k,HQ,H,gated,window,sink", [
    # sequence 0 starts 45 keys before its first query (as a document continued from earlier CP ranks), a length-1
    # sequence, one with as many queries as keys, one with an offset inside a block
    (1, [0, 25, 26, 55, 64], [0, 70, 71, 100, 128], 4, 2, True, None, True),
    # a window shorter than the offsets; a key sequence with no query (its dk, dv, dg are zeros)
    (1, [0, 10, 10, 40, 64], [0, 30, 31, 90, 128], 2, 2, True, 20, False),
    (2, None, None, 2, 1, False, 33, True),  # fixed length rows: 40 queries, the last of 100 keys
])
def test_q_offset_matches_naive(backend, B, cu_q, cu_k, HQ, H, gated, window, sink):
    """Queries that are the last positions of longer key sequences (what CP attention runs): output and dq, dk, dv,
    dg, dsink against the naive attention over the keys, float32."""
    seed("q_offset", backend, B, cu_q, window)
    T, TK = (cu_q[-1], cu_k[-1]) if cu_q is not None else (40, 100)
    q = torch.randn(B, T, HQ, 32)
    k, v = torch.randn(B, TK, H, 32), torch.randn(B, TK, H, 32)
    g = F.logsigmoid(torch.randn(B, TK, HQ) + 2) if gated else None
    sink_bias = torch.randn(HQ) + 1.0 if sink else None
    do = torch.randn(B, T, HQ, 32)
    inputs = [x for x in (q, k, v, g, sink_bias) if x is not None]

    def grads(fn):
        leaves = [x.clone().requires_grad_() for x in inputs]
        it = iter(leaves)
        qq, kk, vv = next(it), next(it), next(it)
        gg = next(it) if gated else None
        ss = next(it) if sink else None
        o = fn(qq, kk, vv, gg, ss)
        return (o, *torch.autograd.grad(o, leaves, do))

    cu = [torch.tensor(c, dtype=torch.int32) if c is not None else None for c in (cu_q, cu_k)]
    with use_backend(backend), poisoned_empty():
        got = grads(lambda q, k, v, g, s: parallel_attn_q_offset(q, k, v, g, window_size=window, cu_seqlens=cu[0],
                                                                 cu_seqlens_k=cu[1], sink_bias=s))
    want = grads(lambda q, k, v, g, s: _naive_q_offset(q, k, v, g, s, window, cu_q, cu_k))
    names = ["o", "dq", "dk", "dv"] + (["dg"] if gated else []) + (["dsink"] if sink else [])
    for name, a, b in zip(names, got, want):
        assert_close(name, a, b, REL["float32"])
    if cu_q is not None and cu_q[1] == cu_q[2]:  # the key sequence without a query
        assert got[2][:, cu_k[1]:cu_k[2]].abs().max() == 0


@pytest.mark.parametrize("change,match", [
    (dict(cu_seqlens=torch.tensor([0, 8])), "pass both cu_seqlens"),
    (dict(cu_seqlens=torch.tensor([0, 8]), cu_seqlens_k=torch.tensor([0, 4, 12])), "same number of sequences"),
    (dict(cu_seqlens=torch.tensor([0, 6, 8]), cu_seqlens_k=torch.tensor([0, 4, 12])), "sequence 0 has 6 queries"),
    (dict(cu_seqlens=torch.tensor([0, 8]), cu_seqlens_k=torch.tensor([0, 11])), "cu_seqlens_k must end"),
    (dict(q=torch.randn(1, 13, 2, 16)), "at least as many tokens as q"),
    (dict(g=torch.randn(1, 8, 2)), "g must have shape"),
])
def test_q_offset_rejects_bad_inputs(change, match):
    good = dict(q=torch.randn(1, 8, 2, 16), k=torch.randn(1, 12, 1, 16), v=torch.randn(1, 12, 1, 16))
    with pytest.raises(ValueError, match=match):
        parallel_attn_q_offset(**{**good, **change})


def test_check_shared_mem_answers_for_the_device():
    """The peer's `check_shared_mem(arch, tensor_idx)`: without a CUDA device nothing is assumed (False); on one,
    an H100 has Hopper's 227 KiB and so Ampere's and the default's too."""
    from fla.ops.attn.parallel import check_shared_mem
    if not torch.cuda.is_available():
        assert check_shared_mem() is False and check_shared_mem("hopper", 0) is False
        return
    props = torch.cuda.get_device_properties(0)
    assert check_shared_mem("none", 0) == (props.shared_memory_per_block_optin >= 102400)
    if props.major == 9:
        assert check_shared_mem("hopper", 0) and check_shared_mem("ampere", 0)
    assert check_shared_mem("hopper", torch.cuda.device_count()) is False
