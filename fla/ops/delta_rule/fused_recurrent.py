"""The delta rule token by token (inference path): the gated kernels of `fla.ops.gated_delta_rule` with no gate."""
from __future__ import annotations

import torch

from fla.ops.gated_delta_rule.fused_recurrent import _fused_recurrent, check_delta_rule_inputs
from fla.ops.utils.checks import normalize_inputs


@normalize_inputs
def fused_recurrent_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor | None = None,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The delta rule `S_t = S_{t-1} + k_t^T (beta_t * (v_t - k_t S_{t-1}))`, `o_t = scale * q_t S_t`, token by
    token; differentiable.

    Args:
        q, k: [B, T, H, K]; v: [B, T, H, V]
        beta: [B, T, H] or [B, T, H, V] (one strength per value channel), in (0, 1); None = 1 (as in the peer)
        scale: defaults to K ** -0.5
        initial_state: [N, H, K, V] float32 (N = B, or the number of sequences under cu_seqlens)
        use_qk_l2norm_in_kernel: L2-normalize q and k first (differentiated through)
        cu_seqlens: [N + 1] int, packed sequences, B must be 1
    Returns:
        o: [B, T, H, V]; final_state: [N, H, K, V] float32 or None
    """
    if beta is None and isinstance(v, torch.Tensor):
        beta = torch.ones(v.shape[:3], dtype=v.dtype, device=v.device)
    check_delta_rule_inputs(q, k, v, None, beta, scale, initial_state, cu_seqlens, per_channel_beta=True)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return _fused_recurrent(q, k, v, None, beta, scale,
                            initial_state.contiguous() if initial_state is not None else None, output_final_state,
                            use_qk_l2norm_in_kernel, cu_seqlens)
