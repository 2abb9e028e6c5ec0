"""RWKV-7's time mixing in chunks: the DPLR delta rule with the names RWKV uses (r for q, w for gk).

    S_t = diag(exp(w_t)) S_{t-1} + b_t^T (a_t S_{t-1}) + k_t^T v_t,   o_t = scale * r_t S_t
w is already the log decay (RWKV-7 layers pass w = -softplus(-x) - 0.5 or -exp(-0.5) * sigmoid(x), both <= 0); a and b
are the low-rank terms as the layer builds them (a = -kk, b = kk * iclr). Nothing is transformed here.
"""
from __future__ import annotations

import torch

from fla.ops.cp.context import FLACPContext
from fla.ops.generalized_delta_rule import chunk_dplr_delta_rule
from fla.ops.utils.checks import check_tensor


def check_rwkv7_names(r: object, w: object) -> None:
    """The DPLR checks name q and gk; the two inputs RWKV calls otherwise are checked here under their own names."""
    check_tensor("r", r, "[B, T, H, K]", (None, None, None, None), contiguous=False)
    check_tensor("w", w, "[B, T, H, K]", tuple(r.shape), device=r.device, contiguous=False)


def chunk_rwkv7(
    r: torch.Tensor,
    w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    scale: float = 1.0,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    cu_seqlens_cpu: torch.Tensor | None = None,
    safe_gate: bool = False,
    chunk_size: int | None = None,
    disable_recompute: bool = False,
    cp_context: FLACPContext | None = None,
    lower_bound: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Args:
        r, k, a, b: [B, T, H, K]; w: [B, T, H, K] log decays (<= 0); v: [B, T, H, V]
        scale: 1.0 by default (RWKV-7 does not scale r)
        initial_state: [N, H, K, V] float32; cu_seqlens: [N + 1] packed sequences (B == 1)
        cp_context: this rank's piece of a sequence split across ranks (fla.ops.cp.build_cp_context): the DPLR
            op's context-parallel path; then no cu_seqlens, initial_state or output_final_state
        the rest: as in `chunk_dplr_delta_rule`
    Returns:
        o: [B, T, H, V]; final_state: [N, H, K, V] float32 or None
    """
    check_rwkv7_names(r, w)
    return chunk_dplr_delta_rule(r, k, v, a, b, w, scale=scale, initial_state=initial_state,
                                 output_final_state=output_final_state, cu_seqlens=cu_seqlens,
                                 cu_seqlens_cpu=cu_seqlens_cpu, safe_gate=safe_gate, chunk_size=chunk_size,
                                 disable_recompute=disable_recompute, cp_context=cp_context, lower_bound=lower_bound)
