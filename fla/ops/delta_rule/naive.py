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


# The peer library's other delta-rule references, head-first ([B, H, T, K]) as in the peer, scale K ** -0.5,
# scalar beta [B, H, T] (per-value-channel [B, H, T, V] too for the recurrence). They compute the recurrence above,
# whatever form their names describe: the numbers are the same, and the recurrence is the one that is obviously
# right. The chunk and block sizes are kept only for what they demand of T, which is refused as in the peer.

def delta_rule_recurrence(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """q, k: [B, H, T, K]; v: [B, H, T, V]; beta: [B, H, T] or [B, H, T, V]; initial_state: [B, H, K, V] ->
    (o [B, H, T, V] in q's dtype, final state [B, H, K, V] float32, or None if output_final_state is False)."""
    o, S = naive_recurrent_delta_rule(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), beta.transpose(1, 2),
                                      None, initial_state, output_final_state is not False)
    return o.transpose(1, 2).to(q.dtype), S


def _check_blocks(T: int, **sizes: int) -> None:
    for name, size in sizes.items():
        if not isinstance(size, int) or size < 1 or T % size:
            raise ValueError(f"{name} ({size}) must divide the sequence length ({T}), as in the peer's reference")


def delta_rule_chunkwise(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    chunk_size: int = 32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k: [B, H, T, K]; v: [B, H, T, V]; beta: [B, H, T]; T a multiple of chunk_size; no initial state ->
    (o [B, H, T, V], final state [B, H, K, V]), both float32 as the peer's (which takes float32 inputs only)."""
    _check_blocks(q.shape[2], chunk_size=chunk_size)
    o, S = delta_rule_recurrence(q, k, v, beta, None, True)
    return o.float(), S


def delta_rule_parallel(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    BM: int = 128,
    BN: int = 32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k: [B, H, T, K]; v: [B, H, T, V]; beta: [B, H, T]; T a multiple of BM, BM of BN; no initial state ->
    (o [B, H, T, V], A [B, H, T, T]) float32, with o = A @ (beta * v): A[i, j] is what the write beta_j v_j of token j
    adds to output i (lower triangular, the scale included). A comes from the same recurrence run on one-hot writes:
    the state stores, per token j, how much of write j it holds (S [K, T] instead of [K, V])."""
    B, H, T, K = q.shape
    _check_blocks(T, BM=BM)
    _check_blocks(BM, BN=BN)
    qf, kf, bf = q.float() * K ** -0.5, k.float(), beta.float()
    S = qf.new_zeros(B, H, K, T)
    A = qf.new_zeros(B, H, T, T)
    eye = torch.eye(T, dtype=torch.float32, device=q.device)
    for t in range(T):
        k_t = kf[:, :, t]  # [B, H, K]
        # the pseudo-value of token t: its own write minus beta_t times what the state recalls at k_t
        u = eye[t] - bf[:, :, t, None] * torch.einsum("bhk,bhkj->bhj", k_t, S)
        S = S + k_t[..., None] * u[:, :, None, :]
        A[:, :, t] = torch.einsum("bhk,bhkj->bhj", qf[:, :, t], S)
    o = A @ (bf[..., None] * v.float())
    return o, A
