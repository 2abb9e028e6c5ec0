"""Kimi Delta Attention in chunks (training path): the gated delta rule with a log decay per key channel, composed
from the shared blocks in one autograd function.

Per chunk (G [BT, K] the chunk-local cumsum of the gate, h[c] the state entering the chunk):
    G = cumsum(gate), gate = g or -exp(A_log) softplus(g + dt_bias)                     (gate.py, one kernel)
    A = (I + diag(beta) M)^{-1},  M_ts = sum_c k_tc k_sc exp(G_tc - G_sc), s < t        (wy_gk.py + wy.solve_tril)
    w = A (beta k exp(G)),  u = A (beta v)                                               (wy_gk.py)
    v_new = u - w h[c];  h[c+1] = diag(exp(G_last)) h[c] + (k exp(G_last - G))^T v_new   (delta_h.py, gk)
    o = scale * ((q exp(G)) h[c] + causal(sum_c q_c k_c exp(G_c - G_c')) v_new)          (chunk_gk.py)
Backward: the same blocks' gradients in reverse; the gradient w.r.t. G from the output and state (already reverse
cumsummed by `chunk_gk_bwd_dqkg`) and from the WY form (w.r.t. G) meet in the gate's backward kernel, which also
gives dA_log and ddt_bias. Grouped values (HV = group * H): q and k are repeated per value head before the blocks.
"""
from __future__ import annotations

import torch

from fla.ops.cp.chunk import check_cp_call, chunk_cp
from fla.ops.kda.gate import kda_gate_chunk_cumsum, kda_gate_chunk_cumsum_bwd
from fla.ops.utils.checks import (check_cu_seqlens, check_head_dim, check_initial_state, check_scale, check_tensor,
                                  normalize_inputs)
from fla.ops.utils.chunk_gk import chunk_gk_bwd_dqkg, chunk_gk_bwd_dv, chunk_gk_fwd_o
from fla.ops.utils.delta_h import chunk_gated_delta_rule_bwd_dhu, chunk_gated_delta_rule_fwd_h
from fla.ops.utils.l2norm import l2_norm
from fla.ops.utils.wy import solve_tril
from fla.ops.utils.wy_gk import chunk_kkt_gk_fwd, prepare_wy_repr_gk_bwd, recompute_w_u_gk_fwd

CHUNK_SIZE = 64


def chunk_kda_fwd(q, k, v, g, beta, A_log, dt_bias, scale, initial_state, output_final_state, cu_seqlens,
                  chunk_size=CHUNK_SIZE):
    """Returns (A, o, final_state); g is the raw gate when A_log is given, else the log decay."""
    G = kda_gate_chunk_cumsum(g, A_log, dt_bias, chunk_size, cu_seqlens)
    A = solve_tril(chunk_kkt_gk_fwd(k, G, beta, cu_seqlens=cu_seqlens, chunk_size=chunk_size), cu_seqlens,
                   chunk_size, output_dtype=k.dtype)
    w, u = recompute_w_u_gk_fwd(k, v, beta, A, G, cu_seqlens, chunk_size)
    h, v_new, ht = chunk_gated_delta_rule_fwd_h(k, w, u, None, initial_state, output_final_state, cu_seqlens,
                                                chunk_size, gk=G)
    o = chunk_gk_fwd_o(q, k, v_new, G, h, scale, cu_seqlens, chunk_size)
    return A, o, ht


def chunk_kda_bwd(q, k, v, g, beta, A_log, dt_bias, A, scale, initial_state, do, dht, cu_seqlens,
                  chunk_size=CHUNK_SIZE):
    """Gradients (dq, dk, dv, dg, dbeta, dA_log, ddt_bias, dh0), float32 except dv (v's dtype) and dg (g's);
    G, w, u, h, v_new are recomputed."""
    G = kda_gate_chunk_cumsum(g, A_log, dt_bias, chunk_size, cu_seqlens)
    w, u = recompute_w_u_gk_fwd(k, v, beta, A, G, cu_seqlens, chunk_size)
    h, v_new, _ = chunk_gated_delta_rule_fwd_h(k, w, u, None, initial_state, False, cu_seqlens, chunk_size, gk=G)
    dv_local = chunk_gk_bwd_dv(q, k, G, do, None, scale, cu_seqlens, chunk_size)
    dh, dh0, dv_new = chunk_gated_delta_rule_bwd_dhu(q, k, w, do, dv_local, None, initial_state, dht, scale,
                                                     cu_seqlens, chunk_size, gk=G)
    dq, dk, dgate, dw = chunk_gk_bwd_dqkg(q, k, v_new, G, h, do, dh, scale, cu_seqlens, chunk_size,
                                          g_dtype=torch.float32, dv=dv_new)
    # dk through the output and the state goes in as dk0: the WY backward adds its parts to it in place
    dk, dv, dbeta, dG_wy = prepare_wy_repr_gk_bwd(k, v, beta, A, G, dw, dv_new, cu_seqlens=cu_seqlens,
                                                  chunk_size=chunk_size, dk0=dk)
    dg, dA_log, ddt_bias = kda_gate_chunk_cumsum_bwd(g, A_log, dt_bias, dG_wy, dgate, chunk_size, cu_seqlens)
    return dq, dk, dv, dg, dbeta, dA_log, ddt_bias, dh0


class ChunkKDAFunction(torch.autograd.Function):

    @staticmethod
    def forward(ctx, q, k, v, g, beta, A_log, dt_bias, scale, initial_state, output_final_state, cu_seqlens,
                chunk_size):
        A, o, ht = chunk_kda_fwd(q, k, v, g, beta, A_log, dt_bias, scale, initial_state, output_final_state,
                                 cu_seqlens, chunk_size)
        ctx.save_for_backward(q, k, v, g, beta, A_log, dt_bias, A, initial_state, cu_seqlens)
        ctx.scale, ctx.chunk_size = scale, chunk_size
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, g, beta, A_log, dt_bias, A, initial_state, cu_seqlens = ctx.saved_tensors
        dq, dk, dv, dg, dbeta, dA_log, ddt_bias, dh0 = chunk_kda_bwd(
            q, k, v, g, beta, A_log, dt_bias, A, ctx.scale, initial_state, do.contiguous(),
            dht.contiguous() if dht is not None else None, cu_seqlens, ctx.chunk_size)
        dA_log = dA_log.to(A_log.dtype) if A_log is not None else None
        ddt_bias = ddt_bias.view_as(dt_bias).to(dt_bias.dtype) if dt_bias is not None else None
        return (dq.to(q.dtype), dk.to(k.dtype), dv, dg, dbeta.to(beta.dtype), dA_log, ddt_bias, None, dh0, None,
                None, None)


def check_kda_inputs(q, k, v, g, beta, scale, initial_state, cu_seqlens, use_gate_in_kernel, A_log, dt_bias):
    """The input checks of both KDA ops (after the peer-only options were refused)."""
    check_tensor("q", q, "[B, T, H, K]", (None, None, None, None))
    B, T, H, K = q.shape
    check_head_dim("q", K)
    check_tensor("k", k, "[B, T, H, K]", (B, T, H, K), (q.dtype,), q.device)
    check_tensor("v", v, "[B, T, HV, V]", (B, T, None, None), (q.dtype,), q.device)
    HV, V = v.shape[2], v.shape[3]
    check_head_dim("v", V)
    if HV % H != 0:
        raise ValueError(f"v's head count HV must be a multiple of q/k's H (got HV={HV}, H={H}); "
                         "each group of HV // H value heads shares one q/k head")
    check_tensor("g", g, "[B, T, HV, K] (a log decay per key channel)", (B, T, HV, K), device=q.device)
    check_tensor("beta", beta, "[B, T, HV]", (B, T, HV), device=q.device)
    if use_gate_in_kernel:
        if A_log is None:
            raise ValueError("use_gate_in_kernel=True needs A_log [HV] (and optionally dt_bias [HV * K]): "
                             "g is then the raw gate, -exp(A_log) * softplus(g + dt_bias)")
        check_tensor("A_log", A_log, "[HV]", (HV,), device=q.device)
        if dt_bias is not None:
            check_tensor("dt_bias", dt_bias.reshape(-1), "[HV * K]", (HV * K,), device=q.device)
    elif A_log is not None or dt_bias is not None:
        raise ValueError("A_log / dt_bias are used only with use_gate_in_kernel=True; pass it, or fold them into g")
    check_scale(scale)
    N = check_cu_seqlens(cu_seqlens, B, T) if cu_seqlens is not None else B
    check_initial_state(initial_state, N, (HV, K, V), "[N, HV, K, V]", q.device)


def refuse_unsupported(**options) -> None:
    """The peer's options fla does not implement: a clear error naming each one that was set."""
    used = [name for name, value in options.items() if value not in (None, False)]
    if used:
        raise ValueError(f"{', '.join(used)} {'is' if len(used) == 1 else 'are'} not supported by fla's KDA "
                         "(safe_gate / lower_bound: the sigmoid-bounded gate; return_intermediate_states, "
                         "use_graph: inference and CUDA-graph modes); leave them at their defaults")


def kda_beta(beta, use_beta_sigmoid_in_kernel: bool, allow_neg_eigval: bool):
    if allow_neg_eigval and not use_beta_sigmoid_in_kernel:
        raise ValueError("allow_neg_eigval=True needs use_beta_sigmoid_in_kernel=True (beta = 2 * sigmoid(beta))")
    if use_beta_sigmoid_in_kernel and isinstance(beta, torch.Tensor):
        # in float32, back in beta's dtype (one elementwise pass; the gate, not beta, is fused)
        beta = (torch.sigmoid(beta.float()) * (2.0 if allow_neg_eigval else 1.0)).to(beta.dtype)
    return beta


def prepare_kda(q, k, use_qk_l2norm_in_kernel, HV):
    """q, k as the blocks take them: L2-normalized if asked (differentiated through), repeated per value head."""
    if use_qk_l2norm_in_kernel:
        q, k = l2_norm(q), l2_norm(k)
    group = HV // q.shape[2]
    if group > 1:
        q, k = q.repeat_interleave(group, dim=2), k.repeat_interleave(group, dim=2)
    return q.contiguous(), k.contiguous()


@normalize_inputs
def chunk_kda(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False,
    use_gate_in_kernel: bool = False,
    use_beta_sigmoid_in_kernel: bool = False,
    allow_neg_eigval: bool = False,
    safe_gate: bool = False,
    lower_bound: float | None = None,
    disable_recompute: bool = False,
    return_intermediate_states: bool = False,
    state_v_first: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    cu_seqlens_cpu: torch.Tensor | None = None,
    cp_context: object | None = None,
    use_graph: bool = False,
    max_num_seqs: int | None = None,
    *,
    A_log: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Kimi Delta Attention, chunk-parallel; differentiable in every tensor input. Per value head:
    `S_t = diag(exp(g_t)) S_{t-1} + k_t^T beta_t (v_t - k_t diag(exp(g_t)) S_{t-1})`, `o_t = scale * q_t S_t`.

    Args:
        q, k: [B, T, H, K]; v: [B, T, HV, V] (HV a multiple of H: grouped values)
        g: [B, T, HV, K] log decays per key channel (<= 0); with use_gate_in_kernel the raw gate projection
        beta: [B, T, HV] writing strengths in (0, 1) (raw logits with use_beta_sigmoid_in_kernel)
        scale: defaults to K ** -0.5
        initial_state: [N, HV, K, V] float32 (N = B, or the number of sequences under cu_seqlens)
        use_qk_l2norm_in_kernel: L2-normalize q and k first (differentiated through)
        use_gate_in_kernel: the log decay is -exp(A_log) * softplus(g + dt_bias), computed in the cumsum kernel
        use_beta_sigmoid_in_kernel: beta = sigmoid(beta) (times 2 with allow_neg_eigval)
        safe_gate, lower_bound, return_intermediate_states, use_graph: the peer's; not supported (an error);
            max_num_seqs: only read by the peer's use_graph, ignored
        cp_context: this rank's piece of a sequence split across ranks (fla.ops.cp.build_cp_context); the inputs
            are then this rank's tokens, and cu_seqlens / initial_state / output_final_state are not taken
        disable_recompute: accepted for the peer's call form; the backward always recomputes (same results)
        state_v_first: initial and final states are [N, HV, V, K]
        cu_seqlens: [N + 1] int, packed sequences, B must be 1; cu_seqlens_cpu: the same on the host (optional)
        A_log: [HV], dt_bias: [HV * K] (keyword-only, as the peer takes them): the in-kernel gate's parameters
        chunk_size: 16, 32 or 64
    Returns:
        o: [B, T, HV, V]; final_state: [N, HV, K, V] float32 or None
    """
    refuse_unsupported(safe_gate=safe_gate, lower_bound=lower_bound,
                       return_intermediate_states=return_intermediate_states, use_graph=use_graph)
    if cp_context is not None:
        check_cp_call(cp_context, initial_state, output_final_state, cu_seqlens)
        cu_seqlens = cp_context.cu_seqlens
    if chunk_size not in (16, 32, 64):
        raise ValueError(f"chunk_size must be 16, 32 or 64 for KDA (got {chunk_size})")
    check_kda_inputs(q, k, v, g, beta, scale, initial_state, cu_seqlens, use_gate_in_kernel, A_log, dt_bias)
    beta = kda_beta(beta, use_beta_sigmoid_in_kernel, allow_neg_eigval)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    q, k = prepare_kda(q, k, use_qk_l2norm_in_kernel, v.shape[2])
    dt_bias = dt_bias.contiguous() if dt_bias is not None else None
    if cp_context is not None:  # one run with K extra value columns that carry the transition (fla/ops/cp/chunk.py)
        def run(v, h0):
            return ChunkKDAFunction.apply(q, k, v, g, beta.contiguous(), A_log if use_gate_in_kernel else None,
                                          dt_bias, scale, h0, True, cu_seqlens, chunk_size)
        return chunk_cp(run, q, v, None, scale, cp_context, diagonal=False), None
    o, ht = ChunkKDAFunction.apply(q, k, v, g, beta.contiguous(), A_log if use_gate_in_kernel else None, dt_bias,
                                   scale, initial_state, output_final_state, cu_seqlens, chunk_size)
    return o, (ht if output_final_state else None)
