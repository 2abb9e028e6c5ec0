"""Causal softmax attention (FlashAttention-2 style) with grouped queries, a sliding window, a forget gate and varlen.

    s_ij = scale * q_i . k_j + (G_i - G_j),   j <= i (and i - j < W),   o_i = sum_j softmax_j(s_ij) v_j
with G the float32 cumulative sum of the log forget gate g over each sequence (Forgetting Attention).

Kernels (one program per block of queries or keys, online softmax, never a T x T matrix):
- forward: per query block, loop over the key blocks it can see; saves the log-sum-exp (base 2, float32).
- backward: delta = rowsum(o * do); dk/dv per key block (looping over the query heads of its group, so the GQA sum
  is deterministic and nothing is repeated in memory); dq per query block. dG_i = rowsum_i(dS) - colsum_i(dS), and
  dg is its reverse cumulative sum over each sequence.
Every loop over blocks is cut into [masked, full, masked] ranges: only the blocks that touch the causal diagonal,
the window's edge or the sequence end pay for the mask.
An attention sink (`sink_bias` [HQ]) is one more logit per query head in every softmax denominator, with no value:
the forward merges it into the running max and sum after the key blocks, so the saved lse includes it, the
backward's probabilities and dS are unchanged, and d sink_bias = -sum_i exp(sink - lse_i) delta_i.
The PyTorch path (SDPA, for a CPU without the interpreter) is in `sdpa.py`.

Internal layouts: lse, delta, G, dG are float32 `[B, HQ, T]` (contiguous in time, so a block loads coalesced).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fla.ops.utils.checks import check_cu_seqlens, check_head_dim, check_scale, check_tensor, normalize_inputs
from fla.ops.utils.dispatch import autotune, dispatch, is_interpreter
from fla.ops.attn.sdpa import parallel_attn_torch, segment_cumsum
from fla.ops.utils.index import prepare_chunk_indices

LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)  # scores run in base 2 (exp2 is the fast path)


# ---------------------------------------------------------------------------------------------------------------------
# Block sizes. The block that indexes the grid (queries for the forward and dq, keys for dk/dv) is fixed per head dim,
# because the varlen (sequence, block) index is built with it on the host; the inner block is autotuned. Under the
# interpreter small blocks make short test sequences span several blocks of each kind (masked and full ranges).

def _outer_block(D: int) -> int:
    """Query block of the forward and dq."""
    if is_interpreter():
        return 32
    return 128 if D <= 128 else 64


def _key_block(D: int) -> int:
    """Key block of dk/dv: its program holds two float32 [block, D] accumulators (dk, dv) next to k and v, so at
    D = 128 a block of 128 keys is 256 accumulator registers per thread at 4 warps (the compile read: 832 B of
    spills); 64 keys fit. Its own block size costs only a second memoized varlen index."""
    if is_interpreter():
        return 32
    return 128 if D <= 64 else 64


# Registers per thread an inner-block config needs for its float32 tiles and half-precision operands, a coarse
# count (the compiler adds addresses and temporaries): a config past REGISTER_BUDGET spills on an H100 (255 at most,
# and the compile read showed spills from ~200 of these), so it is pruned before autotuning ever compiles it.
REGISTER_BUDGET = 160


def _tile_registers(kernel: str, outer: int, inner: int, BK: int, BV: int, warps: int) -> float:
    threads = 32 * warps
    if kernel == "fwd":  # acc [M, BV] + scores and probabilities [M, N] in float32; q [M, BK] half
        values = outer * BV + 2 * outer * inner + outer * BK / 2
    elif kernel == "dq":  # dq [M, BK] float32; q, do half; s, p, dp/ds [M, N] float32
        values = outer * BK + outer * (BK + BV) / 2 + 3 * outer * inner
    else:  # dkdv: dk [N, BK], dv [N, BV] float32; k, v half; s, p, dp/ds [N, M] float32
        values = outer * (BK + BV) + outer * (BK + BV) / 2 + 3 * outer * inner
    return values / threads


def _prune(kernel: str, outer_name: str, inner_name: str):
    """early_config_prune: keep the configs within REGISTER_BUDGET (the smallest tile at most warps if none is)."""

    def prune(configs, named_args, **kwargs):
        values = {**named_args, **kwargs}
        BK, BV, outer = values["BK"], values["BV"], values[outer_name]

        def need(c):
            return _tile_registers(kernel, outer, c.kwargs[inner_name], BK, BV, c.num_warps)

        kept = [c for c in configs if need(c) <= REGISTER_BUDGET]
        return kept or [min(configs, key=need)]

    return prune


def _configs(name: str, sizes: tuple[int, ...]) -> list[triton.Config]:
    if is_interpreter():
        return [triton.Config({name: 16}, num_warps=4, num_stages=1)]
    return [triton.Config({name: s}, num_warps=w, num_stages=n) for s in sizes for w in (4, 8) for n in (2, 3, 4)]


def _tuned(kernel: str, outer: str, inner: str, sizes: tuple[int, ...]):
    """The autotuner of one attention kernel: T in the key (the best inner block moves with the length), configs
    over the register budget pruned."""
    key = [outer, "BK", "BV", "GROUP", "USE_G", "HAS_WINDOW", "T"]
    if is_interpreter():
        return autotune(_configs(inner, sizes), key=key)
    return autotune(_configs(inner, sizes), key=key, prune_configs_by={"early_config_prune": _prune(kernel, outer,
                                                                                                    inner)})


# ---------------------------------------------------------------------------------------------------------------------
# Kernels. q/o/do: [B, T, HQ, K|V] (row stride HQ*K); k/v/dk/dv: [B, T, H, K|V]; under varlen B == 1 and sequence n
# spans tokens [cu_seqlens[n], cu_seqlens[n+1]). `tok0` is the first token of the program's sequence in the flattened
# [B*T] token axis, `gbase` the offset of (batch, query head, sequence start) in a [B, HQ, T] float32 tensor.

@triton.jit
def _seq_bounds(i_blk, i_b, cu_seqlens, block_indices, T, IS_VARLEN: tl.constexpr):
    """(block index within the sequence, first token in the flat token axis, start in the batch row, length)."""
    if IS_VARLEN:
        i_n = tl.load(block_indices + i_blk * 2).to(tl.int32)
        i_blk = tl.load(block_indices + i_blk * 2 + 1).to(tl.int32)
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        L = (tl.load(cu_seqlens + i_n + 1).to(tl.int64) - bos).to(tl.int32)
    else:
        bos = i_b.to(tl.int64) * 0
        L = T
    return i_blk, i_b.to(tl.int64) * T + bos, bos, L


@triton.jit
def _key_range(q_start, L, W, BM: tl.constexpr, BN: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """Key-block starts for queries [q_start, q_start + BM): masked [lo, m1), full [m1, m2), masked [m2, hi).
    A full block lies below the diagonal for the block's first query and inside the window of its last one."""
    q_end = tl.minimum(q_start + BM, L)
    hi = q_end
    if HAS_WINDOW:
        lo = tl.maximum(q_start - W + 1, 0) // BN * BN
        lo_full = tl.cdiv(tl.maximum(q_end - W, 0), BN) * BN
    else:
        lo = q_start * 0
        lo_full = lo
    hi_full = (q_start + 1) // BN * BN
    m1 = tl.minimum(tl.maximum(lo_full, lo), hi)
    m2 = tl.maximum(m1, tl.minimum(hi_full, hi))
    return lo, m1, m2, hi


@triton.jit
def _query_range(k_start, L, W, BN: tl.constexpr, BM: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """Query-block starts for keys [k_start, k_start + BN): masked [lo, m1), full [m1, m2), masked [m2, hi).
    A full block lies at or after the key block's last key, inside the window of its first key, and before L."""
    k_end = tl.minimum(k_start + BN, L)
    lo = k_start // BM * BM
    if HAS_WINDOW:
        hi = tl.minimum(L, k_end - 1 + W)
        hi_full = tl.minimum(L, k_start + W) // BM * BM
    else:
        hi = L + k_start * 0
        hi_full = L // BM * BM
    lo_full = tl.where(k_start + BN <= L, tl.cdiv(k_start + BN - 1, BM) * BM, hi)
    m1 = tl.minimum(tl.maximum(lo_full, lo), hi)
    m2 = tl.maximum(m1, tl.minimum(hi_full, hi))
    return lo, m1, m2, hi


@triton.jit
def _fwd_range(b_q, b_gq, b_acc, b_m, b_l, k, v, g, o_i, tok0, gbase, L, W, lo, hi, i_h, scale,
               H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
               BV: tl.constexpr, USE_G: tl.constexpr, HAS_WINDOW: tl.constexpr, MASK: tl.constexpr, PREC: tl.constexpr):
    o_k, o_v = tl.arange(0, BK), tl.arange(0, BV)
    for start in range(lo, hi, BN):
        o_j = start + tl.arange(0, BN)
        m_j = o_j < L
        b_kt = tl.load(k + (tok0 + o_j)[None, :] * (H * K) + i_h * K + o_k[:, None],
                       mask=m_j[None, :] & (o_k < K)[:, None], other=0.)
        b_v = tl.load(v + (tok0 + o_j)[:, None] * (H * V) + i_h * V + o_v[None, :],
                      mask=m_j[:, None] & (o_v < V)[None, :], other=0.)
        # scores in base 2: scale already carries log2(e)
        b_s = tl.dot(b_q, b_kt, input_precision=PREC) * scale
        if USE_G:
            b_gk = tl.load(g + gbase + o_j, mask=m_j, other=0.)
            b_s += (b_gq[:, None] - b_gk[None, :]) * LOG2E
        if MASK:
            m_s = (o_i[:, None] >= o_j[None, :]) & m_j[None, :]
            if HAS_WINDOW:
                m_s = m_s & (o_i[:, None] - o_j[None, :] < W)
            b_s = tl.where(m_s, b_s, float("-inf"))
        b_mn = tl.maximum(b_m, tl.max(b_s, 1))
        b_p = tl.exp2(b_s - b_mn[:, None])
        b_r = tl.exp2(b_m - b_mn)
        b_l = b_l * b_r + tl.sum(b_p, 1)
        b_acc = b_acc * b_r[:, None] + tl.dot(b_p.to(b_v.dtype), b_v, input_precision=PREC)
        b_m = b_mn
    return b_acc, b_m, b_l


def _fwd_heuristics(fn):
    return triton.heuristics({"IS_VARLEN": lambda args: args["cu_seqlens"] is not None})(fn)


@_fwd_heuristics
@_tuned("fwd", "BM", "BN", (32, 64, 128))
@triton.jit
def parallel_attn_fwd_kernel(
    q, k, v, g, sink, o, lse, cu_seqlens, block_indices, scale, W, T,
    HQ: tl.constexpr, H: tl.constexpr, GROUP: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_G: tl.constexpr, HAS_WINDOW: tl.constexpr, IS_VARLEN: tl.constexpr, PREC: tl.constexpr,
    USE_SINK: tl.constexpr,
):
    # grid: (query blocks, B * HQ); the last (heaviest, causal) blocks launch first, so the tail of the grid is light
    i_m, i_bh = tl.num_programs(0) - 1 - tl.program_id(0), tl.program_id(1)
    i_b, i_hq = i_bh // HQ, i_bh % HQ
    i_h = i_hq // GROUP
    i_m, tok0, bos, L = _seq_bounds(i_m, i_b, cu_seqlens, block_indices, T, IS_VARLEN)
    gbase = (i_b * HQ + i_hq).to(tl.int64) * T + bos

    o_i = i_m * BM + tl.arange(0, BM)
    m_i = o_i < L
    o_k, o_v = tl.arange(0, BK), tl.arange(0, BV)
    b_q = tl.load(q + (tok0 + o_i)[:, None] * (HQ * K) + i_hq * K + o_k[None, :],
                  mask=m_i[:, None] & (o_k < K)[None, :], other=0.)
    b_gq = tl.zeros([BM], dtype=tl.float32)
    if USE_G:
        b_gq = tl.load(g + gbase + o_i, mask=m_i, other=0.)
    # a finite floor (not -inf) keeps the rescale factor exp2(m_old - m_new) defined while a row has seen only
    # masked keys
    b_m = tl.full([BM], -1e30, dtype=tl.float32)
    b_l = tl.zeros([BM], dtype=tl.float32)
    b_acc = tl.zeros([BM, BV], dtype=tl.float32)
    sl2 = scale * LOG2E

    lo, m1, m2, hi = _key_range(i_m * BM, L, W, BM, BN, HAS_WINDOW)
    b_acc, b_m, b_l = _fwd_range(b_q, b_gq, b_acc, b_m, b_l, k, v, g, o_i, tok0, gbase, L, W, lo, m1, i_h, sl2,
                                 H, K, V, BN, BK, BV, USE_G, HAS_WINDOW, True, PREC)
    b_acc, b_m, b_l = _fwd_range(b_q, b_gq, b_acc, b_m, b_l, k, v, g, o_i, tok0, gbase, L, W, m1, m2, i_h, sl2,
                                 H, K, V, BN, BK, BV, USE_G, HAS_WINDOW, False, PREC)
    b_acc, b_m, b_l = _fwd_range(b_q, b_gq, b_acc, b_m, b_l, k, v, g, o_i, tok0, gbase, L, W, m2, hi, i_h, sl2,
                                 H, K, V, BN, BK, BV, USE_G, HAS_WINDOW, True, PREC)
    if USE_SINK:
        # the attention sink: one more logit per query head (sink[h], in base 2 here) in every denominator, with a
        # zero value; merged like one more key, so lse includes it and the backward's p_ij need no change
        b_sink = tl.load(sink + i_hq).to(tl.float32) * LOG2E
        b_mn = tl.maximum(b_m, b_sink)
        b_r = tl.exp2(b_m - b_mn)
        b_l = b_l * b_r + tl.exp2(b_sink - b_mn)
        b_acc = b_acc * b_r[:, None]
        b_m = b_mn

    b_l = tl.where(b_l > 0, b_l, 1.)  # rows past the sequence end saw no key; they are not stored
    b_o = b_acc / b_l[:, None]
    tl.store(o + (tok0 + o_i)[:, None] * (HQ * V) + i_hq * V + o_v[None, :], b_o.to(o.dtype.element_ty),
             mask=m_i[:, None] & (o_v < V)[None, :])
    tl.store(lse + gbase + o_i, b_m + tl.log2(b_l), mask=m_i)


@triton.jit
def parallel_attn_bwd_preprocess_kernel(o, do, delta, T, HQ: tl.constexpr, V: tl.constexpr,
                                        BT: tl.constexpr, BV: tl.constexpr):
    # grid: (token blocks, B * HQ); delta[b, h, t] = sum_v o[b, t, h, v] * do[b, t, h, v]
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_hq = i_bh // HQ, i_bh % HQ
    o_t, o_v = i_t * BT + tl.arange(0, BT), tl.arange(0, BV)
    m = (o_t < T)[:, None] & (o_v < V)[None, :]
    offs = (i_b.to(tl.int64) * T + o_t)[:, None] * (HQ * V) + i_hq * V + o_v[None, :]
    b_o = tl.load(o + offs, mask=m, other=0.).to(tl.float32)
    b_do = tl.load(do + offs, mask=m, other=0.).to(tl.float32)
    tl.store(delta + (i_b * HQ + i_hq).to(tl.int64) * T + o_t, tl.sum(b_o * b_do, 1), mask=o_t < T)


@triton.jit
def _dq_range(b_q, b_do, b_gq, b_lse, b_delta, b_dq, b_dg, k, v, g, o_i, tok0, gbase, L, W, lo, hi, i_h, scale,
              H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
              BV: tl.constexpr, USE_G: tl.constexpr, HAS_WINDOW: tl.constexpr, MASK: tl.constexpr, PREC: tl.constexpr):
    o_k, o_v = tl.arange(0, BK), tl.arange(0, BV)
    for start in range(lo, hi, BN):
        o_j = start + tl.arange(0, BN)
        m_j = o_j < L
        b_k = tl.load(k + (tok0 + o_j)[:, None] * (H * K) + i_h * K + o_k[None, :],
                      mask=m_j[:, None] & (o_k < K)[None, :], other=0.)
        b_v = tl.load(v + (tok0 + o_j)[:, None] * (H * V) + i_h * V + o_v[None, :],
                      mask=m_j[:, None] & (o_v < V)[None, :], other=0.)
        b_s = tl.dot(b_q, tl.trans(b_k), input_precision=PREC) * scale
        if USE_G:
            b_gk = tl.load(g + gbase + o_j, mask=m_j, other=0.)
            b_s += (b_gq[:, None] - b_gk[None, :]) * LOG2E
        b_p = tl.exp2(b_s - b_lse[:, None])
        if MASK:
            m_s = (o_i[:, None] >= o_j[None, :]) & m_j[None, :] & (o_i < L)[:, None]
            if HAS_WINDOW:
                m_s = m_s & (o_i[:, None] - o_j[None, :] < W)
            b_p = tl.where(m_s, b_p, 0.)
        b_dp = tl.dot(b_do, tl.trans(b_v), input_precision=PREC)
        b_ds = b_p * (b_dp - b_delta[:, None])
        b_dq += tl.dot(b_ds.to(b_k.dtype), b_k, input_precision=PREC)
        if USE_G:
            b_dg += tl.sum(b_ds, 1)
    return b_dq, b_dg


@_fwd_heuristics
@_tuned("dq", "BM", "BN", (16, 32, 64))
@triton.jit
def parallel_attn_bwd_dq_kernel(
    q, k, v, g, lse, delta, do, dq, dg, cu_seqlens, block_indices, scale, W, T,
    HQ: tl.constexpr, H: tl.constexpr, GROUP: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_G: tl.constexpr, HAS_WINDOW: tl.constexpr, IS_VARLEN: tl.constexpr, PREC: tl.constexpr,
):
    # grid: (query blocks, B * HQ), heaviest first as in the forward; dg receives rowsum(dS) per query
    i_m, i_bh = tl.num_programs(0) - 1 - tl.program_id(0), tl.program_id(1)
    i_b, i_hq = i_bh // HQ, i_bh % HQ
    i_h = i_hq // GROUP
    i_m, tok0, bos, L = _seq_bounds(i_m, i_b, cu_seqlens, block_indices, T, IS_VARLEN)
    gbase = (i_b * HQ + i_hq).to(tl.int64) * T + bos

    o_i = i_m * BM + tl.arange(0, BM)
    m_i = o_i < L
    o_k, o_v = tl.arange(0, BK), tl.arange(0, BV)
    m_qk = m_i[:, None] & (o_k < K)[None, :]
    b_q = tl.load(q + (tok0 + o_i)[:, None] * (HQ * K) + i_hq * K + o_k[None, :], mask=m_qk, other=0.)
    b_do = tl.load(do + (tok0 + o_i)[:, None] * (HQ * V) + i_hq * V + o_v[None, :],
                   mask=m_i[:, None] & (o_v < V)[None, :], other=0.)
    b_lse = tl.load(lse + gbase + o_i, mask=m_i, other=0.)
    b_delta = tl.load(delta + gbase + o_i, mask=m_i, other=0.)
    b_gq = tl.zeros([BM], dtype=tl.float32)
    if USE_G:
        b_gq = tl.load(g + gbase + o_i, mask=m_i, other=0.)
    b_dq = tl.zeros([BM, BK], dtype=tl.float32)
    b_dg = tl.zeros([BM], dtype=tl.float32)
    sl2 = scale * LOG2E

    lo, m1, m2, hi = _key_range(i_m * BM, L, W, BM, BN, HAS_WINDOW)
    b_dq, b_dg = _dq_range(b_q, b_do, b_gq, b_lse, b_delta, b_dq, b_dg, k, v, g, o_i, tok0, gbase, L, W, lo, m1,
                           i_h, sl2, H, K, V, BN, BK, BV, USE_G, HAS_WINDOW, True, PREC)
    b_dq, b_dg = _dq_range(b_q, b_do, b_gq, b_lse, b_delta, b_dq, b_dg, k, v, g, o_i, tok0, gbase, L, W, m1, m2,
                           i_h, sl2, H, K, V, BN, BK, BV, USE_G, HAS_WINDOW, False, PREC)
    b_dq, b_dg = _dq_range(b_q, b_do, b_gq, b_lse, b_delta, b_dq, b_dg, k, v, g, o_i, tok0, gbase, L, W, m2, hi,
                           i_h, sl2, H, K, V, BN, BK, BV, USE_G, HAS_WINDOW, True, PREC)

    tl.store(dq + (tok0 + o_i)[:, None] * (HQ * K) + i_hq * K + o_k[None, :], (b_dq * scale).to(dq.dtype.element_ty),
             mask=m_qk)
    if USE_G:
        tl.store(dg + gbase + o_i, b_dg, mask=m_i)


@triton.jit
def _dkdv_range(b_k, b_v, b_gk, b_dk, b_dv, b_dg, q, do, lse, delta, g, o_j, tok0, gbase, L, W, lo, hi, i_hq, scale,
                HQ: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr,
                BV: tl.constexpr, USE_G: tl.constexpr, HAS_WINDOW: tl.constexpr, MASK: tl.constexpr,
                PREC: tl.constexpr):
    # transposed view: scores are [keys BN, queries BM]
    o_k, o_v = tl.arange(0, BK), tl.arange(0, BV)
    for start in range(lo, hi, BM):
        o_i = start + tl.arange(0, BM)
        m_i = o_i < L
        b_q = tl.load(q + (tok0 + o_i)[:, None] * (HQ * K) + i_hq * K + o_k[None, :],
                      mask=m_i[:, None] & (o_k < K)[None, :], other=0.)
        b_do = tl.load(do + (tok0 + o_i)[:, None] * (HQ * V) + i_hq * V + o_v[None, :],
                       mask=m_i[:, None] & (o_v < V)[None, :], other=0.)
        b_lse = tl.load(lse + gbase + o_i, mask=m_i, other=0.)
        b_delta = tl.load(delta + gbase + o_i, mask=m_i, other=0.)
        b_s = tl.dot(b_k, tl.trans(b_q), input_precision=PREC) * scale
        if USE_G:
            b_gq = tl.load(g + gbase + o_i, mask=m_i, other=0.)
            b_s += (b_gq[None, :] - b_gk[:, None]) * LOG2E
        b_p = tl.exp2(b_s - b_lse[None, :])
        if MASK:
            m_s = (o_i[None, :] >= o_j[:, None]) & m_i[None, :] & (o_j < L)[:, None]
            if HAS_WINDOW:
                m_s = m_s & (o_i[None, :] - o_j[:, None] < W)
            b_p = tl.where(m_s, b_p, 0.)
        b_dv += tl.dot(b_p.to(b_do.dtype), b_do, input_precision=PREC)
        b_dp = tl.dot(b_v, tl.trans(b_do), input_precision=PREC)
        b_ds = b_p * (b_dp - b_delta[None, :])
        b_dk += tl.dot(b_ds.to(b_q.dtype), b_q, input_precision=PREC)
        if USE_G:
            b_dg -= tl.sum(b_ds, 1)
    return b_dk, b_dv, b_dg


@_fwd_heuristics
@_tuned("dkdv", "BN", "BM", (16, 32, 64))
@triton.jit
def parallel_attn_bwd_dkdv_kernel(
    q, k, v, g, lse, delta, do, dk, dv, dg, cu_seqlens, block_indices, scale, W, T,
    HQ: tl.constexpr, H: tl.constexpr, GROUP: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_G: tl.constexpr, HAS_WINDOW: tl.constexpr, IS_VARLEN: tl.constexpr, PREC: tl.constexpr,
):
    # grid: (key blocks, B * H); the query heads of the group are summed in order inside the program (deterministic);
    # dg receives -colsum(dS) per key and query head
    i_n, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    i_n, tok0, bos, L = _seq_bounds(i_n, i_b, cu_seqlens, block_indices, T, IS_VARLEN)

    o_j = i_n * BN + tl.arange(0, BN)
    m_j = o_j < L
    o_k, o_v = tl.arange(0, BK), tl.arange(0, BV)
    m_kk = m_j[:, None] & (o_k < K)[None, :]
    m_vv = m_j[:, None] & (o_v < V)[None, :]
    b_k = tl.load(k + (tok0 + o_j)[:, None] * (H * K) + i_h * K + o_k[None, :], mask=m_kk, other=0.)
    b_v = tl.load(v + (tok0 + o_j)[:, None] * (H * V) + i_h * V + o_v[None, :], mask=m_vv, other=0.)
    b_dk = tl.zeros([BN, BK], dtype=tl.float32)
    b_dv = tl.zeros([BN, BV], dtype=tl.float32)
    sl2 = scale * LOG2E

    lo, m1, m2, hi = _query_range(i_n * BN, L, W, BN, BM, HAS_WINDOW)
    for i_g in range(GROUP):
        i_hq = i_h * GROUP + i_g
        gbase = (i_b * HQ + i_hq).to(tl.int64) * T + bos
        b_gk = tl.zeros([BN], dtype=tl.float32)
        if USE_G:
            b_gk = tl.load(g + gbase + o_j, mask=m_j, other=0.)
        b_dg = tl.zeros([BN], dtype=tl.float32)
        b_dk, b_dv, b_dg = _dkdv_range(b_k, b_v, b_gk, b_dk, b_dv, b_dg, q, do, lse, delta, g, o_j, tok0, gbase, L,
                                       W, lo, m1, i_hq, sl2, HQ, K, V, BM, BK, BV, USE_G, HAS_WINDOW, True, PREC)
        b_dk, b_dv, b_dg = _dkdv_range(b_k, b_v, b_gk, b_dk, b_dv, b_dg, q, do, lse, delta, g, o_j, tok0, gbase, L,
                                       W, m1, m2, i_hq, sl2, HQ, K, V, BM, BK, BV, USE_G, HAS_WINDOW, False, PREC)
        b_dk, b_dv, b_dg = _dkdv_range(b_k, b_v, b_gk, b_dk, b_dv, b_dg, q, do, lse, delta, g, o_j, tok0, gbase, L,
                                       W, m2, hi, i_hq, sl2, HQ, K, V, BM, BK, BV, USE_G, HAS_WINDOW, True, PREC)
        if USE_G:
            tl.store(dg + gbase + o_j, b_dg, mask=m_j)

    tl.store(dk + (tok0 + o_j)[:, None] * (H * K) + i_h * K + o_k[None, :], (b_dk * scale).to(dk.dtype.element_ty),
             mask=m_kk)
    tl.store(dv + (tok0 + o_j)[:, None] * (H * V) + i_h * V + o_v[None, :], b_dv.to(dv.dtype.element_ty), mask=m_vv)


# ---------------------------------------------------------------------------------------------------------------------
# Launchers.

def _dims(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> dict:
    HQ, H, K, V = q.shape[2], k.shape[2], k.shape[3], v.shape[3]
    # float32 inputs get float32 products (the default would be tf32 on a GPU); half types ignore the setting
    return dict(HQ=HQ, H=H, GROUP=HQ // H, K=K, V=V,
                BK=max(16, triton.next_power_of_2(K)), BV=max(16, triton.next_power_of_2(V)),
                PREC="ieee" if q.dtype == torch.float32 else "tf32")


def prepare_block_indices(q: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor | None) -> torch.Tensor | None:
    """The varlen (sequence, query block) index of the forward and dq (dk/dv use `_key_block`'s, memoized alike)."""
    if cu_seqlens is None:
        return None
    return prepare_chunk_indices(cu_seqlens, _outer_block(max(q.shape[-1], v.shape[-1])))


def _grid(T: int, B: int, heads: int, block: int, block_indices: torch.Tensor | None) -> tuple[int, int]:
    return (triton.cdiv(T, block) if block_indices is None else len(block_indices), B * heads)


def parallel_attn_fwd(q, k, v, G, scale, window_size, cu_seqlens, block_indices=None, sink=None):
    """o [B, T, HQ, V] in q's dtype and lse [B, HQ, T] float32 (base 2, the sink's logit sink [HQ] included)."""
    B, T, HQ, _ = q.shape
    dims = _dims(q, k, v)
    o = q.new_empty(B, T, HQ, dims["V"])
    lse = q.new_empty(B, HQ, T, dtype=torch.float32)
    BM = _outer_block(max(dims["K"], dims["V"]))
    if cu_seqlens is not None and block_indices is None:
        block_indices = prepare_block_indices(q, v, cu_seqlens)
    grid = _grid(T, B, HQ, BM, block_indices)
    if grid[0] > 0 and T > 0:
        parallel_attn_fwd_kernel[grid](
            q, k, v, G, sink, o, lse, cu_seqlens, block_indices, scale, window_size or 0, T,
            BM=BM, USE_G=G is not None, HAS_WINDOW=window_size is not None, USE_SINK=sink is not None, **dims,
        )
    return o, lse


def parallel_attn_bwd(q, k, v, o, G, lse, do, scale, window_size, cu_seqlens, block_indices=None, sink=None):
    """dq, dk, dv in their inputs' dtypes, dG [B, HQ, T] float32 (None without a gate) and dsink [HQ] float32
    (None without a sink)."""
    B, T, HQ, _ = q.shape
    dims = _dims(q, k, v)
    delta = q.new_empty(B, HQ, T, dtype=torch.float32)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    dg_row = dg_col = None
    if G is not None:
        dg_row, dg_col = torch.empty_like(G), torch.empty_like(G)
    if T == 0:
        return dq, dk, dv, dg_row, None if sink is None else torch.zeros_like(sink, dtype=torch.float32)
    do = do.contiguous()
    flags = dict(USE_G=G is not None, HAS_WINDOW=window_size is not None, **dims)
    W = window_size or 0
    BT = 64
    parallel_attn_bwd_preprocess_kernel[(triton.cdiv(T, BT), B * HQ)](
        o, do, delta, T, HQ=HQ, V=dims["V"], BT=BT, BV=dims["BV"],
    )
    dsink = None
    if sink is not None:
        # the sink's probability exp(sink - lse) times its dp - delta, with dp = do . 0 = 0: one sum over [B, T]
        # (every position of [B, T] is a token, also under cu_seqlens)
        dsink = -(torch.exp2(sink.float()[None, :, None] * 1.4426950408889634 - lse) * delta).sum((0, 2))
    block = _outer_block(max(dims["K"], dims["V"]))
    if cu_seqlens is not None and block_indices is None:
        block_indices = prepare_block_indices(q, v, cu_seqlens)
    key_block = _key_block(max(dims["K"], dims["V"]))
    key_indices = prepare_chunk_indices(cu_seqlens, key_block) if cu_seqlens is not None else None
    grid = _grid(T, B, dims["H"], key_block, key_indices)
    if grid[0] > 0:
        parallel_attn_bwd_dkdv_kernel[grid](
            q, k, v, G, lse, delta, do, dk, dv, dg_col, cu_seqlens, key_indices, scale, W, T, BN=key_block, **flags,
        )
    grid = _grid(T, B, HQ, block, block_indices)
    if grid[0] > 0:
        parallel_attn_bwd_dq_kernel[grid](
            q, k, v, G, lse, delta, do, dq, dg_row, cu_seqlens, block_indices, scale, W, T, BM=block, **flags,
        )
    return dq, dk, dv, (dg_row + dg_col if G is not None else None), dsink


class ParallelAttnFunction(torch.autograd.Function):

    @staticmethod
    def forward(ctx, q, k, v, g, sink, scale, window_size, cu_seqlens):
        # G: float32 [B, HQ, T], the per-sequence cumulative gate
        G = segment_cumsum(g, cu_seqlens).transpose(1, 2).contiguous() if g is not None else None
        block_indices = prepare_block_indices(q, v, cu_seqlens)
        o, lse = parallel_attn_fwd(q, k, v, G, scale, window_size, cu_seqlens, block_indices, sink)
        ctx.save_for_backward(q, k, v, o, G, lse, cu_seqlens, block_indices, sink)
        ctx.scale, ctx.window_size, ctx.g_dtype = scale, window_size, g.dtype if g is not None else None
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, G, lse, cu_seqlens, block_indices, sink = ctx.saved_tensors
        dq, dk, dv, dG, dsink = parallel_attn_bwd(q, k, v, o, G, lse, do, ctx.scale, ctx.window_size, cu_seqlens,
                                                  block_indices, sink)
        dg = None
        if dG is not None and ctx.needs_input_grad[3]:
            dg = segment_cumsum(dG.transpose(1, 2), cu_seqlens, reverse=True).to(ctx.g_dtype)
        if dsink is not None:
            dsink = dsink.to(sink.dtype)
        return dq, dk, dv, dg, dsink, None, None, None


def _parallel_attn_triton(q, k, v, g, scale, window_size, cu_seqlens, sink_bias=None):
    return ParallelAttnFunction.apply(q, k, v, g, sink_bias, scale, window_size, cu_seqlens)


_parallel_attn = dispatch(_parallel_attn_triton, parallel_attn_torch)


# ---------------------------------------------------------------------------------------------------------------------
# The public function.

@normalize_inputs
def parallel_attn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None = None,
    scale: float | None = None,
    window_size: int | None = None,
    cu_seqlens: torch.Tensor | None = None,
    chunk_indices: torch.Tensor | None = None,
    sink_bias: torch.Tensor | None = None,
    *,
    cu_seqlens_cpu: torch.Tensor | None = None,
    cp_context=None,
) -> torch.Tensor:
    """Causal softmax attention; query head h uses key/value head h // (HQ / H).

    Args:
        q: [B, T, HQ, K]   queries
        k: [B, T, H, K]    keys (HQ a multiple of H)
        v: [B, T, H, V]    values
        g: [B, T, HQ]      log forget gates (<= 0), optional: adds G_i - G_j to score (i, j), G = cumsum of g
        scale: defaults to K ** -0.5
        window_size: W, query i attends to keys i - W + 1 .. i; None for full causal attention
        cu_seqlens: [N + 1] int, packed sequences, B must be 1 (no attention across a boundary)
        chunk_indices: taken for the peer library's call form and not needed: the block index of a cu_seqlens is
            built once and memoized (`fla.ops.utils.index.varlen_index`), for this op's own block size
        sink_bias: [HQ] an attention sink per query head (GPT-OSS), optional: exp(sink_bias[h]) joins every softmax
            denominator of head h with no value, p_ij = exp(s_ij) / (sum_j' exp(s_ij') + exp(sink_bias[h]));
            differentiable (its gradient is -sum_i p_sink,i * (do_i . o_i))
        cu_seqlens_cpu: the same boundaries on the host (optional): then no device->host sync at all
        cp_context: this rank's piece of a sequence split across ranks (fla.ops.cp.build_cp_context): the inputs
            are this rank's tokens; keys and values are all-gathered (fla/ops/attn/cp.py)
    Returns:
        o: [B, T, HQ, V] in q's dtype
    """
    check_tensor("q", q, "[B, T, HQ, K]", (None, None, None, None))
    B, T, HQ, K = q.shape
    check_tensor("k", k, "[B, T, H, K]", (B, T, None, K), (q.dtype,), q.device)
    H = k.shape[2]
    check_tensor("v", v, "[B, T, H, V]", (B, T, H, None), (q.dtype,), q.device)
    if H == 0 or HQ % H != 0:
        raise ValueError(f"the number of query heads ({HQ}) must be a multiple of the number of key/value heads "
                         f"({H}): query head h uses key/value head h // (HQ / H)")
    check_head_dim("q/k", K)
    check_head_dim("v", v.shape[3])
    if g is not None:
        check_tensor("g", g, "[B, T, HQ]", (B, T, HQ), device=q.device)
    check_scale(scale)
    if window_size is not None and (isinstance(window_size, bool) or not isinstance(window_size, int)
                                    or window_size < 1):
        raise ValueError(f"window_size must be a positive int or None for full causal attention (got {window_size!r})")
    if cu_seqlens is not None:
        check_cu_seqlens(cu_seqlens, B, T)
        if cu_seqlens.device != q.device:
            raise ValueError(f"cu_seqlens is on {cu_seqlens.device} but q is on {q.device}; move it with "
                             f".to({str(q.device)!r})")
    if sink_bias is not None:
        check_tensor("sink_bias", sink_bias, "[HQ]", (HQ,), device=q.device)
    scale = K ** -0.5 if scale is None else float(scale)
    if cp_context is not None:
        from fla.ops.attn.cp import parallel_attn_cp
        return parallel_attn_cp(q, k, v, g, scale, window_size, cu_seqlens, cp_context, sink_bias)
    return _parallel_attn(q, k, v, g, scale, window_size, cu_seqlens, sink_bias)
