"""Context parallelism (fla/ops/cp): every op's outputs and gradients on a sequence split across 2 and 4 gloo
ranks equal the single-rank op's, fixed-length rows and packed documents (one crossing a rank boundary, one spanning
three ranks, one ending exactly at a boundary, a length-1 one); the DPLR delta rule and RWKV-7 among them.

One launch of 4 processes runs every case (a spawn costs seconds) on the 4-rank group and on two 2-rank
sub-groups (a data x context mesh's CP groups); each rank computes the single-rank reference itself on the whole
sequence. The ops run their PyTorch path (`use_backend("torch")`): the CP layer only composes the op's own autograd
function, the same on every backend, and the interpreter would cost minutes here. Failures are collected on every rank and raised after the last collective, so no rank hangs.
"""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from fla.ops.cp import FLACPContext, split_cu_seqlens
from tests.cp_helpers import run_on_ranks

T = 128
# documents 0-5, 5-6 (length 1), 6-70 (spans ranks 0, 1, 2 at world 4; crosses 64 at world 2), 70-96 (ends at
# rank 3's start at world 4), 96-100, 100-128
GLOBAL_CU = [0, 5, 6, 70, 96, 100, 128]
REL = 2e-5


def _gdn_inputs(B, H, HV, K, V):
    return dict(q=torch.randn(B, T, H, K), k=torch.randn(B, T, H, K), v=torch.randn(B, T, HV, V),
                g=F.logsigmoid(torch.randn(B, T, HV)) * 0.3, beta=torch.rand(B, T, HV))


def _cases():
    """name -> (make inputs dict of [B, T, ...] tensors, call(inputs, **where) -> output, module or None)."""
    from fla.modules import ShortConvolution
    from fla.modules.token_shift import token_shift
    from fla.ops import (chunk_delta_rule, chunk_gated_delta_rule, chunk_gla, chunk_linear_attn, chunk_retention,
                         chunk_simple_gla)
    from fla.ops.gated_delta_product import chunk_gated_delta_product
    from fla.ops.hgrn import chunk_hgrn
    from fla.ops.kda import chunk_kda
    from fla.ops.attn.parallel import parallel_attn
    from fla.ops.generalized_delta_rule import chunk_dplr_delta_rule
    from fla.ops.rwkv7 import chunk_rwkv7

    from tests.helpers import seed
    H, K, V = 2, 16, 24
    seed("modules")  # the same weights on every rank

    def qkv(B, **extra):
        return dict(q=torch.randn(B, T, H, K), k=torch.randn(B, T, H, K), v=torch.randn(B, T, H, V), **extra)

    sink = torch.nn.ParameterList([torch.nn.Parameter(torch.randn(4))])

    def attn(x, window_size=None, sink_bias=None, **where):
        return parallel_attn(x["q"], x["k"], x["v"], x.get("g"), window_size=window_size, sink_bias=sink_bias, **where)

    conv = ShortConvolution(20, kernel_size=4, bias=True)
    convs = [ShortConvolution(d, kernel_size=4) for d in (H * K, H * K, 2 * H * V)]
    cases = {
        "simple_gla": (lambda B: qkv(B, g=F.logsigmoid(torch.randn(B, T, H))),
                       lambda x, **w: chunk_simple_gla(x["q"], x["k"], x["v"], g=x["g"], **w)[0], None),
        "simple_gla_gamma": (lambda B: qkv(B),
                             lambda x, **w: chunk_simple_gla(x["q"], x["k"], x["v"],
                                                             g_gamma=torch.tensor([-0.05, -0.3]), **w)[0], None),
        "gla": (lambda B: qkv(B, g=F.logsigmoid(torch.randn(B, T, H, K)) * 0.2),
                lambda x, **w: chunk_gla(x["q"], x["k"], x["v"], x["g"], **w)[0], None),
        "retention": (lambda B: qkv(B), lambda x, **w: chunk_retention(x["q"], x["k"], x["v"], **w)[0], None),
        "linear_attn": (lambda B: dict(q=torch.rand(B, T, H, K), k=torch.rand(B, T, H, K), v=torch.randn(B, T, H, V)),
                        lambda x, **w: chunk_linear_attn(x["q"], x["k"], x["v"], normalize=True, **w)[0], None),
        "delta_rule": (lambda B: qkv(B, beta=torch.rand(B, T, H)),
                       lambda x, **w: chunk_delta_rule(x["q"], x["k"], x["v"], x["beta"],
                                                       use_qk_l2norm_in_kernel=True, **w)[0], None),
        # with more value columns than one call takes, M comes from a second run of the op (V + K > 256)
        "delta_rule_two_runs": (lambda B: qkv(B, beta=torch.rand(B, T, H)),
                                lambda x, **w: _two_runs(lambda: chunk_delta_rule(
                                    x["q"], x["k"], x["v"], x["beta"], use_qk_l2norm_in_kernel=True, **w)[0]), None),
        "gated_delta_rule": (lambda B: _gdn_inputs(B, H, 2 * H, K, V),
                             lambda x, **w: chunk_gated_delta_rule(x["q"], x["k"], x["v"], x["g"], x["beta"],
                                                                   use_qk_l2norm_in_kernel=True, **w)[0], None),
        "kda": (lambda B: dict(_gdn_inputs(B, H, 2 * H, K, V), g=F.logsigmoid(torch.randn(B, T, 2 * H, K)) * 0.3),
                lambda x, **w: chunk_kda(x["q"], x["k"], x["v"], x["g"], x["beta"], use_qk_l2norm_in_kernel=True,
                                         **w)[0], None),
        # element-wise decay: every channel its own head, the state [N, D]
        "hgrn": (lambda B: dict(x=torch.randn(B, T, 20), g=F.logsigmoid(torch.randn(B, T, 20)) * 0.3),
                 lambda x, **w: chunk_hgrn(x["x"], x["g"], **w)[0], None),
        # n = 2 Householder rows per token, kept as [B, T, n, ...] so the pieces cut tokens, flattened in the call
        "gated_delta_product": (lambda B: dict(q=torch.randn(B, T, H, K), k=torch.randn(B, T, 2, H, K),
                                               v=torch.randn(B, T, 2, 2 * H, V), beta=torch.rand(B, T, 2, 2 * H),
                                               g=F.logsigmoid(torch.randn(B, T, 2 * H))),
                                lambda x, **w: chunk_gated_delta_product(
                                    x["q"], x["k"].flatten(1, 2), x["v"].flatten(1, 2), x["g"], x["beta"].flatten(1, 2),
                                    2, use_qk_l2norm_in_kernel=True, **w)[0], None),
        # DPLR: S_t = diag(exp(gk_t)) S + b_t^T (a_t S) + k_t^T v_t, a and b given (RWKV-like: a = -kk, b = kk c)
        "dplr": (lambda B: dict(qkv(B), gk=F.logsigmoid(torch.randn(B, T, H, K)) * 0.3, **_low_rank(B, H, K)),
                 lambda x, **w: chunk_dplr_delta_rule(x["q"], x["k"], x["v"], x["a"], x["b"], x["gk"], **w)[0],
                 None),
        # RWKV-7 as its layer calls it: a = -kk, b = kk * a formed in the call, so dkk and da are checked
        "rwkv7": (lambda B: dict(r=torch.randn(B, T, H, K), w=-0.6 * torch.rand(B, T, H, K), k=torch.randn(B, T, H, K),
                                 v=torch.randn(B, T, H, V), kk=F.normalize(torch.randn(B, T, H, K), dim=-1),
                                 a=torch.rand(B, T, H, K)),
                  lambda x, **w: chunk_rwkv7(x["r"], x["w"], x["k"], x["v"], -x["kk"], x["kk"] * x["a"], **w)[0],
                  None),
        "short_conv": (lambda B: dict(x=torch.randn(B, T, 20)),
                       lambda x, cu_seqlens=None, cp_context=None: conv(x["x"], cu_seqlens=cu_seqlens,
                                                                        cp_context=cp_context)[0], conv),
        # RWKV's x_{t-1} - x_t: the previous rank's last token for a document that began there, zero at a start
        "token_shift": (lambda B: dict(x=torch.randn(B, T, 20)),
                        lambda x, cu_seqlens=None, cp_context=None: token_shift(x["x"], cu_seqlens,
                                                                                cp_context=cp_context), None),
        "parallel_attn": (lambda B: dict(q=torch.randn(B, T, 4, K), k=torch.randn(B, T, 2, K),
                                         v=torch.randn(B, T, 2, V), g=F.logsigmoid(torch.randn(B, T, 4))),
                          attn, None),
        "parallel_attn_window": (lambda B: dict(q=torch.randn(B, T, 4, K), k=torch.randn(B, T, 2, K),
                                                v=torch.randn(B, T, 2, V), g=None),
                                 lambda x, **w: attn(x, window_size=21, sink_bias=sink[0], **w), sink),
        # a GatedDeltaNet-like block: three convolutions (three halo exchanges) feeding one state exchange, so
        # the backward's collectives must come in the same order on every rank
        "conv_then_gdn": (lambda B: dict(x=torch.randn(B, T, 2 * H * K + 2 * H * V),
                                         g=F.logsigmoid(torch.randn(B, T, 2 * H)), beta=torch.rand(B, T, 2 * H)),
                          lambda x, **w: _conv_gdn(convs, x, H, K, V, **w), torch.nn.ModuleList(convs)),
    }
    return cases


def _low_rank(B, H, K):
    kk = F.normalize(torch.randn(B, T, H, K), dim=-1)
    return dict(a=-kk, b=kk * torch.rand(B, T, H, K))


def _two_runs(call):
    import fla.ops.cp.chunk as cp_chunk
    limit, cp_chunk.MAX_AUGMENTED_DIM = cp_chunk.MAX_AUGMENTED_DIM, 0
    try:
        return call()
    finally:
        cp_chunk.MAX_AUGMENTED_DIM = limit


def _conv_gdn(convs, x, H, K, V, cu_seqlens=None, cp_context=None):
    from fla.ops import chunk_gated_delta_rule
    B, L = x["x"].shape[:2]
    q, k, v = x["x"].split([H * K, H * K, 2 * H * V], -1)
    where = dict(cu_seqlens=cu_seqlens, cp_context=cp_context)
    q, k, v = (c(t, **where)[0] for c, t in zip(convs, (q, k, v)))
    return chunk_gated_delta_rule(q.view(B, L, H, K), k.view(B, L, H, K), v.view(B, L, 2 * H, V), x["g"], x["beta"],
                                  use_qk_l2norm_in_kernel=True, **where)[0]


def _run_case(name, make, call, module, mode, contexts, failures):
    """The single-rank reference once, then the op under every context (4 ranks; 2 ranks in a sub-group)."""
    from tests.helpers import rel_err, seed
    B = 2 if mode == "fixed" else 1
    seed(name, mode)
    full = {n: t.requires_grad_() for n, t in make(B).items() if t is not None}
    cu = torch.tensor(GLOBAL_CU, dtype=torch.int32) if mode == "varlen" else None
    params = list(module.parameters()) if module is not None else []
    ref = call(full, cu_seqlens=cu)
    w = torch.randn_like(ref)
    ref_grads = torch.autograd.grad((ref * w).sum(), list(full.values()) + params)
    for ctx in contexts:
        rank, world = ctx.rank, ctx.world_size
        piece = slice(rank * (T // world), (rank + 1) * (T // world))
        local = {n: t[:, piece].detach().clone().requires_grad_() for n, t in full.items()}
        got = call(local, cp_context=ctx)
        got_grads = torch.autograd.grad((got * w[:, piece]).sum(), list(local.values()) + params)
        checks = [("o", got, ref[:, piece])]
        checks += [(f"d{n}", gg, rg[:, piece]) for n, gg, rg in zip(full, got_grads, ref_grads)]
        for i, (gg, rg) in enumerate(zip(got_grads[len(full):], ref_grads[len(full):])):
            gg = gg.clone()
            dist.all_reduce(gg, group=ctx.group)  # each rank holds its tokens' share of a parameter's gradient
            checks.append((f"dparam{i}", gg, rg))
        for what, a, b in checks:
            err = rel_err(a, b)
            if not (err <= REL) or not torch.isfinite(a).all():
                failures.append(f"{name} {mode} world {world} rank {rank}: {what} rel err {err:.2e}")


def _check(rank, world, failures):
    from fla.ops.cp import build_cp_context
    from fla.ops.utils.dispatch import use_backend
    pairs = [dist.new_group([0, 1]), dist.new_group([2, 3])]  # two CP groups of 2, as in a 2 x 2 data x CP mesh
    groups = [dist.group.WORLD, pairs[rank // 2]]
    with use_backend("torch"):
        cu = torch.tensor(GLOBAL_CU)
        contexts = {"fixed": [build_cp_context(None, g) for g in groups],
                    "varlen": [build_cp_context(cu, g, conv1d_kernel_size=4) for g in groups]}
        for name, (make, call, module) in _cases().items():
            for mode in ("fixed", "varlen"):
                _run_case(name, make, call, module, mode, contexts[mode], failures)


def test_ops_under_context_parallelism_match_single_rank():
    run_on_ranks(_check, 4)


def test_split_cu_seqlens_describes_each_piece():
    cu = torch.tensor(GLOBAL_CU)
    pieces = [split_cu_seqlens(cu, 4, r) for r in range(4)]
    assert [p["cu_seqlens_cpu"].tolist() for p in pieces] == [[0, 5, 6, 32], [0, 32], [0, 6, 32], [0, 4, 32]]
    assert [p["is_first_rank"] for p in pieces] == [True, False, False, True]
    assert [p["is_last_rank"] for p in pieces] == [False, False, True, True]
    assert [p["pre_num_ranks"] for p in pieces] == [0, 1, 2, 0]
    assert [p["post_num_ranks"] for p in pieces] == [2, 1, 0, 0]
    assert [p["pre_num_conv_tokens"] for p in pieces] == [0, 26, 58, 0]
    ctx = FLACPContext(cu_seqlens=cu, cu_seqlens_cpu=pieces[1]["cu_seqlens_cpu"], is_first_rank=False, rank=1)
    assert ctx.receives_state and ctx.passes_state_through
    with pytest.raises(ValueError, match="multiple of the CP world size"):
        split_cu_seqlens(torch.tensor([0, 5, 130]), 4, 0)


def test_ops_refuse_what_cp_does_not_take():
    from fla.ops import chunk_gla
    q = torch.randn(1, 8, 1, 4)
    ctx = FLACPContext(rank=0, world_size=1, is_first_rank=True)
    with pytest.raises(ValueError, match="output_final_state"):
        chunk_gla(q, q, q, -torch.rand(1, 8, 1, 4), output_final_state=True, cp_context=ctx)
    with pytest.raises(ValueError, match="cu_seqlens"):
        chunk_gla(q, q, q, -torch.rand(1, 8, 1, 4), cu_seqlens=torch.tensor([0, 8]), cp_context=ctx)
    with pytest.raises(ValueError, match="FLACPContext"):
        chunk_gla(q, q, q, -torch.rand(1, 8, 1, 4), cp_context=object())
