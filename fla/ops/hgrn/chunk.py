"""HGRN's recurrence in chunks (training path): each chunk of BT tokens is one parallel scan, the state passes
from chunk to chunk.

Forward, per chunk (see `common.py`): the scan of (a_t, x_t) = (exp(g_t), x_t) gives for every row the map from the
state entering the chunk, h_t = A_t h_in + X_t, and the chunk's last row gives the state leaving it.
Backward: dh_t = do_t + exp(g_{t+1}) dh_{t+1} is the same scan over the rows in reverse order, with
(a_t, x_t) = (exp(g_{t+1}), do_t) and the carry entering at the chunk's last row (dht at the sequence's end); then
dx_t = dh_t, dg_t = dh_t exp(g_t) h_{t-1} (h_{t-1} the saved output, h0 at the first row) and dh0 = exp(g_0) dh_0.
Rows past the sequence's end load a = 1, x = 0, so they pass the state through unchanged and the scan's last row is
the last real one. One program walks the chunks of one sequence for BD channels: the tokens of a chunk run in
parallel, the chunks in order (no second pass over the sequence, and o is written once).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
# tl.sum is a nested @jit call in the interpreter (slow); tl.reduce with the standard combine takes numpy's path
from triton.language.standard import _sum_combine

from fla.ops.cp.chunk import check_cp_call, chunk_cp
from fla.ops.cp.context import FLACPContext
from fla.ops.hgrn.common import affine_combine, check_hgrn_inputs, hgrn_torch
from fla.ops.hgrn.fused_recurrent import num_states
from fla.ops.utils.checks import normalize_inputs
from fla.ops.utils.dispatch import autotune, dispatch, is_interpreter
from fla.ops.utils.index import sequence_bounds

# The interpreter runs a scan with a custom combine one element at a time (~1 ms each), so there the chunks are
# short (the cost is per element either way; short chunks keep tests with several chunks small). Any power of two
# is the same math; the sm_90 compile check builds the GPU's 64.
CHUNK_SIZE = 16 if is_interpreter() else 64
_CONFIGS = [triton.Config({"BD": bd}, num_warps=w) for bd in (16, 32, 64, 128) for w in (4, 2, 8)]


@triton.jit
def last_row(b_x, BT: tl.constexpr):
    """Row BT - 1 of a [BT, BD] block (the scan's total: rows past the sequence's end pass the state through)."""
    return tl.reduce(tl.where((tl.arange(0, BT) == BT - 1)[:, None], b_x, 0.), 0, _sum_combine)


@triton.heuristics({
    "USE_INITIAL_STATE": lambda args: args["h0"] is not None,
    "STORE_FINAL_STATE": lambda args: args["ht"] is not None,
    "IS_VARLEN": lambda args: args["cu_seqlens"] is not None,
})
@autotune(_CONFIGS, key=["D"])
@triton.jit
def chunk_hgrn_fwd_kernel(
    x, g, o, h0, ht, cu_seqlens, T, D: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr,
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
    for i_t in range(tl.cdiv(T, BT)):
        o_t = i_t * BT + tl.arange(0, BT)
        m = (o_t < T)[:, None] & m_d[None, :]
        p = (bos + o_t)[:, None] * D + o_d[None, :]
        b_a = tl.exp(tl.load(g + p, mask=m, other=0.).to(tl.float32))
        b_x = tl.load(x + p, mask=m, other=0.).to(tl.float32)
        b_A, b_X = tl.associative_scan((b_a, b_x), 0, affine_combine)
        b_o = b_A * b_h[None, :] + b_X
        tl.store(o + p, b_o.to(o.dtype.element_ty), mask=m)
        b_h = last_row(b_o, BT)
    if STORE_FINAL_STATE:
        tl.store(ht + i_n * D + o_d, b_h, mask=m_d)


@triton.heuristics({
    "USE_INITIAL_STATE": lambda args: args["h0"] is not None,
    "USE_FINAL_STATE_GRADIENT": lambda args: args["dht"] is not None,
    "IS_VARLEN": lambda args: args["cu_seqlens"] is not None,
})
@autotune(_CONFIGS, key=["D"])
@triton.jit
def chunk_hgrn_bwd_kernel(
    g, o, h0, do, dht, dx, dg, dh0, cu_seqlens, T, D: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr,
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
    b_dh = tl.zeros([BD], dtype=tl.float32)  # dL/dh at the first row of the chunk after this one
    if USE_FINAL_STATE_GRADIENT:
        b_dh += tl.load(dht + i_n * D + o_d, mask=m_d, other=0.)
    b_g0 = tl.zeros([BD], dtype=tl.float32)  # g at the sequence's first row (0 for an empty sequence)
    NT = tl.cdiv(T, BT)
    for i_r in range(NT):
        o_t = (NT - 1 - i_r) * BT + BT - 1 - tl.arange(0, BT)  # this chunk's rows, last first
        m_t = o_t < T
        m = m_t[:, None] & m_d[None, :]
        p = (bos + o_t)[:, None] * D + o_d[None, :]
        # exp(g_{t+1}) carries dh_{t+1} back to row t; 1 at the sequence's last row, where dht enters
        b_a = tl.exp(tl.load(g + p + D, mask=(o_t + 1 < T)[:, None] & m_d[None, :], other=0.).to(tl.float32))
        b_do = tl.load(do + p, mask=m, other=0.).to(tl.float32)
        b_A, b_X = tl.associative_scan((b_a, b_do), 0, affine_combine)
        b_dht = b_A * b_dh[None, :] + b_X
        b_g = tl.load(g + p, mask=m, other=0.).to(tl.float32)
        b_hp = tl.load(o + p - D, mask=((o_t >= 1) & m_t)[:, None] & m_d[None, :], other=0.).to(tl.float32)
        b_hp = tl.where((o_t == 0)[:, None], b_h0[None, :], b_hp)
        tl.store(dx + p, b_dht.to(dx.dtype.element_ty), mask=m)
        tl.store(dg + p, (b_dht * tl.exp(b_g) * b_hp).to(dg.dtype.element_ty), mask=m)
        b_dh = last_row(b_dht, BT)  # dL/dh at the chunk's first row
        b_g0 = tl.reduce(tl.where((o_t == 0)[:, None], b_g, 0.), 0, _sum_combine)  # the last chunk walked has row 0
    if USE_INITIAL_STATE:
        tl.store(dh0 + i_n * D + o_d, tl.exp(b_g0) * b_dh, mask=m_d)


def chunk_hgrn_fwd(x, g, h0, output_final_state, cu_seqlens, chunk_size=CHUNK_SIZE):
    B, T, D = x.shape
    N = num_states(x, cu_seqlens)
    o = torch.empty_like(x)
    ht = x.new_empty(N, D, dtype=torch.float32) if output_final_state else None
    chunk_hgrn_fwd_kernel[lambda meta: (triton.cdiv(D, meta["BD"]), N)](
        x, g, o, h0, ht, cu_seqlens, T, D=D, BT=chunk_size)
    return o, ht


def chunk_hgrn_bwd(g, o, h0, do, dht, cu_seqlens, chunk_size=CHUNK_SIZE):
    B, T, D = o.shape
    N = num_states(o, cu_seqlens)
    dx, dg = torch.empty_like(o), torch.empty_like(g)
    dh0 = torch.empty_like(h0) if h0 is not None else None
    chunk_hgrn_bwd_kernel[lambda meta: (triton.cdiv(D, meta["BD"]), N)](
        g, o, h0, do, dht, dx, dg, dh0, cu_seqlens, T, D=D, BT=chunk_size)
    return dx, dg, dh0


class ChunkHGRNFunction(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, g, initial_state, output_final_state, cu_seqlens):
        o, ht = chunk_hgrn_fwd(x, g, initial_state, output_final_state, cu_seqlens)
        ctx.save_for_backward(g, o, initial_state, cu_seqlens)
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        g, o, initial_state, cu_seqlens = ctx.saved_tensors
        dx, dg, dh0 = chunk_hgrn_bwd(g, o, initial_state, do.contiguous(),
                                     dht.contiguous() if dht is not None else None, cu_seqlens)
        return dx, dg, dh0, None, None


# the Triton path or the PyTorch one (differentiated by autograd), by the device of x
_chunk_hgrn = dispatch(ChunkHGRNFunction.apply, hgrn_torch)


def chunk_hgrn_cp(x: torch.Tensor, g: torch.Tensor, cp_context: FLACPContext) -> torch.Tensor:
    """HGRN under context parallelism: its recurrence is the diagonal linear-state form with every channel a head
    of K = V = 1 (state [N, D, 1, 1], q = 1, scale 1, decay g per head), so fla/ops/cp/chunk.py's diagonal path
    applies as is: one run from a zero state, the all-gathered (M, B) = (exp(sum g), final state) summaries, and
    the first document's outputs corrected by exp(cumsum g) * h_in."""
    cu_seqlens = cp_context.cu_seqlens

    def run(v, h0):  # h0 is None on the diagonal path (the op runs from a zero state)
        o, ht = _chunk_hgrn(v[..., 0], g, None, True, cu_seqlens)
        return o[..., None], ht[..., None, None]
    return chunk_cp(run, x.new_ones(*x.shape, 1), x[..., None], g, 1.0, cp_context)[..., 0]


@normalize_inputs
def chunk_hgrn(
    x: torch.Tensor,
    g: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    *,
    cp_context: FLACPContext | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """HGRN's gated recurrence h_t = exp(g_t) * h_{t-1} + x_t (o_t = h_t), chunk-parallel (training);
    differentiable.

    Args:
        x: [B, T, D] inputs
        g: [B, T, D] log forget gates (<= 0)
        initial_state: [N, D] float32 (N = B, or the number of sequences under cu_seqlens)
        cu_seqlens: [N + 1] int, packed sequences, B must be 1
        cp_context: this rank's piece of a sequence split across ranks (fla.ops.cp.build_cp_context); x and g are
            then this rank's tokens, and cu_seqlens / initial_state / output_final_state are not taken
    Returns:
        o: [B, T, D] in x's dtype; final_state: [N, D] float32 or None
    """
    if cp_context is not None:
        check_cp_call(cp_context, initial_state, output_final_state, cu_seqlens)
        cu_seqlens = cp_context.cu_seqlens
    check_hgrn_inputs(x, g, initial_state, cu_seqlens)
    if cp_context is not None:
        return chunk_hgrn_cp(x, g, cp_context), None
    return _chunk_hgrn(x, g, initial_state, output_final_state, cu_seqlens)
