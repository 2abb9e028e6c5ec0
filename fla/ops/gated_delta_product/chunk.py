"""Gated DeltaProduct in chunks (training path), as the gated delta rule over the Householder steps.

Each token t applies its gate once and then n = num_householder delta-rule steps (see `naive.py`). Unrolled, that is
the gated delta rule on a sequence n times as long, row t * n + j carrying step j of token t:
    g'  = [g_t, 0, ..., 0] per token        (the decay applies before the first step only)
    q'  = [0, ..., 0, q_t] per token        (the output is read after the last step only)
    k', v', beta' = k, v, beta              (already [B, T * n, ...] in the peer's layout)
    cu_seqlens' = n * cu_seqlens
so `o_t = o'[t * n + n - 1]` and the final states are the same. The chunk path of `fla.ops.gated_delta_rule` (its
WY form, state pass and output blocks, forward and backward) runs on the unrolled sequence; the gradients of q and g
come back through the interleaving (rows with a zero query or gate get none). The unrolled output costs n times the
output block of one gated delta rule pass; the state pass and WY form cost that anyway (they see T * n rows).
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from fla.ops.cp.chunk import check_cp_call
from fla.ops.cp.context import FLACPContext
from fla.ops.gated_delta_rule.chunk import chunk_delta_rule_family
from fla.ops.utils.checks import (check_cu_seqlens, check_head_dim, check_initial_state, check_scale, check_tensor,
                                  normalize_inputs)
from fla.ops.utils.index import varlen_index
from fla.ops.utils.l2norm import l2_norm


def interleave_steps(x: torch.Tensor, num_householder: int, first: bool) -> torch.Tensor:
    """[B, T, ...] -> [B, T * n, ...]: x at step 0 (first) or step n - 1 (last) of each token, zeros at the others
    (a pad, so autograd takes the gradient back from that one row)."""
    n = num_householder
    if n == 1:
        return x
    rest = x.dim() - 2
    pad = (0, 0) * rest + ((0, n - 1) if first else (n - 1, 0))
    x = F.pad(x.unsqueeze(2), pad)
    return x.flatten(1, 2)


def steps_cu_seqlens(cu_seqlens: torch.Tensor | None, num_householder: int,
                     cu_seqlens_cpu: torch.Tensor | None = None) -> torch.Tensor | None:
    """Token boundaries -> the unrolled rows' boundaries (n * cu_seqlens), with their varlen index built from host
    ints (no second read of the device)."""
    if cu_seqlens is None or num_householder == 1:
        return cu_seqlens
    steps = cu_seqlens * num_householder
    varlen_index(steps, torch.tensor(varlen_index(cu_seqlens, cu_seqlens_cpu).bounds) * num_householder)
    return steps


def steps_cp_context(context: FLACPContext, num_householder: int) -> FLACPContext:
    """The context of the unrolled rows: this rank's piece holds n rows per token, so its boundaries (and every
    length the context records) scale by n; where documents start and which ranks they span do not change.
    Built once per context and n (host data)."""
    n = num_householder
    key = ("householder_steps", n)
    if n == 1:
        return context
    if key not in context._memo:
        cu, cu_cpu = context.cu_seqlens, context.cu_seqlens_cpu
        context._memo[key] = dataclasses.replace(
            context, cu_seqlens=steps_cu_seqlens(cu, n, cu_cpu), cu_seqlens_cpu=None if cu_cpu is None else cu_cpu * n,
            part_len=None if context.part_len is None else context.part_len * n,
            pre_num_conv_tokens=None if context.pre_num_conv_tokens is None else context.pre_num_conv_tokens * n,
            _memo={})
    return context._memo[key]


def check_gated_delta_product_inputs(q, k, v, g, beta, num_householder, scale, initial_state, cu_seqlens) -> None:
    if isinstance(num_householder, bool) or not isinstance(num_householder, int) or num_householder < 1:
        raise ValueError(f"num_householder must be a positive int (got {num_householder!r})")
    n = num_householder
    check_tensor("q", q, "[B, T, H, K]", (None, None, None, None))
    B, T, H, K = q.shape
    check_head_dim("q", K)
    check_tensor("k", k, "[B, T * num_householder, H, K]", (B, T * n, H, K), (q.dtype,), q.device)
    check_tensor("v", v, "[B, T * num_householder, HV, V]", (B, T * n, None, None), (q.dtype,), q.device)
    HV, V = v.shape[2], v.shape[3]
    check_head_dim("v", V)
    if HV % H != 0:
        raise ValueError(f"v's head count HV must be a multiple of q/k's H (got HV={HV}, H={H}); "
                         "each group of HV // H value heads shares one q/k head")
    if g is not None:
        check_tensor("g", g, "[B, T, HV] (one gate per token, not per Householder step)", (B, T, HV),
                     device=q.device)
    check_tensor("beta", beta, "[B, T * num_householder, HV]", (B, T * n, HV), device=q.device)
    check_scale(scale)
    N = B
    if cu_seqlens is not None:
        N = check_cu_seqlens(cu_seqlens, B, T)
    check_initial_state(initial_state, N, (HV, K, V), "[N, HV, K, V]", q.device)


@normalize_inputs
def chunk_gated_delta_product(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None,
    beta: torch.Tensor,
    num_householder: int,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    cu_seqlens_cpu: torch.Tensor | None = None,
    *,
    cp_context: FLACPContext | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gated DeltaProduct (Siems et al., 2025): per token one decay, then num_householder delta-rule steps
    (`S = exp(g_t) S_{t-1}`, then for each step j `S = S + k_tj^T beta_tj (v_tj - k_tj S)`, `o_t = scale * q_t S`),
    chunk-parallel; differentiable.

    Args:
        q: [B, T, H, K]
        k: [B, T * n, H, K]; v: [B, T * n, HV, V]; beta: [B, T * n, HV] in (0, 1) (or (0, 2) for negative
            eigenvalues), row t * n + j is Householder step j of token t (n = num_householder, the peer's layout)
        g: [B, T, HV] log decays (<= 0), one per token; None for DeltaProduct without a gate
        num_householder: n, the Householder steps per token
        scale: defaults to K ** -0.5
        initial_state: [N, HV, K, V] float32 (N = B, or the number of sequences under cu_seqlens)
        use_qk_l2norm_in_kernel: L2-normalize q and k first (differentiated through)
        cu_seqlens: [N + 1] int token boundaries, B must be 1 (the Householder rows follow: n * cu_seqlens);
            cu_seqlens_cpu: the same on the host (optional: then no device->host sync)
        cp_context: this rank's piece of a sequence split across ranks (fla.ops.cp.build_cp_context, on token
            boundaries); the inputs are then this rank's tokens (and their n rows each), and cu_seqlens /
            initial_state / output_final_state are not taken. The gated delta rule runs under the context of
            the unrolled rows (`steps_cp_context`).
    Returns:
        o: [B, T, HV, V]; final_state: [N, HV, K, V] float32 or None
    """
    if cp_context is not None:
        check_cp_call(cp_context, initial_state, output_final_state, cu_seqlens)
        cu_seqlens, cu_seqlens_cpu = cp_context.cu_seqlens, cp_context.cu_seqlens_cpu
    check_gated_delta_product_inputs(q, k, v, g, beta, num_householder, scale, initial_state, cu_seqlens)
    n = num_householder
    if use_qk_l2norm_in_kernel:  # before the interleave: the zero query rows need no norm
        q, k = l2_norm(q), l2_norm(k)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    cu_steps = steps_cu_seqlens(cu_seqlens, n, cu_seqlens_cpu) if cp_context is None else None
    q_steps = interleave_steps(q, n, first=False)
    g_steps = interleave_steps(g, n, first=True) if g is not None else None
    steps_context = steps_cp_context(cp_context, n) if cp_context is not None else None
    o, ht = chunk_delta_rule_family(q_steps, k, v, g_steps, beta, scale, initial_state, output_final_state, False,
                                    steps_context.cu_seqlens if steps_context is not None else cu_steps,
                                    cp_context=steps_context)
    if n > 1:
        o = o.unflatten(1, (-1, n))[:, :, -1].contiguous()
    return o, (ht if output_final_state else None)
