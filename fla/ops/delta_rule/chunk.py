"""The delta rule in chunks (training path): the gated delta rule's composition with no gate (see
`fla.ops.gated_delta_rule.chunk`; every block skips its gate terms when g is None)."""
from __future__ import annotations

import torch

from fla.ops.cp.chunk import check_cp_call
from fla.ops.cp.context import FLACPContext
from fla.ops.gated_delta_rule.chunk import chunk_delta_rule_family
from fla.ops.gated_delta_rule.fused_recurrent import check_delta_rule_inputs
from fla.ops.utils.checks import normalize_inputs


@normalize_inputs
def chunk_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    cu_seqlens_cpu: torch.Tensor | None = None,
    *,
    cp_context: FLACPContext | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The delta rule (`S_t = S_{t-1} + k_t^T beta_t (v_t - k_t S_{t-1})`, `o_t = scale * q_t S_t`),
    chunk-parallel; differentiable.

    Args:
        q, k: [B, T, H, K]; v: [B, T, H, V]
        beta: [B, T, H] writing strengths in (0, 1)
        scale: defaults to K ** -0.5
        initial_state: [N, H, K, V] float32 (N = B, or the number of sequences under cu_seqlens)
        use_qk_l2norm_in_kernel: L2-normalize q and k first (differentiated through)
        cu_seqlens: [N + 1] int, packed sequences, B must be 1
        cp_context: this rank's piece under context parallelism (see chunk_gated_delta_rule)
    Returns:
        o: [B, T, H, V]; final_state: [N, H, K, V] float32 or None
    """
    if cp_context is not None:
        check_cp_call(cp_context, initial_state, output_final_state, cu_seqlens)
        cu_seqlens = cp_context.cu_seqlens
    check_delta_rule_inputs(q, k, v, None, beta, scale, initial_state, cu_seqlens, per_channel_beta=False)
    o, ht = chunk_delta_rule_family(q, k, v, None, beta, scale, initial_state, output_final_state,
                                    use_qk_l2norm_in_kernel, cu_seqlens, cp_context)
    return o, (ht if output_final_state else None)


def fused_chunk_delta_rule(**kwargs):
    """Deprecated in the peer library, which raises; so do we."""
    raise NotImplementedError("fused_chunk_delta_rule is deprecated (as in the peer library): use chunk_delta_rule, "
                              "same arguments")
