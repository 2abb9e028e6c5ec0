"""Reference: the delta rule one token at a time, float32 inside, public layout.

Per head, state S [K, V], writing strength beta_t in (0, 1) (one per head, or one per value channel):
    S_t = S_{t-1} + k_t^T (beta_t * (v_t - k_t S_{t-1}))
    o_t = scale * q_t S_t
It is the gated delta rule with g = 0.
"""
from __future__ import annotations

import torch

from fla.ops.gated_delta_rule.naive import naive_recurrent_gated_delta_rule


def naive_recurrent_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """
    Args:
        q, k: [B, T, H, K]; v: [B, T, H, V]; beta: [B, T, H] or [B, T, H, V]
        initial_state: [N, H, K, V]; cu_seqlens: [N + 1] packed sequences (B == 1)
    Returns:
        o: [B, T, H, V] in v's dtype; final_state: [N, H, K, V] float32 or None
    """
    return naive_recurrent_gated_delta_rule(q, k, v, beta, None, scale, initial_state, output_final_state,
                                            use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel, cu_seqlens=cu_seqlens)
