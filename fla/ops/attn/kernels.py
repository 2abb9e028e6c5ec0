"""The Triton kernels of `parallel_attn` (launchers, autograd and the public functions are in `parallel.py`).

Queries may be a window of a longer key sequence (`Q_OFFSET`): per sequence n, Lq_n queries and Lk_n >= Lq_n keys,
and query i stands at key position off_n + i with off_n = Lk_n - Lq_n (the queries are the last Lq_n positions,
flash-attn's bottom-right alignment of varlen q/k). All masks and ranges run in key positions, so causal, window,
gate and sink work unchanged; without Q_OFFSET off_n = 0 and Lk_n = Lq_n at compile time (the kernels are the plain
ones). This is what context parallelism needs: this rank's queries against the all-gathered keys of their documents.
"""
from __future__ import annotations

import triton
import triton.language as tl

from fla.ops.utils.dispatch import autotune, is_interpreter

LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)  # scores run in base 2 (exp2 is the fast path)

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
    key = [outer, "BK", "BV", "GROUP", "USE_G", "HAS_WINDOW", "Q_OFFSET", "T"]
    if is_interpreter():
        return autotune(_configs(inner, sizes), key=key)
    return autotune(_configs(inner, sizes), key=key, prune_configs_by={"early_config_prune": _prune(kernel, outer,
                                                                                                    inner)})


# ---------------------------------------------------------------------------------------------------------------------
# Kernels. q/o/do: [B, T, HQ, K|V] (row stride HQ*K); k/v/dk/dv: [B, TK, H, K|V] (TK == T without Q_OFFSET); under
# varlen B == 1 and sequence n spans queries [cu_q[n], cu_q[n+1]) and keys [cu_k[n], cu_k[n+1]) (cu_k is cu_q
# without Q_OFFSET). `tq0` / `tk0` are the first query / key token of the program's sequence in the flattened [B*T] /
# [B*TK] token axes; `qbase` the offset of (batch, query head, sequence start) in a [B, HQ, T] float32 tensor (lse,
# delta), `kbase` that in a [B, HQ, TK] one (G, dG: the gate lives on the keys' axis). Positions (o_i, o_j, the
# ranges, L) are key positions; a query's row in q is its position minus `off`.

@triton.jit
def _seq_bounds(i_blk, i_b, cu_q, cu_k, block_indices, T, TK, IS_VARLEN: tl.constexpr, Q_OFFSET: tl.constexpr):
    """(block index within the sequence, tq0, tk0, query start in the batch row, key start in the batch row, Lq,
    Lk). The block index comes from the (sequence, block) rows of the grid's axis, the queries' or the keys'."""
    if IS_VARLEN:
        i_n = tl.load(block_indices + i_blk * 2).to(tl.int32)
        i_blk = tl.load(block_indices + i_blk * 2 + 1).to(tl.int32)
        bos = tl.load(cu_q + i_n).to(tl.int64)
        Lq = (tl.load(cu_q + i_n + 1).to(tl.int64) - bos).to(tl.int32)
        if Q_OFFSET:
            bos_k = tl.load(cu_k + i_n).to(tl.int64)
            Lk = (tl.load(cu_k + i_n + 1).to(tl.int64) - bos_k).to(tl.int32)
        else:
            bos_k, Lk = bos, Lq
    else:
        bos = i_b.to(tl.int64) * 0
        bos_k = bos
        Lq = T
        Lk = TK if Q_OFFSET else T
    tq0 = i_b.to(tl.int64) * T + bos
    tk0 = i_b.to(tl.int64) * TK + bos_k if Q_OFFSET else tq0
    return i_blk, tq0, tk0, bos, bos_k, Lq, Lk


@triton.jit
def _query_program(cu_seqlens, cu_seqlens_k, block_indices, T, TK, HQ: tl.constexpr, GROUP: tl.constexpr,
                   IS_VARLEN: tl.constexpr, Q_OFFSET: tl.constexpr):
    """The prologue of a query-block program (forward and dq), grid (query blocks, B * HQ) walked backwards so that
    the last (heaviest, causal) blocks launch first and the tail of the grid is light. Returns (block index within
    the sequence, query head, its key/value head, tq0, tk0, qbase, kbase, off = Lk - Lq, Lq, Lk)."""
    i_m, i_bh = tl.num_programs(0) - 1 - tl.program_id(0), tl.program_id(1)
    i_b, i_hq = i_bh // HQ, i_bh % HQ
    i_h = i_hq // GROUP
    i_m, tq0, tk0, bos, bos_k, Lq, L = _seq_bounds(i_m, i_b, cu_seqlens, cu_seqlens_k, block_indices, T, TK,
                                                   IS_VARLEN, Q_OFFSET)
    qbase = (i_b * HQ + i_hq).to(tl.int64) * T + bos
    if Q_OFFSET:
        off = L - Lq
        kbase = (i_b * HQ + i_hq).to(tl.int64) * TK + bos_k
    else:
        off = 0
        kbase = qbase
    return i_m, i_hq, i_h, tq0, tk0, qbase, kbase, off, Lq, L


@triton.jit
def _key_range(q_start, L, W, BM: tl.constexpr, BN: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """Key-block starts for the queries at positions [q_start, q_start + BM): masked [lo, m1), full [m1, m2), masked
    [m2, hi). A full block lies below the diagonal for the block's first query and inside the window of its last
    one. Key blocks sit on the grid of multiples of BN (any q_start)."""
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
def _query_range(k_start, L, W, off, BN: tl.constexpr, BM: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """Query-block starts (positions) for the keys [k_start, k_start + BN): masked [lo, m1), full [m1, m2), masked
    [m2, hi). Query blocks sit on the grid off + multiples of BM and start at or after `off` (the first query), so
    a block never holds a position without a query before L. A full block lies at or after the key block's last
    key, inside the window of its first key, and before L."""
    k_end = tl.minimum(k_start + BN, L)
    lo = off + tl.maximum(k_start - off, 0) // BM * BM
    if HAS_WINDOW:
        hi = tl.minimum(L, k_end - 1 + W)
        hi_full = off + tl.maximum(tl.minimum(L, k_start + W) - off, 0) // BM * BM
    else:
        hi = L + k_start * 0
        hi_full = off + (L - off) // BM * BM
    lo_full = tl.where(k_start + BN <= L, off + tl.cdiv(tl.maximum(k_start + BN - 1 - off, 0), BM) * BM, hi)
    m1 = tl.minimum(tl.maximum(lo_full, lo), hi)
    m2 = tl.maximum(m1, tl.minimum(hi_full, hi))
    return lo, m1, m2, hi


@triton.jit
def _fwd_range(b_q, b_gq, b_acc, b_m, b_l, k, v, g, o_i, tk0, kbase, L, W, lo, hi, i_h, scale,
               H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
               BV: tl.constexpr, USE_G: tl.constexpr, HAS_WINDOW: tl.constexpr, MASK: tl.constexpr, PREC: tl.constexpr):
    o_k, o_v = tl.arange(0, BK), tl.arange(0, BV)
    for start in range(lo, hi, BN):
        o_j = start + tl.arange(0, BN)
        m_j = o_j < L
        b_kt = tl.load(k + (tk0 + o_j)[None, :] * (H * K) + i_h * K + o_k[:, None],
                       mask=m_j[None, :] & (o_k < K)[:, None], other=0.)
        b_v = tl.load(v + (tk0 + o_j)[:, None] * (H * V) + i_h * V + o_v[None, :],
                      mask=m_j[:, None] & (o_v < V)[None, :], other=0.)
        # scores in base 2: scale already carries log2(e)
        b_s = tl.dot(b_q, b_kt, input_precision=PREC) * scale
        if USE_G:
            b_gk = tl.load(g + kbase + o_j, mask=m_j, other=0.)
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


def _heuristics(fn):
    return triton.heuristics({"IS_VARLEN": lambda args: args["cu_seqlens"] is not None})(fn)


@_heuristics
@_tuned("fwd", "BM", "BN", (32, 64, 128))
@triton.jit
def parallel_attn_fwd_kernel(
    q, k, v, g, sink, o, lse, cu_seqlens, cu_seqlens_k, block_indices, scale, W, T, TK,
    HQ: tl.constexpr, H: tl.constexpr, GROUP: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_G: tl.constexpr, HAS_WINDOW: tl.constexpr, IS_VARLEN: tl.constexpr, PREC: tl.constexpr,
    USE_SINK: tl.constexpr, Q_OFFSET: tl.constexpr,
):
    # grid: (query blocks, B * HQ), the heaviest blocks first (`_query_program`)
    i_m, i_hq, i_h, tq0, tk0, qbase, kbase, off, Lq, L = _query_program(cu_seqlens, cu_seqlens_k, block_indices, T,
                                                                        TK, HQ, GROUP, IS_VARLEN, Q_OFFSET)

    o_r = i_m * BM + tl.arange(0, BM)  # query rows of the sequence; their key positions are off + o_r
    o_i = off + o_r
    m_i = o_r < Lq
    o_k, o_v = tl.arange(0, BK), tl.arange(0, BV)
    b_q = tl.load(q + (tq0 + o_r)[:, None] * (HQ * K) + i_hq * K + o_k[None, :],
                  mask=m_i[:, None] & (o_k < K)[None, :], other=0.)
    b_gq = tl.zeros([BM], dtype=tl.float32)
    if USE_G:
        b_gq = tl.load(g + kbase + o_i, mask=m_i, other=0.)
    # a finite floor (not -inf) keeps the rescale factor exp2(m_old - m_new) defined while a row has seen only
    # masked keys
    b_m = tl.full([BM], -1e30, dtype=tl.float32)
    b_l = tl.zeros([BM], dtype=tl.float32)
    b_acc = tl.zeros([BM, BV], dtype=tl.float32)
    sl2 = scale * LOG2E

    lo, m1, m2, hi = _key_range(off + i_m * BM, L, W, BM, BN, HAS_WINDOW)
    b_acc, b_m, b_l = _fwd_range(b_q, b_gq, b_acc, b_m, b_l, k, v, g, o_i, tk0, kbase, L, W, lo, m1, i_h, sl2,
                                 H, K, V, BN, BK, BV, USE_G, HAS_WINDOW, True, PREC)
    b_acc, b_m, b_l = _fwd_range(b_q, b_gq, b_acc, b_m, b_l, k, v, g, o_i, tk0, kbase, L, W, m1, m2, i_h, sl2,
                                 H, K, V, BN, BK, BV, USE_G, HAS_WINDOW, False, PREC)
    b_acc, b_m, b_l = _fwd_range(b_q, b_gq, b_acc, b_m, b_l, k, v, g, o_i, tk0, kbase, L, W, m2, hi, i_h, sl2,
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
    tl.store(o + (tq0 + o_r)[:, None] * (HQ * V) + i_hq * V + o_v[None, :], b_o.to(o.dtype.element_ty),
             mask=m_i[:, None] & (o_v < V)[None, :])
    tl.store(lse + qbase + o_r, b_m + tl.log2(b_l), mask=m_i)


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
def _dq_range(b_q, b_do, b_gq, b_lse, b_delta, b_dq, b_dg, k, v, g, o_i, tk0, kbase, L, W, lo, hi, i_h, scale,
              H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
              BV: tl.constexpr, USE_G: tl.constexpr, HAS_WINDOW: tl.constexpr, MASK: tl.constexpr, PREC: tl.constexpr):
    o_k, o_v = tl.arange(0, BK), tl.arange(0, BV)
    for start in range(lo, hi, BN):
        o_j = start + tl.arange(0, BN)
        m_j = o_j < L
        b_k = tl.load(k + (tk0 + o_j)[:, None] * (H * K) + i_h * K + o_k[None, :],
                      mask=m_j[:, None] & (o_k < K)[None, :], other=0.)
        b_v = tl.load(v + (tk0 + o_j)[:, None] * (H * V) + i_h * V + o_v[None, :],
                      mask=m_j[:, None] & (o_v < V)[None, :], other=0.)
        b_s = tl.dot(b_q, tl.trans(b_k), input_precision=PREC) * scale
        if USE_G:
            b_gk = tl.load(g + kbase + o_j, mask=m_j, other=0.)
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


@_heuristics
@_tuned("dq", "BM", "BN", (16, 32, 64))
@triton.jit
def parallel_attn_bwd_dq_kernel(
    q, k, v, g, lse, delta, do, dq, dg, cu_seqlens, cu_seqlens_k, block_indices, scale, W, T, TK,
    HQ: tl.constexpr, H: tl.constexpr, GROUP: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_G: tl.constexpr, HAS_WINDOW: tl.constexpr, IS_VARLEN: tl.constexpr, PREC: tl.constexpr,
    Q_OFFSET: tl.constexpr,
):
    # grid: (query blocks, B * HQ), heaviest first as in the forward; dg receives rowsum(dS) at each query's key
    # position (the keys' positions without a query are left as they are: zeros from the launcher)
    i_m, i_hq, i_h, tq0, tk0, qbase, kbase, off, Lq, L = _query_program(cu_seqlens, cu_seqlens_k, block_indices, T,
                                                                        TK, HQ, GROUP, IS_VARLEN, Q_OFFSET)

    o_r = i_m * BM + tl.arange(0, BM)
    o_i = off + o_r
    m_i = o_r < Lq
    o_k, o_v = tl.arange(0, BK), tl.arange(0, BV)
    m_qk = m_i[:, None] & (o_k < K)[None, :]
    b_q = tl.load(q + (tq0 + o_r)[:, None] * (HQ * K) + i_hq * K + o_k[None, :], mask=m_qk, other=0.)
    b_do = tl.load(do + (tq0 + o_r)[:, None] * (HQ * V) + i_hq * V + o_v[None, :],
                   mask=m_i[:, None] & (o_v < V)[None, :], other=0.)
    b_lse = tl.load(lse + qbase + o_r, mask=m_i, other=0.)
    b_delta = tl.load(delta + qbase + o_r, mask=m_i, other=0.)
    b_gq = tl.zeros([BM], dtype=tl.float32)
    if USE_G:
        b_gq = tl.load(g + kbase + o_i, mask=m_i, other=0.)
    b_dq = tl.zeros([BM, BK], dtype=tl.float32)
    b_dg = tl.zeros([BM], dtype=tl.float32)
    sl2 = scale * LOG2E

    lo, m1, m2, hi = _key_range(off + i_m * BM, L, W, BM, BN, HAS_WINDOW)
    b_dq, b_dg = _dq_range(b_q, b_do, b_gq, b_lse, b_delta, b_dq, b_dg, k, v, g, o_i, tk0, kbase, L, W, lo, m1,
                           i_h, sl2, H, K, V, BN, BK, BV, USE_G, HAS_WINDOW, True, PREC)
    b_dq, b_dg = _dq_range(b_q, b_do, b_gq, b_lse, b_delta, b_dq, b_dg, k, v, g, o_i, tk0, kbase, L, W, m1, m2,
                           i_h, sl2, H, K, V, BN, BK, BV, USE_G, HAS_WINDOW, False, PREC)
    b_dq, b_dg = _dq_range(b_q, b_do, b_gq, b_lse, b_delta, b_dq, b_dg, k, v, g, o_i, tk0, kbase, L, W, m2, hi,
                           i_h, sl2, H, K, V, BN, BK, BV, USE_G, HAS_WINDOW, True, PREC)

    tl.store(dq + (tq0 + o_r)[:, None] * (HQ * K) + i_hq * K + o_k[None, :], (b_dq * scale).to(dq.dtype.element_ty),
             mask=m_qk)
    if USE_G:
        tl.store(dg + kbase + o_i, b_dg, mask=m_i)


@triton.jit
def _dkdv_range(b_k, b_v, b_gk, b_dk, b_dv, b_dg, q, do, lse, delta, g, o_j, tq0, off, qbase, kbase, L, W, lo, hi,
                i_hq, scale, HQ: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr,
                BV: tl.constexpr, USE_G: tl.constexpr, HAS_WINDOW: tl.constexpr, MASK: tl.constexpr,
                PREC: tl.constexpr):
    # transposed view: scores are [keys BN, queries BM]; o_i are the queries' key positions, o_r their rows
    o_k, o_v = tl.arange(0, BK), tl.arange(0, BV)
    for start in range(lo, hi, BM):
        o_i = start + tl.arange(0, BM)
        o_r = o_i - off
        m_i = o_i < L
        b_q = tl.load(q + (tq0 + o_r)[:, None] * (HQ * K) + i_hq * K + o_k[None, :],
                      mask=m_i[:, None] & (o_k < K)[None, :], other=0.)
        b_do = tl.load(do + (tq0 + o_r)[:, None] * (HQ * V) + i_hq * V + o_v[None, :],
                       mask=m_i[:, None] & (o_v < V)[None, :], other=0.)
        b_lse = tl.load(lse + qbase + o_r, mask=m_i, other=0.)
        b_delta = tl.load(delta + qbase + o_r, mask=m_i, other=0.)
        b_s = tl.dot(b_k, tl.trans(b_q), input_precision=PREC) * scale
        if USE_G:
            b_gq = tl.load(g + kbase + o_i, mask=m_i, other=0.)
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


@_heuristics
@_tuned("dkdv", "BN", "BM", (16, 32, 64))
@triton.jit
def parallel_attn_bwd_dkdv_kernel(
    q, k, v, g, lse, delta, do, dk, dv, dg, cu_seqlens, cu_seqlens_k, block_indices, scale, W, T, TK,
    HQ: tl.constexpr, H: tl.constexpr, GROUP: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_G: tl.constexpr, HAS_WINDOW: tl.constexpr, IS_VARLEN: tl.constexpr, PREC: tl.constexpr,
    Q_OFFSET: tl.constexpr,
):
    # grid: (key blocks, B * H), `block_indices` the keys' (sequence, block) rows; the query heads of the group are
    # summed in order inside the program (deterministic); dg receives -colsum(dS) per key and query head. Every key
    # is stored, also one no query sees (zeros), so dk, dv and dg need no initialization.
    i_n, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    i_n, tq0, tk0, bos, bos_k, Lq, L = _seq_bounds(i_n, i_b, cu_seqlens, cu_seqlens_k, block_indices, T, TK,
                                                   IS_VARLEN, Q_OFFSET)
    off = L - Lq if Q_OFFSET else 0

    o_j = i_n * BN + tl.arange(0, BN)
    m_j = o_j < L
    o_k, o_v = tl.arange(0, BK), tl.arange(0, BV)
    m_kk = m_j[:, None] & (o_k < K)[None, :]
    m_vv = m_j[:, None] & (o_v < V)[None, :]
    b_k = tl.load(k + (tk0 + o_j)[:, None] * (H * K) + i_h * K + o_k[None, :], mask=m_kk, other=0.)
    b_v = tl.load(v + (tk0 + o_j)[:, None] * (H * V) + i_h * V + o_v[None, :], mask=m_vv, other=0.)
    b_dk = tl.zeros([BN, BK], dtype=tl.float32)
    b_dv = tl.zeros([BN, BV], dtype=tl.float32)
    sl2 = scale * LOG2E

    lo, m1, m2, hi = _query_range(i_n * BN, L, W, off, BN, BM, HAS_WINDOW)
    for i_g in range(GROUP):
        i_hq = i_h * GROUP + i_g
        qbase = (i_b * HQ + i_hq).to(tl.int64) * T + bos
        kbase = (i_b * HQ + i_hq).to(tl.int64) * TK + bos_k if Q_OFFSET else qbase
        b_gk = tl.zeros([BN], dtype=tl.float32)
        if USE_G:
            b_gk = tl.load(g + kbase + o_j, mask=m_j, other=0.)
        b_dg = tl.zeros([BN], dtype=tl.float32)
        b_dk, b_dv, b_dg = _dkdv_range(b_k, b_v, b_gk, b_dk, b_dv, b_dg, q, do, lse, delta, g, o_j, tq0, off, qbase,
                                       kbase, L, W, lo, m1, i_hq, sl2, HQ, K, V, BM, BK, BV, USE_G, HAS_WINDOW, True,
                                       PREC)
        b_dk, b_dv, b_dg = _dkdv_range(b_k, b_v, b_gk, b_dk, b_dv, b_dg, q, do, lse, delta, g, o_j, tq0, off, qbase,
                                       kbase, L, W, m1, m2, i_hq, sl2, HQ, K, V, BM, BK, BV, USE_G, HAS_WINDOW,
                                       False, PREC)
        b_dk, b_dv, b_dg = _dkdv_range(b_k, b_v, b_gk, b_dk, b_dv, b_dg, q, do, lse, delta, g, o_j, tq0, off, qbase,
                                       kbase, L, W, m2, hi, i_hq, sl2, HQ, K, V, BM, BK, BV, USE_G, HAS_WINDOW, True,
                                       PREC)
        if USE_G:
            tl.store(dg + kbase + o_j, b_dg, mask=m_j)

    tl.store(dk + (tk0 + o_j)[:, None] * (H * K) + i_h * K + o_k[None, :], (b_dk * scale).to(dk.dtype.element_ty),
             mask=m_kk)
    tl.store(dv + (tk0 + o_j)[:, None] * (H * V) + i_h * V + o_v[None, :], b_dv.to(dv.dtype.element_ty), mask=m_vv)
