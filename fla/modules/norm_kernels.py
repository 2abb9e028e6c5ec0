"""The Triton kernels and launchers behind every norm of `fla.modules.layernorm` and `fla.modules.fused_norm_gate`.

Rows are [M, N] row-major, cut into G groups of D = N / G channels (G = 1: LayerNorm / RMSNorm over the whole row).
Per row and group: `r = x + residual`, `c = r - mean(r)` (`c = r` for RMSNorm), `xhat = c * rstd` with
`rstd = 1 / sqrt(mean(c^2) + eps)`, then the per-channel affine `yn = xhat * weight + bias` and, in the gated form,
`y = yn * act(g)` (act = swish or sigmoid). The forward and the backward are one launch each: the backward reduces
dweight / dbias in registers over the row blocks a program walks, and on request also recomputes y (for the *Linear
forms, which save the input instead of y and need y for the linear weight's gradient).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
# tl.sum is a nested @jit call in the interpreter (milliseconds each); tl.reduce with the same combine is fast there
from triton.language.standard import _sum_combine


@triton.jit
def _gate(b_g, ACT_SIGMOID: tl.constexpr):
    if ACT_SIGMOID:
        return tl.sigmoid(b_g)
    return b_g * tl.sigmoid(b_g)


@triton.jit
def _gate_grad(b_g, ACT_SIGMOID: tl.constexpr):
    b_s = tl.sigmoid(b_g)
    if ACT_SIGMOID:
        return b_s * (1 - b_s)
    return b_s * (1 + b_g * (1 - b_s))


@triton.jit
def _norm_fwd_rows(
    x, residual, weight, bias, r_out, mean, rstd, eps, i_m, i_g, M, N, D, G,
    BM: tl.constexpr, BD: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr, STORE_R: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
    IS_RMS: tl.constexpr,
):
    """The normalized rows of one block, shared by the norm forward and BitLinear's quantizing forward: rows
    [i_m * BM, i_m * BM + BM) in channels [i_g * D, i_g * D + D) (layout as in `rms_norm_fwd_kernel`). Stores
    r = x + residual (STORE_R), mean (LayerNorm) and rstd; returns (yn = xhat * weight + bias in float32, 0 in the
    padded entries; the block's offsets into the [M, N] tensors; their mask)."""
    o_m = i_m * BM + tl.arange(0, BM)
    o_d = tl.arange(0, BD)
    m_m, m_d = o_m < M, o_d < D
    m_x = m_m[:, None] & m_d[None, :]
    o_c = i_g * D + o_d
    offs = o_m.to(tl.int64)[:, None] * N + o_c[None, :]
    o_s = o_m * G + i_g
    b_r = tl.load(x + offs, mask=m_x, other=0.).to(tl.float32)
    if HAS_RESIDUAL:
        b_r += tl.load(residual + offs, mask=m_x, other=0.).to(tl.float32)
    if STORE_R:
        tl.store(r_out + offs, b_r.to(r_out.dtype.element_ty), mask=m_x)
        # Normalize what was stored, so that forward and backward see the same (possibly rounded) r.
        b_r = tl.load(r_out + offs, mask=m_x, other=0.).to(tl.float32)
    if IS_RMS:
        b_c = b_r
    else:
        b_mean = tl.reduce(b_r, 1, _sum_combine) / D
        tl.store(mean + o_s, b_mean, mask=m_m)
        # padded columns must stay 0 after centring, or they would enter the variance
        b_c = tl.where(m_x, b_r - b_mean[:, None], 0.)
    b_rstd = 1 / tl.sqrt(tl.reduce(b_c * b_c, 1, _sum_combine) / D + eps)
    tl.store(rstd + o_s, b_rstd, mask=m_m)
    b_y = b_c * b_rstd[:, None]
    if HAS_WEIGHT:
        b_y *= tl.load(weight + o_c, mask=m_d, other=0.).to(tl.float32)[None, :]
    if HAS_BIAS:
        b_y += tl.load(bias + o_c, mask=m_d, other=0.).to(tl.float32)[None, :]
    return b_y, offs, m_x


@triton.jit
def rms_norm_fwd_kernel(
    x, residual, weight, bias, g, y, r_out, mean, rstd, eps, M, N, D, G,
    BM: tl.constexpr, BD: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr, STORE_R: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_GATE: tl.constexpr, ACT_SIGMOID: tl.constexpr, IS_RMS: tl.constexpr,
):
    # grid: (cdiv(M, BM), G); program (i_m, i_g) normalizes channels [i_g * D, i_g * D + D) of BM rows. Every tensor
    # is [M, N] row-major (row stride N = G * D); weight and bias are [N]; mean and rstd are [M, G] float32.
    b_y, offs, m_x = _norm_fwd_rows(x, residual, weight, bias, r_out, mean, rstd, eps, tl.program_id(0),
                                    tl.program_id(1), M, N, D, G, BM, BD, HAS_RESIDUAL, STORE_R, HAS_WEIGHT,
                                    HAS_BIAS, IS_RMS)
    if HAS_GATE:
        b_y *= _gate(tl.load(g + offs, mask=m_x, other=0.).to(tl.float32), ACT_SIGMOID)
    tl.store(y + offs, b_y.to(y.dtype.element_ty), mask=m_x)


@triton.jit
def rms_norm_bwd_kernel(
    dy, dr_in, r, weight, bias, g, mean, rstd, dr, dg, y, dw_partial, db_partial, M, N, D, G, NB,
    BM: tl.constexpr, BD: tl.constexpr,
    HAS_DR_IN: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_GATE: tl.constexpr,
    ACT_SIGMOID: tl.constexpr, IS_RMS: tl.constexpr, STORE_Y: tl.constexpr,
):
    # grid: (P, G); program (i_p, i_g) walks the row blocks i_p, i_p + P, ... of the NB = cdiv(M, BM) blocks in the
    # channels of group i_g, keeping its share of dweight / dbias in registers. Layout as in the forward;
    # dw_partial and db_partial are [P, N] float32 (summed over P by the launcher). With STORE_Y it also writes the
    # forward's output y, recomputed from r, mean and rstd.
    i_p, i_g = tl.program_id(0), tl.program_id(1)
    o_d = tl.arange(0, BD)
    m_d = o_d < D
    o_c = i_g * D + o_d
    if HAS_WEIGHT:
        b_w = tl.load(weight + o_c, mask=m_d, other=0.).to(tl.float32)[None, :]
        b_dw = tl.zeros([BD], dtype=tl.float32)
    if HAS_BIAS:
        b_b = tl.load(bias + o_c, mask=m_d, other=0.).to(tl.float32)[None, :]
        b_db = tl.zeros([BD], dtype=tl.float32)
    for i_m in range(i_p, NB, tl.num_programs(0)):
        o_m = i_m * BM + tl.arange(0, BM)
        m_m = o_m < M
        m_x = m_m[:, None] & m_d[None, :]
        offs = o_m.to(tl.int64)[:, None] * N + o_c[None, :]
        o_s = o_m * G + i_g
        b_rstd = tl.load(rstd + o_s, mask=m_m, other=0.)
        b_c = tl.load(r + offs, mask=m_x, other=0.).to(tl.float32)
        if not IS_RMS:
            b_c = tl.where(m_x, b_c - tl.load(mean + o_s, mask=m_m, other=0.)[:, None], 0.)
        b_xhat = b_c * b_rstd[:, None]
        b_dy = tl.load(dy + offs, mask=m_x, other=0.).to(tl.float32)
        if HAS_GATE or STORE_Y:
            b_yn = b_xhat
            if HAS_WEIGHT:
                b_yn = b_xhat * b_w
            if HAS_BIAS:
                b_yn += b_b
        if HAS_GATE:
            b_g = tl.load(g + offs, mask=m_x, other=0.).to(tl.float32)
            b_act = _gate(b_g, ACT_SIGMOID)
            tl.store(dg + offs, (b_dy * b_yn * _gate_grad(b_g, ACT_SIGMOID)).to(dg.dtype.element_ty), mask=m_x)
            b_dy = b_dy * b_act
            if STORE_Y:
                b_yn = b_yn * b_act
        if STORE_Y:
            tl.store(y + offs, b_yn.to(y.dtype.element_ty), mask=m_x)
        if HAS_BIAS:
            b_db += tl.reduce(b_dy, 0, _sum_combine)
        if HAS_WEIGHT:
            b_dw += tl.reduce(b_dy * b_xhat, 0, _sum_combine)
            b_dy = b_dy * b_w
        # d r = rstd * (dxhat - xhat * mean(dxhat * xhat) - mean(dxhat)), the last term only when mean-centred, plus
        # the gradient of the returned r (prenorm). Padded columns of dxhat are 0 (dy loads 0 there).
        b_c1 = tl.reduce(b_dy * b_xhat, 1, _sum_combine) / D
        b_dr = b_dy - b_xhat * b_c1[:, None]
        if not IS_RMS:
            b_dr -= (tl.reduce(b_dy, 1, _sum_combine) / D)[:, None]
        b_dr = b_dr * b_rstd[:, None]
        if HAS_DR_IN:
            b_dr += tl.load(dr_in + offs, mask=m_x, other=0.).to(tl.float32)
        tl.store(dr + offs, b_dr.to(dr.dtype.element_ty), mask=m_x)
    if HAS_WEIGHT:
        tl.store(dw_partial + i_p * N + o_c, b_dw, mask=m_d)
    if HAS_BIAS:
        tl.store(db_partial + i_p * N + o_c, b_db, mask=m_d)


def _blocks(M: int, D: int) -> tuple[int, int, int, int]:
    """(rows per block BM, padded group BD, row blocks NB, warps)."""
    BD = triton.next_power_of_2(D)
    if BD > 65536:
        raise ValueError(f"the normalized size must be at most 65536 (got {D}); one block must hold a group's row")
    BM = max(1, min(16, 4096 // BD))
    return BM, BD, triton.cdiv(M, BM), 8 if BD >= 4096 else 4


def _backward_programs(num_blocks: int, device: torch.device) -> int:
    """Enough programs to fill the GPU a few times over; each sums its share of dweight, so fewer is less to add."""
    if device.type == "cuda":
        return max(1, min(num_blocks, 4 * torch.cuda.get_device_properties(device).multi_processor_count))
    return max(1, min(num_blocks, 8))


def norm_fwd(
    x: torch.Tensor, g: torch.Tensor | None, residual: torch.Tensor | None, weight: torch.Tensor | None,
    bias: torch.Tensor | None, eps: float, activation: str, is_rms: bool, num_groups: int, r_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """x, g, residual: [M, N] contiguous; weight, bias: [N] or None.
    Returns y [M, N] in x's dtype, r [M, N] (x + residual in r_dtype; x itself without a residual), mean [M, G]
    float32 (None for RMSNorm) and rstd [M, G] float32."""
    M, N = x.shape
    D = N // num_groups
    store_r = residual is not None
    y = torch.empty_like(x)
    r = torch.empty(M, N, dtype=r_dtype, device=x.device) if store_r else x
    mean = None if is_rms else torch.empty(M, num_groups, dtype=torch.float32, device=x.device)
    rstd = torch.empty(M, num_groups, dtype=torch.float32, device=x.device)
    BM, BD, NB, warps = _blocks(M, D)
    if M > 0:
        rms_norm_fwd_kernel[(NB, num_groups)](
            x, residual, weight, bias, g, y, r, mean, rstd, eps, M, N, D, num_groups, BM=BM, BD=BD, num_warps=warps,
            HAS_RESIDUAL=residual is not None, STORE_R=store_r, HAS_WEIGHT=weight is not None,
            HAS_BIAS=bias is not None, HAS_GATE=g is not None, ACT_SIGMOID=activation == "sigmoid", IS_RMS=is_rms,
        )
    return y, r, mean, rstd


def norm_bwd(
    dy: torch.Tensor, dr_in: torch.Tensor | None, r: torch.Tensor, g: torch.Tensor | None,
    weight: torch.Tensor | None, bias: torch.Tensor | None, mean: torch.Tensor | None, rstd: torch.Tensor,
    activation: str, is_rms: bool, num_groups: int, y_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """dy, dr_in (the gradient of the returned r, or None), r, g: [M, N] contiguous; the rest as `norm_fwd` returns.
    Returns dr [M, N] in r's dtype (the gradient of x + residual), dg (or None), dweight and dbias [N] in their
    parameters' dtypes (or None), and y [M, N] recomputed in y_dtype when y_dtype is given (else None)."""
    M, N = r.shape
    D = N // num_groups
    BM, BD, NB, warps = _blocks(M, D)
    grid = _backward_programs(NB, r.device)
    dr = torch.empty(M, N, dtype=r.dtype, device=r.device)
    dg = torch.empty_like(g) if g is not None else None
    y = torch.empty(M, N, dtype=y_dtype, device=r.device) if y_dtype is not None else None
    dw_partial = torch.empty(grid, N, dtype=torch.float32, device=r.device) if weight is not None else None
    db_partial = torch.empty(grid, N, dtype=torch.float32, device=r.device) if bias is not None else None
    if M > 0:
        rms_norm_bwd_kernel[(grid, num_groups)](
            dy, dr_in, r, weight, bias, g, mean, rstd, dr, dg, y, dw_partial, db_partial, M, N, D, num_groups, NB,
            BM=BM, BD=BD, num_warps=warps, HAS_DR_IN=dr_in is not None, HAS_WEIGHT=weight is not None,
            HAS_BIAS=bias is not None, HAS_GATE=g is not None, ACT_SIGMOID=activation == "sigmoid", IS_RMS=is_rms,
            STORE_Y=y is not None,
        )

    def reduce(partial, param):
        if param is None:
            return None
        return (partial.sum(0) if M > 0 else torch.zeros(N, device=r.device)).to(param.dtype)
    return dr, dg, reduce(dw_partial, weight), reduce(db_partial, bias), y
