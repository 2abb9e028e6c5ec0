"""KDA's gate: a log decay per key channel from its raw projection, fused with the chunk-local cumsum.

    gate = -exp(A_log[h]) * softplus(g_raw + dt_bias[h, c])     (<= 0, per value head h and key channel c)
    G    = chunk-local cumsum of gate                           (what the chunk blocks take; `cumsum.py`)

`naive_kda_gate` is the reference (the peer library's name and signature). The chunk op computes G in one kernel
from g_raw (`kda_gate_chunk_cumsum`), and its backward turns the gradient w.r.t. G (and one already w.r.t. the raw
gate) into the gradients of g_raw, A_log and dt_bias in one kernel (`kda_gate_chunk_cumsum_bwd`):
    dgate_s = sum_{t >= s in its chunk} dG_t + dgate_direct_s        (a reverse chunk-local cumsum)
    dg_raw  = dgate * (-exp(A_log) * sigmoid(g_raw + dt_bias));   dA_log = sum dgate * gate;   ddt_bias = sum dg_raw
Without the gate (use_gate_in_kernel=False) the same kernels are the plain cumsum and its reverse plus the direct
part. dA_log / ddt_bias are summed per (chunk, head) in the kernel and over chunks on the host side of the launch.
Layouts: g_raw, G, dG [B, T, HV, K]; A_log [HV]; dt_bias [HV * K] (the peer's; [HV, K] is taken too).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from fla.ops.utils.dispatch import dispatch
from fla.ops.utils.index import prepare_chunk_indices, sequence_bounds, sequence_spans


def naive_kda_gate(
    g: torch.Tensor,
    A_log: torch.Tensor,
    dt_bias: torch.Tensor | None = None,
    output_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """g: [..., HV, K] raw gate; A_log: [HV]; dt_bias: [HV * K] or None -> -exp(A_log) * softplus(g + dt_bias)."""
    HV, K = g.shape[-2:]
    x = g.float()
    if dt_bias is not None:
        x = x + dt_bias.float().view(HV, K)
    return (-A_log.float().view(HV, 1).exp() * F.softplus(x)).to(output_dtype)


@triton.jit
def _softplus(x):
    # torch's threshold: past 20 softplus(x) == x in float32
    return tl.where(x > 20., x, tl.log(1. + tl.exp(tl.minimum(x, 20.))))


@triton.heuristics({
    "HAS_BIAS": lambda args: args["dt_bias"] is not None,
    "IS_VARLEN": lambda args: args["cu_seqlens"] is not None,
})
@triton.jit
def kda_gate_cumsum_kernel(
    g, A_log, dt_bias, out, cu_seqlens, chunk_indices, T,
    H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    USE_GATE: tl.constexpr, HAS_BIAS: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    # grid: (chunks, K blocks, B * H); g/out [B, T, H, K] (row stride H * K)
    i_t, i_k, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    if IS_VARLEN:
        i_n, i_t = tl.load(chunk_indices + i_t * 2).to(tl.int32), tl.load(chunk_indices + i_t * 2 + 1).to(tl.int32)
    else:
        i_n = i_b
    bos, T = sequence_bounds(i_n, cu_seqlens, T, IS_VARLEN)
    rows = i_t * BT + tl.arange(0, BT)
    o_k = i_k * BK + tl.arange(0, BK)
    m = (rows < T)[:, None] & (o_k < K)[None, :]
    offs = (bos + rows)[:, None] * (H * K) + i_h * K + o_k[None, :]
    b_g = tl.load(g + offs, mask=m, other=0.).to(tl.float32)
    if USE_GATE:
        if HAS_BIAS:
            b_g += tl.load(dt_bias + i_h * K + o_k, mask=o_k < K, other=0.).to(tl.float32)[None, :]
        b_g = tl.where(m, -tl.exp(tl.load(A_log + i_h).to(tl.float32)) * _softplus(b_g), 0.)
    tl.store(out + offs, tl.cumsum(b_g, axis=0), mask=m)


@triton.heuristics({
    "HAS_BIAS": lambda args: args["dt_bias"] is not None,
    "HAS_DIRECT": lambda args: args["dgate"] is not None,
    "IS_VARLEN": lambda args: args["cu_seqlens"] is not None,
})
@triton.jit
def kda_gate_cumsum_bwd_kernel(
    g, A_log, dt_bias, dG, dgate, dg, dA_part, dbias_part, cu_seqlens, chunk_indices, T,
    H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    USE_GATE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_DIRECT: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    # grid: (chunks, K blocks, B * H); dA_part [chunks, K blocks, B * H], dbias_part [chunks, B * H, K]
    i_tg, i_k, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    i_t = i_tg
    if IS_VARLEN:
        i_n, i_t = tl.load(chunk_indices + i_t * 2).to(tl.int32), tl.load(chunk_indices + i_t * 2 + 1).to(tl.int32)
    else:
        i_n = i_b
    bos, T = sequence_bounds(i_n, cu_seqlens, T, IS_VARLEN)
    rows = i_t * BT + tl.arange(0, BT)
    o_k = i_k * BK + tl.arange(0, BK)
    m = (rows < T)[:, None] & (o_k < K)[None, :]
    offs = (bos + rows)[:, None] * (H * K) + i_h * K + o_k[None, :]
    b_dG = tl.load(dG + offs, mask=m, other=0.).to(tl.float32)
    b_d = tl.sum(b_dG, axis=0)[None, :] - tl.cumsum(b_dG, axis=0) + b_dG
    if HAS_DIRECT:
        b_d += tl.load(dgate + offs, mask=m, other=0.).to(tl.float32)
    if USE_GATE:
        b_x = tl.load(g + offs, mask=m, other=0.).to(tl.float32)
        if HAS_BIAS:
            b_x += tl.load(dt_bias + i_h * K + o_k, mask=o_k < K, other=0.).to(tl.float32)[None, :]
        b_a = tl.exp(tl.load(A_log + i_h).to(tl.float32))
        b_gate = -b_a * _softplus(b_x)
        b_dx = tl.where(m, -b_a * tl.sigmoid(b_x) * b_d, 0.)
        tl.store(dA_part + (i_tg * tl.num_programs(1) + i_k) * tl.num_programs(2) + i_bh,
                 tl.sum(tl.sum(tl.where(m, b_d * b_gate, 0.), axis=1), axis=0))
        if HAS_BIAS:
            tl.store(dbias_part + (i_tg * tl.num_programs(2) + i_bh) * K + o_k, tl.sum(b_dx, axis=0), mask=o_k < K)
        b_d = b_dx
    tl.store(dg + offs, b_d.to(dg.dtype.element_ty), mask=m)


def _launch(g, cu_seqlens, chunk_size):
    B, T, H, K = g.shape
    if cu_seqlens is None:
        chunk_indices, NT = None, triton.cdiv(T, chunk_size)
    else:
        chunk_indices = prepare_chunk_indices(cu_seqlens, chunk_size)
        NT = len(chunk_indices)
    BK = min(64, triton.next_power_of_2(K))
    return chunk_indices, NT, BK, (NT, triton.cdiv(K, BK), B * H)


def _gate_cumsum_triton(g, A_log, dt_bias, chunk_size, cu_seqlens=None):
    B, T, H, K = g.shape
    out = torch.empty(B, T, H, K, device=g.device, dtype=torch.float32)
    chunk_indices, NT, BK, grid = _launch(g, cu_seqlens, chunk_size)
    if NT:
        kda_gate_cumsum_kernel[grid](g, A_log, dt_bias, out, cu_seqlens, chunk_indices, T, H=H, K=K, BT=chunk_size,
                                     BK=BK, USE_GATE=A_log is not None)
    return out


def _gate_cumsum_torch(g, A_log, dt_bias, chunk_size, cu_seqlens=None):
    gate = naive_kda_gate(g, A_log, dt_bias) if A_log is not None else g
    return _cumsum_torch_plain(gate, chunk_size, cu_seqlens)


def _cumsum_torch_plain(x, chunk_size, cu_seqlens, reverse=False):
    out = torch.empty_like(x, dtype=torch.float32)
    for b, bos, eos in sequence_spans(cu_seqlens, x.shape[0], x.shape[1]):
        for start in range(bos, eos, chunk_size):
            c = x[b, start:min(start + chunk_size, eos)].float()
            out[b, start:start + len(c)] = c.flip(0).cumsum(0).flip(0) if reverse else c.cumsum(0)
    return out


def _gate_cumsum_bwd_triton(g, A_log, dt_bias, dG, dgate, chunk_size, cu_seqlens=None):
    B, T, H, K = g.shape
    dg = torch.empty_like(g)
    chunk_indices, NT, BK, grid = _launch(g, cu_seqlens, chunk_size)
    use_gate = A_log is not None
    dA_part = torch.zeros(grid, device=g.device, dtype=torch.float32) if use_gate else None
    dbias_part = torch.zeros(NT, B * H, K, device=g.device, dtype=torch.float32) if dt_bias is not None else None
    if NT:
        kda_gate_cumsum_bwd_kernel[grid](g, A_log, dt_bias, dG.contiguous(), dgate, dg, dA_part, dbias_part,
                                         cu_seqlens, chunk_indices, T, H=H, K=K, BT=chunk_size, BK=BK,
                                         USE_GATE=use_gate)
    dA = dA_part.view(NT, -1, B, H).sum((0, 1, 2)) if use_gate else None
    dbias = dbias_part.view(NT, B, H * K).sum((0, 1)) if dt_bias is not None else None
    return dg, dA, dbias


def _gate_cumsum_bwd_torch(g, A_log, dt_bias, dG, dgate, chunk_size, cu_seqlens=None):
    d = _cumsum_torch_plain(dG, chunk_size, cu_seqlens, reverse=True)
    if dgate is not None:
        d = d + dgate.float()
    if A_log is None:
        return d.to(g.dtype), None, None
    H, K = g.shape[-2:]
    x = g.float() + (dt_bias.float().view(H, K) if dt_bias is not None else 0.)
    a = A_log.float().exp().view(H, 1)
    dx = -a * torch.sigmoid(x) * d
    dA = (d * -a * F.softplus(x)).sum((0, 1, 3))
    dbias = dx.sum((0, 1)).reshape(H * K) if dt_bias is not None else None
    return dx.to(g.dtype), dA, dbias


_gate_cumsum = dispatch(_gate_cumsum_triton, _gate_cumsum_torch)
_gate_cumsum_bwd = dispatch(_gate_cumsum_bwd_triton, _gate_cumsum_bwd_torch)


def kda_gate_chunk_cumsum(
    g: torch.Tensor,
    A_log: torch.Tensor | None,
    dt_bias: torch.Tensor | None,
    chunk_size: int,
    cu_seqlens: torch.Tensor | None = None,
) -> torch.Tensor:
    """G = chunk-local cumsum of (A_log given: -exp(A_log) * softplus(g + dt_bias); else g), in one kernel.

    Returns:
        G: [B, T, HV, K] float32
    """
    return _gate_cumsum(g.contiguous(), A_log, dt_bias, chunk_size, cu_seqlens)


def kda_gate_chunk_cumsum_bwd(
    g: torch.Tensor,
    A_log: torch.Tensor | None,
    dt_bias: torch.Tensor | None,
    dG: torch.Tensor,
    dgate: torch.Tensor | None,
    chunk_size: int,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Gradients of g (g's dtype), A_log [HV] and dt_bias [HV * K] (float32; None when not given) from dG (w.r.t.
    the cumsum G) and dgate (w.r.t. the gate before the cumsum, or None)."""
    return _gate_cumsum_bwd(g.contiguous(), A_log, dt_bias, dG, dgate, chunk_size, cu_seqlens)
