"""Causal softmax attention (FlashAttention-2 style) with grouped queries, a sliding window, a forget gate and varlen.

    s_ij = scale * q_i . k_j + (G_i - G_j),   j <= i (and i - j < W),   o_i = sum_j softmax_j(s_ij) v_j
with G the float32 cumulative sum of the log forget gate g over each sequence (Forgetting Attention).

Kernels (`kernels.py`; one program per block of queries or keys, online softmax, never a T x T matrix):
- forward: per query block, loop over the key blocks it can see; saves the log-sum-exp (base 2, float32).
- backward: delta = rowsum(o * do); dk/dv per key block (looping over the query heads of its group, so the GQA sum
  is deterministic and nothing is repeated in memory); dq per query block. dG_i = rowsum_i(dS) - colsum_i(dS), and
  dg is its reverse cumulative sum over each sequence.
Every loop over blocks is cut into [masked, full, masked] ranges: only the blocks that touch the causal diagonal,
the window's edge or the sequence end pay for the mask.
An attention sink (`sink_bias` [HQ]) is one more logit per query head in every softmax denominator, with no value:
the forward merges it into the running max and sum after the key blocks, so the saved lse includes it, the
backward's probabilities and dS are unchanged, and d sink_bias = -sum_i exp(sink - lse_i) delta_i.
The same kernels take queries that are the last Lq positions of a longer key sequence (`parallel_attn_q_offset`,
per sequence under varlen: what context parallelism runs against the all-gathered keys, `cp.py`).
The PyTorch path (SDPA, for a CPU without the interpreter) is in `sdpa.py`.

Internal layouts: lse, delta are float32 `[B, HQ, T]`, G, dG `[B, HQ, TK]` (contiguous in time, so a block loads
coalesced).
"""
from __future__ import annotations

import torch
import triton

from fla.ops.attn.kernels import (parallel_attn_bwd_dkdv_kernel, parallel_attn_bwd_dq_kernel,
                                  parallel_attn_bwd_preprocess_kernel, parallel_attn_fwd_kernel)
from fla.ops.attn.sdpa import parallel_attn_torch, segment_cumsum
from fla.ops.utils.checks import check_cu_seqlens, check_head_dim, check_scale, check_tensor, normalize_inputs
from fla.ops.utils.dispatch import dispatch, is_interpreter
from fla.ops.utils.hardware import check_shared_mem
from fla.ops.utils.index import prepare_chunk_indices, varlen_bounds

__all__ = ["parallel_attn", "parallel_attn_q_offset", "check_shared_mem"]


# ---------------------------------------------------------------------------------------------------------------------
# Block sizes. The block that indexes the grid (queries for the forward and dq, keys for dk/dv) is fixed per head dim,
# because the varlen (sequence, block) index is built with it on the host; the inner block is autotuned (kernels.py).
# Under the interpreter small blocks make short test sequences span several blocks of each kind (masked and full
# ranges).

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


# ---------------------------------------------------------------------------------------------------------------------
# Launchers. `cu_seqlens` bounds the queries, `cu_seqlens_k` the keys (None: the same as the queries'); with keys
# longer than the queries (k.shape[1] > q.shape[1] or cu_seqlens_k) the kernels run their Q_OFFSET form.

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


def _has_offset(q: torch.Tensor, k: torch.Tensor, cu_seqlens_k: torch.Tensor | None) -> bool:
    return cu_seqlens_k is not None or k.shape[1] != q.shape[1]


def parallel_attn_fwd(q, k, v, G, scale, window_size, cu_seqlens, block_indices=None, sink=None, cu_seqlens_k=None):
    """o [B, T, HQ, V] in q's dtype and lse [B, HQ, T] float32 (base 2, the sink's logit sink [HQ] included);
    G [B, HQ, TK] float32 on the keys' axis."""
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
            q, k, v, G, sink, o, lse, cu_seqlens, cu_seqlens_k, block_indices, scale, window_size or 0, T, k.shape[1],
            BM=BM, USE_G=G is not None, HAS_WINDOW=window_size is not None, USE_SINK=sink is not None,
            Q_OFFSET=_has_offset(q, k, cu_seqlens_k), **dims,
        )
    return o, lse


def parallel_attn_bwd(q, k, v, o, G, lse, do, scale, window_size, cu_seqlens, block_indices=None, sink=None,
                      cu_seqlens_k=None):
    """dq, dk, dv in their inputs' dtypes, dG [B, HQ, TK] float32 (None without a gate) and dsink [HQ] float32
    (None without a sink). dk, dv, dG cover every key, also those no query sees (zeros)."""
    B, T, HQ, _ = q.shape
    TK = k.shape[1]
    dims = _dims(q, k, v)
    offset = _has_offset(q, k, cu_seqlens_k)
    delta = q.new_empty(B, HQ, T, dtype=torch.float32)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    dg_row = dg_col = None
    if G is not None:
        # dq's kernel writes the queries' positions only: the keys before a sequence's first query stay zero
        dg_row, dg_col = torch.zeros_like(G) if offset else torch.empty_like(G), torch.empty_like(G)
    if T == 0:
        return (dq, torch.zeros_like(k), torch.zeros_like(v), None if G is None else torch.zeros_like(G),
                None if sink is None else torch.zeros_like(sink, dtype=torch.float32))
    do = do.contiguous()
    flags = dict(USE_G=G is not None, HAS_WINDOW=window_size is not None, Q_OFFSET=offset, **dims)
    W = window_size or 0
    BT = 64
    parallel_attn_bwd_preprocess_kernel[(triton.cdiv(T, BT), B * HQ)](
        o, do, delta, T, HQ=HQ, V=dims["V"], BT=BT, BV=dims["BV"],
    )
    dsink = None
    if sink is not None:
        # the sink's probability exp(sink - lse) times its dp - delta, with dp = do . 0 = 0: one sum over [B, T]
        # (every position of [B, T] is a query, also under cu_seqlens)
        dsink = -(torch.exp2(sink.float()[None, :, None] * 1.4426950408889634 - lse) * delta).sum((0, 2))
    block = _outer_block(max(dims["K"], dims["V"]))
    if cu_seqlens is not None and block_indices is None:
        block_indices = prepare_block_indices(q, v, cu_seqlens)
    key_block = _key_block(max(dims["K"], dims["V"]))
    key_indices = None
    if cu_seqlens is not None:
        key_indices = prepare_chunk_indices(cu_seqlens if cu_seqlens_k is None else cu_seqlens_k, key_block)
    grid = _grid(TK, B, dims["H"], key_block, key_indices)
    if grid[0] > 0:
        parallel_attn_bwd_dkdv_kernel[grid](
            q, k, v, G, lse, delta, do, dk, dv, dg_col, cu_seqlens, cu_seqlens_k, key_indices, scale, W, T, TK,
            BN=key_block, **flags,
        )
    grid = _grid(T, B, HQ, block, block_indices)
    if grid[0] > 0:
        parallel_attn_bwd_dq_kernel[grid](
            q, k, v, G, lse, delta, do, dq, dg_row, cu_seqlens, cu_seqlens_k, block_indices, scale, W, T, TK,
            BM=block, **flags,
        )
    return dq, dk, dv, (dg_row + dg_col if G is not None else None), dsink


class ParallelAttnFunction(torch.autograd.Function):

    @staticmethod
    def forward(ctx, q, k, v, g, sink, scale, window_size, cu_seqlens, cu_seqlens_k=None):
        # G: float32 [B, HQ, TK], the per-sequence cumulative gate on the keys' axis
        cu_keys = cu_seqlens if cu_seqlens_k is None else cu_seqlens_k
        G = segment_cumsum(g, cu_keys).transpose(1, 2).contiguous() if g is not None else None
        block_indices = prepare_block_indices(q, v, cu_seqlens)
        o, lse = parallel_attn_fwd(q, k, v, G, scale, window_size, cu_seqlens, block_indices, sink, cu_seqlens_k)
        ctx.save_for_backward(q, k, v, o, G, lse, cu_seqlens, cu_seqlens_k, block_indices, sink)
        ctx.scale, ctx.window_size, ctx.g_dtype = scale, window_size, g.dtype if g is not None else None
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, G, lse, cu_seqlens, cu_seqlens_k, block_indices, sink = ctx.saved_tensors
        dq, dk, dv, dG, dsink = parallel_attn_bwd(q, k, v, o, G, lse, do, ctx.scale, ctx.window_size, cu_seqlens,
                                                  block_indices, sink, cu_seqlens_k)
        dg = None
        if dG is not None and ctx.needs_input_grad[3]:
            cu_keys = cu_seqlens if cu_seqlens_k is None else cu_seqlens_k
            dg = segment_cumsum(dG.transpose(1, 2), cu_keys, reverse=True).to(ctx.g_dtype)
        if dsink is not None:
            dsink = dsink.to(sink.dtype)
        return dq, dk, dv, dg, dsink, None, None, None, None


def _parallel_attn_triton(q, k, v, g, scale, window_size, cu_seqlens, sink_bias=None, cu_seqlens_k=None):
    return ParallelAttnFunction.apply(q, k, v, g, sink_bias, scale, window_size, cu_seqlens, cu_seqlens_k)


_parallel_attn = dispatch(_parallel_attn_triton, parallel_attn_torch)


# ---------------------------------------------------------------------------------------------------------------------
# The public functions.

def _check_qkv(q, k, v, g, scale, window_size, sink_bias, longer_keys: bool = False):
    """The checks both public functions share; k, v, g have q's token count, or any (`longer_keys`: g then lies on
    the keys' axis)."""
    check_tensor("q", q, "[B, T, HQ, K]", (None, None, None, None))
    B, T, HQ, K = q.shape
    TK = None if longer_keys else T
    check_tensor("k", k, "[B, T, H, K]", (B, TK, None, K), (q.dtype,), q.device)
    H = k.shape[2]
    TK = k.shape[1]
    check_tensor("v", v, "[B, T, H, V]", (B, TK, H, None), (q.dtype,), q.device)
    if H == 0 or HQ % H != 0:
        raise ValueError(f"the number of query heads ({HQ}) must be a multiple of the number of key/value heads "
                         f"({H}): query head h uses key/value head h // (HQ / H)")
    check_head_dim("q/k", K)
    check_head_dim("v", v.shape[3])
    if g is not None:
        check_tensor("g", g, "[B, T, HQ]", (B, TK, HQ), device=q.device)
    check_scale(scale)
    if window_size is not None and (isinstance(window_size, bool) or not isinstance(window_size, int)
                                    or window_size < 1):
        raise ValueError(f"window_size must be a positive int or None for full causal attention (got {window_size!r})")
    if sink_bias is not None:
        check_tensor("sink_bias", sink_bias, "[HQ]", (HQ,), device=q.device)


def _check_cu(name: str, cu, B: int, T: int, device) -> None:
    try:
        check_cu_seqlens(cu, B, T)
    except ValueError as e:  # the shared check names cu_seqlens; say which boundaries were wrong
        raise ValueError(str(e).replace("cu_seqlens", name, 1)) from None
    if cu.device != device:
        raise ValueError(f"{name} is on {cu.device} but q is on {device}; move it with .to({str(device)!r})")


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
    _check_qkv(q, k, v, g, scale, window_size, sink_bias)
    if cu_seqlens is not None:
        _check_cu("cu_seqlens", cu_seqlens, q.shape[0], q.shape[1], q.device)
    scale = q.shape[3] ** -0.5 if scale is None else float(scale)
    if cp_context is not None:
        from fla.ops.attn.cp import parallel_attn_cp
        return parallel_attn_cp(q, k, v, g, scale, window_size, cu_seqlens, cp_context, sink_bias)
    return _parallel_attn(q, k, v, g, scale, window_size, cu_seqlens, sink_bias)


@normalize_inputs
def parallel_attn_q_offset(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None = None,
    scale: float | None = None,
    window_size: int | None = None,
    cu_seqlens: torch.Tensor | None = None,
    cu_seqlens_k: torch.Tensor | None = None,
    sink_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """`parallel_attn` for queries that are the last positions of longer key sequences (flash-attn's varlen q/k
    with bottom-right causal alignment): per sequence, Lk keys and Lq <= Lk queries, query i standing at key
    position Lk - Lq + i. So query i sees key j when j <= Lk - Lq + i (and Lk - Lq + i - j < W). Context
    parallelism runs this rank's queries against the all-gathered keys of their documents with it (`cp.py`).

    Args:
        q: [B, T, HQ, K]    queries
        k: [B, TK, H, K]    keys, TK >= T (HQ a multiple of H)
        v: [B, TK, H, V]    values
        g: [B, TK, HQ]      log forget gates of the keys' tokens, optional (a query's own gate is that of its key
                            position); G = cumsum of g over each key sequence, score (i, j) gets G_i - G_j
        scale: defaults to K ** -0.5
        window_size: W, as in `parallel_attn`, in key positions
        cu_seqlens: [N + 1] int, the queries' packed sequences, B must be 1; needs cu_seqlens_k
        cu_seqlens_k: [N + 1] int, the keys' packed sequences: sequence n has keys [cu_seqlens_k[n],
            cu_seqlens_k[n + 1]) and at most that many queries
        sink_bias: [HQ] an attention sink per query head, as in `parallel_attn`
    Returns:
        o: [B, T, HQ, V] in q's dtype. The backward gives dk, dv, dg for every key, zeros where no query looks.
    """
    _check_qkv(q, k, v, g, scale, window_size, sink_bias, longer_keys=True)
    B, T = q.shape[:2]
    TK = k.shape[1]
    if (cu_seqlens is None) != (cu_seqlens_k is None):
        raise ValueError("pass both cu_seqlens (the queries' boundaries) and cu_seqlens_k (the keys'), or neither")
    if cu_seqlens is None:
        if TK < T:
            raise ValueError(f"k and v must have at least as many tokens as q (got {TK} keys for {T} queries): the "
                             "queries are the last T key positions")
    else:
        _check_cu("cu_seqlens", cu_seqlens, B, T, q.device)
        _check_cu("cu_seqlens_k", cu_seqlens_k, B, TK, q.device)
        bq, bk = varlen_bounds(cu_seqlens), varlen_bounds(cu_seqlens_k)
        if len(bq) != len(bk):
            raise ValueError(f"cu_seqlens and cu_seqlens_k must have the same number of sequences (got {len(bq) - 1} "
                             f"and {len(bk) - 1})")
        short = [n for n in range(len(bq) - 1) if bq[n + 1] - bq[n] > bk[n + 1] - bk[n]]
        if short:
            n = short[0]
            raise ValueError(f"sequence {n} has {bq[n + 1] - bq[n]} queries but only {bk[n + 1] - bk[n]} keys: every "
                             "sequence needs at least as many keys as queries (the queries are its last positions)")
    scale = q.shape[3] ** -0.5 if scale is None else float(scale)
    return _parallel_attn(q, k, v, g, scale, window_size, cu_seqlens, sink_bias, cu_seqlens_k)
