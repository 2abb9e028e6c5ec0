"""The gated delta rule in chunks (training path): the WY representation, the delta state pass and the shared
intra-chunk output, composed in one autograd function. With g = None it is the plain delta rule.

Per chunk (G the chunk-local cumsum of g, h[c] the state entering the chunk):
    A = (I + tril(diag(beta) (K K^T * Gamma), -1))^{-1},  Gamma_ts = exp(G_t - G_s)       (wy.py, one kernel)
    w = A (beta k exp(G)),  u = A (beta v)
    v_new = u - w h[c];  h[c+1] = exp(G_last) h[c] + (k exp(G_last - G))^T v_new             (delta_h.py)
    o = scale * ((q exp(G)) h[c] + causal(q k^T * Gamma) v_new)                             (chunk_o.py)
Grouped values (HV = group * H value heads): q and k are repeated per value head before the blocks (their
gradients sum back through autograd), so every block sees HV heads.
"""
from __future__ import annotations

import torch

from fla.ops.cp.chunk import check_cp_call, chunk_cp
from fla.ops.cp.context import FLACPContext
from fla.ops.gated_delta_rule.fused_recurrent import check_delta_rule_inputs
from fla.ops.gated_delta_rule.gate import gated_delta_rule_inputs
from fla.ops.utils.checks import normalize_inputs
from fla.ops.utils.chunk_o import chunk_bwd_dqkwg, chunk_bwd_dv_local, chunk_fwd_o
from fla.ops.utils.cumsum import chunk_local_cumsum
from fla.ops.utils.delta_h import chunk_gated_delta_rule_bwd_dhu, chunk_gated_delta_rule_fwd_h
from fla.ops.utils.l2norm import l2_norm
from fla.ops.utils.wy import chunk_kkt_solve, prepare_wy_repr_bwd, recompute_w_u_fwd

CHUNK_SIZE = 64


def chunk_gated_delta_rule_fwd(q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens,
                               chunk_size=CHUNK_SIZE):
    """Returns (G, A, o, final_state); G is the chunk-local cumsum of g (None without a gate)."""
    G = chunk_local_cumsum(g, chunk_size, cu_seqlens=cu_seqlens) if g is not None else None
    A = chunk_kkt_solve(k, beta, G, cu_seqlens, chunk_size, output_dtype=k.dtype)
    w, u = recompute_w_u_fwd(k, v, beta, A, G, cu_seqlens, chunk_size)
    h, v_new, ht = chunk_gated_delta_rule_fwd_h(k, w, u, G, initial_state, output_final_state, cu_seqlens,
                                                chunk_size)
    o = chunk_fwd_o(q, k, v_new, h, G, scale, cu_seqlens, chunk_size)
    return G, A, o, ht


def chunk_gated_delta_rule_bwd(q, k, v, G, beta, A, scale, initial_state, do, dht, cu_seqlens,
                               chunk_size=CHUNK_SIZE):
    """Gradients (dq, dk, dv, dg, dbeta, dh0); dg is w.r.t. the raw gate g. w, u, h, v_new are recomputed."""
    w, u = recompute_w_u_fwd(k, v, beta, A, G, cu_seqlens, chunk_size)
    h, v_new, _ = chunk_gated_delta_rule_fwd_h(k, w, u, G, initial_state, False, cu_seqlens, chunk_size)
    dv_local = chunk_bwd_dv_local(q, k, do, G, scale, cu_seqlens, chunk_size)
    dh, dh0, dv_new = chunk_gated_delta_rule_bwd_dhu(q, k, w, do, dv_local, G, initial_state, dht, scale, cu_seqlens,
                                                     chunk_size)
    dq, dk, dw, dG = chunk_bwd_dqkwg(q, k, v_new, do, h, dh, G, w=w, dv=dv_new, scale=scale, cu_seqlens=cu_seqlens,
                                     chunk_size=chunk_size)
    dk_wy, dv, dbeta, dG_wy = prepare_wy_repr_bwd(k, v, beta, A, dw, dv_new, G, cu_seqlens, chunk_size)
    dk = dk + dk_wy
    dg = None
    if G is not None:
        dg = chunk_local_cumsum(dG + dG_wy, chunk_size, reverse=True, cu_seqlens=cu_seqlens)
    return dq, dk, dv, dg, dbeta, dh0


class ChunkGatedDeltaRuleFunction(torch.autograd.Function):

    @staticmethod
    def forward(ctx, q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens):
        G, A, o, ht = chunk_gated_delta_rule_fwd(q, k, v, g, beta, scale, initial_state, output_final_state,
                                                 cu_seqlens)
        ctx.save_for_backward(q, k, v, G, beta, A, initial_state, cu_seqlens)
        ctx.scale = scale
        ctx.g_dtype = g.dtype if g is not None else None
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, G, beta, A, initial_state, cu_seqlens = ctx.saved_tensors
        dq, dk, dv, dg, dbeta, dh0 = chunk_gated_delta_rule_bwd(
            q, k, v, G, beta, A, ctx.scale, initial_state, do.contiguous(),
            dht.contiguous() if dht is not None else None, cu_seqlens)
        if dg is not None:
            dg = dg.to(ctx.g_dtype)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dg, dbeta.to(beta.dtype), None, dh0, None, None


def chunk_delta_rule_family(q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel,
                            cu_seqlens, cp_context=None):
    """Shared body of `chunk_gated_delta_rule` and `chunk_delta_rule` after the checks (under `cp_context`,
    cu_seqlens is the context's)."""
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if use_qk_l2norm_in_kernel:
        q, k = l2_norm(q), l2_norm(k)
    group = v.shape[2] // q.shape[2]
    if group > 1:
        q, k = q.repeat_interleave(group, dim=2), k.repeat_interleave(group, dim=2)
    if initial_state is not None:
        initial_state = initial_state.contiguous()
    if cp_context is not None:  # one run with K extra value columns that carry the transition (fla/ops/cp/chunk.py)
        q, k = q.contiguous(), k.contiguous()

        def run(v, h0):
            return ChunkGatedDeltaRuleFunction.apply(q, k, v, g, beta, scale, h0, True, cu_seqlens)
        return chunk_cp(run, q, v, None, scale, cp_context, diagonal=False), None
    o, ht = ChunkGatedDeltaRuleFunction.apply(q.contiguous(), k.contiguous(), v, g, beta, scale, initial_state,
                                              output_final_state, cu_seqlens)
    return o, ht


@normalize_inputs
def chunk_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False,
    use_beta_sigmoid_in_kernel: bool = False,
    allow_neg_eigval: bool = False,
    state_v_first: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    cu_seqlens_cpu: torch.Tensor | None = None,
    chunk_indices: torch.Tensor | None = None,
    *,
    use_gate_in_kernel: bool = False,
    A_log: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    cp_context: FLACPContext | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The gated delta rule (`S_t = exp(g_t) S_{t-1} + k_t^T beta_t (v_t - exp(g_t) k_t S_{t-1})`,
    `o_t = scale * q_t S_t`), chunk-parallel; differentiable.

    Args:
        q, k: [B, T, H, K]; v: [B, T, HV, V] (HV a multiple of H: grouped values), all in one dtype; K <= 256
            (as in the peer), V of any size (the kernels tile it)
        g: [B, T, HV] log decays (<= 0)
        beta: [B, T, HV] writing strengths in (0, 1)
        scale: defaults to K ** -0.5
        initial_state: [N, HV, K, V] float32 (N = B, or the number of sequences under cu_seqlens)
        use_qk_l2norm_in_kernel: L2-normalize q and k first (differentiated through)
        use_beta_sigmoid_in_kernel: beta is the raw projection: use sigmoid(beta) (times 2 with allow_neg_eigval)
        state_v_first: initial and final states are [N, HV, V, K] (see fla.ops.utils.checks.normalize_inputs)
        cu_seqlens: [N + 1] int, packed sequences, B must be 1; cu_seqlens_cpu: the same on the host (optional:
            then no device->host sync at all)
        chunk_indices: taken for the peer library's call form and not needed (the chunk index of a cu_seqlens is
            built once and memoized: `fla.ops.utils.index.varlen_index`)
        use_gate_in_kernel: g is the raw gate: use -exp(A_log) * softplus(g + dt_bias) (see `gate.py`)
        cp_context: this rank's piece of a sequence split across ranks (fla.ops.cp.build_cp_context); the inputs
            are then this rank's tokens, and cu_seqlens / initial_state / output_final_state are not taken
    Returns:
        o: [B, T, HV, V]; final_state: [N, HV, K, V] float32 or None
    """
    g, beta = gated_delta_rule_inputs(g, beta, use_gate_in_kernel, A_log, dt_bias, use_beta_sigmoid_in_kernel,
                                      allow_neg_eigval)
    if g is None:
        raise ValueError("g must be a [B, T, HV] tensor of log decays; use chunk_delta_rule for no gate")
    if cp_context is not None:
        check_cp_call(cp_context, initial_state, output_final_state, cu_seqlens)
        cu_seqlens = cp_context.cu_seqlens
    if isinstance(q, torch.Tensor) and isinstance(v, torch.Tensor) and q.dtype != v.dtype:
        # the peer's chunk kernels fail on this too (a tl.dot of A in k's dtype with v's blocks)
        raise ValueError(f"chunk_gated_delta_rule needs v in q and k's dtype (got q {q.dtype}, v {v.dtype}): cast "
                         "one side first, or use fused_recurrent_gated_delta_rule, which takes them in different "
                         "dtypes")
    check_delta_rule_inputs(q, k, v, g, beta, scale, initial_state, cu_seqlens, per_channel_beta=False)
    o, ht = chunk_delta_rule_family(q, k, v, g, beta, scale, initial_state, output_final_state,
                                    use_qk_l2norm_in_kernel, cu_seqlens, cp_context)
    return o, (ht if output_final_state else None)


chunk_gdn = chunk_gated_delta_rule  # the peer library's short name
