"""RWKV-7's time mixing token by token (decoding): the DPLR delta rule's fused recurrent path under RWKV's names.

`fused_recurrent_rwkv7(r, w, k, v, a, b)` takes the low-rank terms as built; `fused_mul_recurrent_rwkv7(r, w, k, v, kk,
a)` takes the normalized key kk and the in-context learning rate a and forms them itself: a_t = -kk_t,
b_t = kk_t * a_t (S_t = diag(exp(w_t)) S_{t-1} - (kk_t a_t)^T (kk_t S_{t-1}) + k_t^T v_t).
"""
from __future__ import annotations

import torch

from fla.ops.generalized_delta_rule import fused_recurrent_dplr_delta_rule
from fla.ops.rwkv7.chunk import check_rwkv7_names


def fused_recurrent_rwkv7(
    r: torch.Tensor,
    w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = True,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Args:
        r, k, a, b: [B, T, H, K]; w: [B, T, H, K] log decays (<= 0); v: [B, T, H, V]
        scale: defaults to K ** -0.5 (the peer's default here, unlike chunk_rwkv7's 1.0)
        initial_state: [N, H, K, V] float32; output_final_state: True by default
        cu_seqlens: [N + 1] packed sequences (B == 1)
    Returns:
        o: [B, T, H, V]; final_state: [N, H, K, V] float32 or None
    """
    check_rwkv7_names(r, w)
    return fused_recurrent_dplr_delta_rule(r, k, v, a, b, w, scale=scale, initial_state=initial_state,
                                           output_final_state=output_final_state, cu_seqlens=cu_seqlens)


def fused_mul_recurrent_rwkv7(
    r: torch.Tensor,
    w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kk: torch.Tensor,
    a: torch.Tensor,
    scale: float = 1.0,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    reverse: bool = False,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Args:
        r, k: [B, T, H, K]; w: [B, T, H, K] log decays; v: [B, T, H, V]
        kk: [B, T, H, K] the normalized removal key; a: [B, T, H, K] the in-context learning rate (in (0, 1))
        scale: 1.0 by default; reverse: walk every sequence from its end
    Returns:
        o: [B, T, H, V]; final_state: [N, H, K, V] float32 or None
    """
    if not isinstance(kk, torch.Tensor) or not isinstance(a, torch.Tensor):
        raise ValueError("kk and a must be [B, T, H, K] tensors (the normalized key and the learning rate)")
    check_rwkv7_names(r, w)
    return fused_recurrent_dplr_delta_rule(r, k, v, -kk, kk * a, w, scale=scale, initial_state=initial_state,
                                           output_final_state=output_final_state, reverse=reverse,
                                           cu_seqlens=cu_seqlens)
