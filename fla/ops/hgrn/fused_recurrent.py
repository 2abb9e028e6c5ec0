"""HGRN's recurrence walked token by token with the state in registers (inference path), forward and backward.

    h_t = exp(g_t) h_{t-1} + x_t,   o_t = h_t
Backward, with dh_t = dL/dh_t walked from the end (dh_{T-1} = do_{T-1} + dht):
    dh_t = do_t + exp(g_{t+1}) dh_{t+1},   dx_t = dh_t,   dg_t = dh_t exp(g_t) h_{t-1},   dh0 = exp(g_0) dh_0
h_{t-1} is the saved output o_{t-1} (the initial state at t = 0). Channels never mix: one program owns BD channels
of one sequence.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fla.ops.hgrn.common import check_hgrn_inputs, hgrn_torch
from fla.ops.utils.checks import normalize_inputs
from fla.ops.utils.dispatch import autotune, dispatch
from fla.ops.utils.index import sequence_bounds

_CONFIGS = [triton.Config({"BD": bd}, num_warps=w) for bd in (32, 64, 128) for w in (1, 2, 4)]


@triton.heuristics({
    "USE_INITIAL_STATE": lambda args: args["h0"] is not None,
    "STORE_FINAL_STATE": lambda args: args["ht"] is not None,
    "IS_VARLEN": lambda args: args["cu_seqlens"] is not None,
})
@autotune(_CONFIGS, key=["D"])
@triton.jit
def fused_recurrent_hgrn_fwd_kernel(
    x, g, o, h0, ht, cu_seqlens, T, D: tl.constexpr, BD: tl.constexpr,
    USE_INITIAL_STATE: tl.constexpr, STORE_FINAL_STATE: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    # grid (D blocks, N); x, g, o [B, T, D] (row stride D); h0, ht [N, D] float32.
    i_d, i_n = tl.program_id(0), tl.program_id(1)
    bos, T = sequence_bounds(i_n, cu_seqlens, T, IS_VARLEN)
    o_d = i_d * BD + tl.arange(0, BD)
    m_d = o_d < D
    b_h = tl.zeros([BD], dtype=tl.float32)
    if USE_INITIAL_STATE:
        b_h += tl.load(h0 + i_n * D + o_d, mask=m_d, other=0.)
    for i_t in range(T):
        p = (bos + i_t) * D + o_d
        b_x = tl.load(x + p, mask=m_d, other=0.).to(tl.float32)
        b_g = tl.load(g + p, mask=m_d, other=0.).to(tl.float32)
        b_h = tl.exp(b_g) * b_h + b_x
        tl.store(o + p, b_h.to(o.dtype.element_ty), mask=m_d)
    if STORE_FINAL_STATE:
        tl.store(ht + i_n * D + o_d, b_h, mask=m_d)


@triton.heuristics({
    "USE_INITIAL_STATE": lambda args: args["h0"] is not None,
    "USE_FINAL_STATE_GRADIENT": lambda args: args["dht"] is not None,
    "IS_VARLEN": lambda args: args["cu_seqlens"] is not None,
})
@autotune(_CONFIGS, key=["D"])
@triton.jit
def fused_recurrent_hgrn_bwd_kernel(
    g, o, h0, do, dht, dx, dg, dh0, cu_seqlens, T, D: tl.constexpr, BD: tl.constexpr,
    USE_INITIAL_STATE: tl.constexpr, USE_FINAL_STATE_GRADIENT: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    # grid (D blocks, N); g, o, do, dx, dg [B, T, D]; h0, dht, dh0 [N, D] float32.
    i_d, i_n = tl.program_id(0), tl.program_id(1)
    bos, T = sequence_bounds(i_n, cu_seqlens, T, IS_VARLEN)
    o_d = i_d * BD + tl.arange(0, BD)
    m_d = o_d < D
    b_h0 = tl.zeros([BD], dtype=tl.float32)
    if USE_INITIAL_STATE:
        b_h0 += tl.load(h0 + i_n * D + o_d, mask=m_d, other=0.)
    b_dh = tl.zeros([BD], dtype=tl.float32)
    if USE_FINAL_STATE_GRADIENT:
        b_dh += tl.load(dht + i_n * D + o_d, mask=m_d, other=0.)
    for i_r in range(T):
        row = bos + T - 1 - i_r
        p = row * D + o_d
        b_g = tl.load(g + p, mask=m_d, other=0.).to(tl.float32)
        b_dh += tl.load(do + p, mask=m_d, other=0.).to(tl.float32)
        # h_{t-1}: the previous output (read from a clamped row, always in bounds), or h0 at the first token
        b_hp = tl.load(o + tl.maximum(row - 1, bos) * D + o_d, mask=m_d, other=0.).to(tl.float32)
        b_hp = tl.where(row > bos, b_hp, b_h0)
        tl.store(dx + p, b_dh.to(dx.dtype.element_ty), mask=m_d)
        b_dh *= tl.exp(b_g)  # now dL/dh_{t-1}
        tl.store(dg + p, (b_dh * b_hp).to(dg.dtype.element_ty), mask=m_d)
    if USE_INITIAL_STATE:
        tl.store(dh0 + i_n * D + o_d, b_dh, mask=m_d)


def num_states(x: torch.Tensor, cu_seqlens: torch.Tensor | None) -> int:
    return x.shape[0] if cu_seqlens is None else len(cu_seqlens) - 1


def fused_recurrent_hgrn_fwd(x, g, h0, output_final_state, cu_seqlens):
    B, T, D = x.shape
    N = num_states(x, cu_seqlens)
    o = torch.empty_like(x)
    ht = x.new_empty(N, D, dtype=torch.float32) if output_final_state else None
    fused_recurrent_hgrn_fwd_kernel[lambda meta: (triton.cdiv(D, meta["BD"]), N)](
        x, g, o, h0, ht, cu_seqlens, T, D=D)
    return o, ht


def fused_recurrent_hgrn_bwd(g, o, h0, do, dht, cu_seqlens):
    B, T, D = o.shape
    N = num_states(o, cu_seqlens)
    dx, dg = torch.empty_like(o), torch.empty_like(g)
    dh0 = torch.empty_like(h0) if h0 is not None else None
    fused_recurrent_hgrn_bwd_kernel[lambda meta: (triton.cdiv(D, meta["BD"]), N)](
        g, o, h0, do, dht, dx, dg, dh0, cu_seqlens, T, D=D)
    return dx, dg, dh0


class FusedRecurrentHGRNFunction(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, g, initial_state, output_final_state, cu_seqlens):
        o, ht = fused_recurrent_hgrn_fwd(x, g, initial_state, output_final_state, cu_seqlens)
        ctx.save_for_backward(g, o, initial_state, cu_seqlens)
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        g, o, initial_state, cu_seqlens = ctx.saved_tensors
        dx, dg, dh0 = fused_recurrent_hgrn_bwd(g, o, initial_state, do.contiguous(),
                                               dht.contiguous() if dht is not None else None, cu_seqlens)
        return dx, dg, dh0, None, None


# the Triton path or the PyTorch one (differentiated by autograd), by the device of x
_fused_recurrent_hgrn = dispatch(FusedRecurrentHGRNFunction.apply, hgrn_torch)


@normalize_inputs
def fused_recurrent_hgrn(
    x: torch.Tensor,
    g: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """HGRN's gated recurrence h_t = exp(g_t) * h_{t-1} + x_t (o_t = h_t), token by token (decoding, short
    prompts); differentiable.

    Args:
        x: [B, T, D] inputs
        g: [B, T, D] log forget gates (<= 0)
        initial_state: [N, D] float32 (N = B, or the number of sequences under cu_seqlens)
        cu_seqlens: [N + 1] int, packed sequences, B must be 1
    Returns:
        o: [B, T, D] in x's dtype; final_state: [N, D] float32 or None
    """
    check_hgrn_inputs(x, g, initial_state, cu_seqlens)
    return _fused_recurrent_hgrn(x, g, initial_state, output_final_state, cu_seqlens)
