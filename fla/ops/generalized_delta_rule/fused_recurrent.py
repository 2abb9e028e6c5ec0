"""The DPLR delta rule walked token by token with the state in registers (inference path).

Per head, state S [K, V]:  S_t = diag(exp(gk_t)) S_{t-1} + b_t^T (a_t S_{t-1}) + k_t^T v_t,  o_t = scale q_t S_t.
The low-rank term mixes the key rows of S but never its value columns, so one program owns a [K, BV] column tile.

Backward: the gradient of this function is the gradient of the chunked form of the same recurrence, so the autograd
function reuses the chunk backward (`chunk.dplr_backward`) instead of a second, token-serial copy of it. `reverse`
(walk each sequence from its end) is the forward op applied to the time-flipped sequences, which autograd
differentiates through the flip.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.standard import _sum_combine

from fla.ops.generalized_delta_rule.chunk import check_dplr_inputs, dplr_backward, dplr_family
from fla.ops.utils.checks import normalize_inputs
from fla.ops.utils.dispatch import autotune
from fla.ops.utils.index import sequence_bounds, sequence_spans

# a [128, 32] float32 state tile is 128 registers per thread at one warp (it spilled there on sm_90): two warps first
_CONFIGS = [triton.Config({}, num_warps=w, num_stages=s) for w in (2, 4, 1) for s in (2, 3, 1)]


@triton.heuristics({
    "USE_INITIAL_STATE": lambda args: args["h0"] is not None,
    "STORE_FINAL_STATE": lambda args: args["ht"] is not None,
    "IS_VARLEN": lambda args: args["cu_seqlens"] is not None,
})
@autotune(_CONFIGS, key=["H", "K", "V", "BK", "BV"])
@triton.jit
def fused_recurrent_dplr_fwd_kernel(
    q, k, v, a, b, gk, o, h0, ht, cu_seqlens, scale,
    T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_INITIAL_STATE: tl.constexpr, STORE_FINAL_STATE: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    # grid: (V blocks, N * H); [B, T, H, K] rows have stride H * K, [B, T, H, V] rows H * V.
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, T = sequence_bounds(i_n, cu_seqlens, T, IS_VARLEN)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    o_kv = o_k[:, None] * V + o_v[None, :]

    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_INITIAL_STATE:
        b_h += tl.load(h0 + i_nh * K * V + o_kv, mask=m_kv, other=0.)
    for i_t in range(T):
        p_k = (bos + i_t) * (H * K) + i_h * K + o_k
        p_v = (bos + i_t) * (H * V) + i_h * V + o_v
        b_q = tl.load(q + p_k, mask=m_k, other=0.).to(tl.float32) * scale
        b_k = tl.load(k + p_k, mask=m_k, other=0.).to(tl.float32)
        b_a = tl.load(a + p_k, mask=m_k, other=0.).to(tl.float32)
        b_b = tl.load(b + p_k, mask=m_k, other=0.).to(tl.float32)
        b_gk = tl.load(gk + p_k, mask=m_k, other=0.).to(tl.float32)
        b_v = tl.load(v + p_v, mask=m_v, other=0.).to(tl.float32)
        b_read = tl.reduce(b_a[:, None] * b_h, 0, _sum_combine)  # a_t S_{t-1}, [BV]
        b_h = tl.exp(b_gk)[:, None] * b_h + b_b[:, None] * b_read[None, :] + b_k[:, None] * b_v[None, :]
        b_o = tl.reduce(b_q[:, None] * b_h, 0, _sum_combine)
        tl.store(o + p_v, b_o.to(o.dtype.element_ty), mask=m_v)
    if STORE_FINAL_STATE:
        tl.store(ht + i_nh * K * V + o_kv, b_h, mask=m_kv)


def fused_recurrent_dplr_fwd(q, k, v, a, b, gk, scale, initial_state, output_final_state, cu_seqlens):
    """-> (o [B, T, H, V] in v's dtype, final state float32 [N, H, K, V] or None)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    N = B if cu_seqlens is None else len(cu_seqlens) - 1
    BK = max(16, triton.next_power_of_2(K))
    # narrow tiles: the per-token loop is latency-bound, more programs hide it better than wider tiles
    BV = min(32 if BK <= 64 else 16, max(16, triton.next_power_of_2(V)))
    o = torch.empty_like(v)
    ht = q.new_empty(N, H, K, V, dtype=torch.float32) if output_final_state else None
    fused_recurrent_dplr_fwd_kernel[(triton.cdiv(V, BV), N * H)](
        q, k, v, a, b, gk, o, initial_state, ht, cu_seqlens, scale, T=T, H=H, K=K, V=V, BK=BK, BV=BV)
    return o, ht


class FusedRecurrentDPLRDeltaRuleFunction(torch.autograd.Function):

    @staticmethod
    def forward(ctx, q, k, v, a, b, gk, scale, initial_state, output_final_state, cu_seqlens):
        o, ht = fused_recurrent_dplr_fwd(q, k, v, a, b, gk, scale, initial_state, output_final_state, cu_seqlens)
        ctx.save_for_backward(q, k, v, a, b, gk, initial_state, cu_seqlens)
        ctx.scale = scale
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        return dplr_backward(ctx, do, dht)


def _time_flip(x: torch.Tensor, cu_seqlens: torch.Tensor | None) -> torch.Tensor:
    """Reverse the time axis of every sequence (an involution: applying it twice is the identity)."""
    if cu_seqlens is None:
        return x.flip(1)
    index = torch.cat([torch.arange(eos - 1, bos - 1, -1) for _, bos, eos in sequence_spans(cu_seqlens, 1, 0)]
                      or [torch.zeros(0, dtype=torch.long)])
    return x.index_select(1, index.to(x.device))


@normalize_inputs
def fused_recurrent_dplr_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    gk: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    reverse: bool = False,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The DPLR delta rule token by token (see `chunk_dplr_delta_rule` for the recurrence); differentiable.

    Args:
        q, k, a, b: [B, T, H, K]; v: [B, T, H, V]; gk: [B, T, H, K] log decays (<= 0)
        scale: defaults to K ** -0.5
        initial_state: [N, H, K, V] float32 (N = B, or the number of sequences under cu_seqlens)
        reverse: walk every sequence from its last token to its first
        cu_seqlens: [N + 1] int, packed sequences, B must be 1
    Returns:
        o: [B, T, H, V]; final_state: [N, H, K, V] float32 or None
    """
    check_dplr_inputs(q, k, v, a, b, gk, scale, initial_state, cu_seqlens)
    if reverse:
        q, k, v, a, b, gk = (_time_flip(x, cu_seqlens) for x in (q, k, v, a, b, gk))
    o, ht = dplr_family(q, k, v, a, b, gk, scale, initial_state, output_final_state, cu_seqlens,
                        FusedRecurrentDPLRDeltaRuleFunction)
    if reverse:
        o = _time_flip(o, cu_seqlens)
    return o, (ht if output_final_state else None)
