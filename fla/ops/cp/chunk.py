"""Context parallelism for every chunked op whose state update is linear in the state.

A rank's piece maps the state entering it to the state leaving it affinely, per document row:
    S_out = M S_in + B
with B the piece's final state from a zero state and M the piece's transition: diag(exp(sum of log decays)) for
the diagonal families (simple_gla, gla, retention, linear_attn: M = I), a K x K matrix for the delta rules, and 0
when a document starts inside the piece (the incoming state then does not reach the piece's end). Likewise every
output of the piece's first document is affine in S_in:
    o_t = o_t(zero state) + P_t S_in,   P_t = scale * q_t M_t   (M_t the transition from the piece start to t)
So each rank runs its op ONCE, from a zero state, independently of the others; the ranks all-gather their
(B, M) summaries (O(world * H * K * V) per layer, independent of T); each folds the earlier ranks' summaries into
its true incoming state (a document may span several ranks: M passes it through, a document start cuts it) and
adds P S_in to its first document's outputs. For the diagonal families P comes from the gates (q * exp(cumsum)); for
the delta rules the op runs with K extra value columns of zeros and the identity as their initial state, so those
columns carry M_t: their outputs are P, their final state is M (one op call, K more value columns).

The backward is autograd's: the all-gather's backward hands every rank the gradient of its summary (dB, dM) from
all later ranks, and the op's own backward turns that into dq, dk, dv, dg, dbeta. Exact to float rounding.
"""
from __future__ import annotations

from typing import Callable

import torch

from fla.ops.cp.comm import all_gather_pieces
from fla.ops.cp.context import FLACPContext

MAX_AUGMENTED_DIM = 256  # value columns one op call can take (check_head_dim); beyond, M runs as a second call


def check_cp_call(context: object, initial_state, output_final_state: bool, cu_seqlens) -> None:
    """What an op under context parallelism refuses (the same as the peer library)."""
    if not isinstance(context, FLACPContext):
        raise ValueError(f"cp_context must be an FLACPContext from fla.ops.cp.build_cp_context (got "
                         f"{type(context).__name__})")
    if initial_state is not None or output_final_state:
        raise ValueError("initial_state and output_final_state are not supported with cp_context (the state enters "
                         "from the earlier ranks; run the last rank without CP to read a final state)")
    if cu_seqlens is not None:
        raise ValueError("with cp_context do not pass cu_seqlens: this rank's boundaries come from the context "
                         "(build_cp_context takes the global cu_seqlens)")


def _first_len(context: FLACPContext, T: int) -> int:
    """Tokens of the piece's first document (all T for fixed-length rows)."""
    return int(context.cu_seqlens_cpu[1]) if context.is_varlen else T


def _last_start(context: FLACPContext) -> int:
    return int(context.cu_seqlens_cpu[-2]) if context.is_varlen else 0


def _fold(gathered: torch.Tensor, V: int, context: FLACPContext, diagonal: bool) -> torch.Tensor:
    """The state entering this rank's piece from the gathered summaries [world, R, H, K, V + X] (X = 1 for a
    diagonal M, K for a matrix one): S = 0; S <- M_j S + B_j for every earlier rank j. Every rank runs the same
    ops (masks, not branches: see comm.py)."""
    S = torch.zeros_like(gathered[0, ..., :V])
    # which ranks come before this one: made on the device (no host copy), and not memoized on the context: under
    # torch.compile a memo lookup that misses on a batch's first layer and hits on the others recompiled this frame
    # every call until dynamo's limit
    earlier = torch.arange(context.world_size, device=S.device) < context.rank
    for j in range(context.world_size):
        B_j, M_j = gathered[j, ..., :V], gathered[j, ..., V:]
        moved = (M_j * S if diagonal else M_j @ S) + B_j
        S = torch.where(earlier[j], moved, S)
    return S * float(context.receives_state)


def chunk_cp(
    run: Callable[[torch.Tensor, torch.Tensor | None], tuple[torch.Tensor, torch.Tensor]],
    q: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor | None,
    scale: float,
    context: FLACPContext,
    diagonal: bool = True,
) -> torch.Tensor:
    """This rank's output of a linear-state chunked op under context parallelism.

    Args:
        run: `run(v, h0) -> (o, final_state)`: the family's differentiable op on this piece (q, k, gates bound;
            the context's local cu_seqlens; h0 [N, H, K, V'] float32 or None = zeros; final state returned)
        q: [B, T, H, K] the queries the op sees (after any normalization); v: [B, T, H, V]
        log_decay: diagonal families: the per-token log decay, [B, T, H] (per head) or [B, T, H, K], or None
            (no decay); ignored for the delta rules (diagonal=False)
        scale: the op's output scale
        context: this rank's FLACPContext
    Returns:
        o: [B, T, H, V] in the op's output dtype
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    n0 = _first_len(context, T)
    R = 1 if context.is_varlen else B  # document rows carried across ranks: the first/last document, or every row
    if diagonal:
        o, ht = run(v, None)
        if log_decay is None:
            total, decay = q.new_zeros(R, H, K, dtype=torch.float64), None
        else:
            ld = log_decay.double() if log_decay.dim() == 4 else log_decay.double()[..., None]
            total = ld[:, _last_start(context):].sum(1).expand(R, H, K)  # the last document's decay over the piece
            decay = ld[:, :n0].cumsum(1).exp()  # [B, n0, H, K or 1]: M_t of the first document, diagonal
        P = q[:, :n0].float() * scale
        if decay is not None:
            P = P * decay.float()
        M = total.exp().float()[..., None]  # [R, H, K, 1]
        summary_B = ht[ht.shape[0] - R:]
    else:
        N = context.num_seqs if context.is_varlen else B
        eye = torch.eye(K, device=v.device, dtype=torch.float32).expand(N, H, K, K)
        if V + K <= MAX_AUGMENTED_DIM:
            h0 = torch.cat([eye.new_zeros(N, H, K, V), eye], -1)
            o_aug, ht_aug = run(torch.cat([v, v.new_zeros(B, T, H, K)], -1), h0)
            o, P, ht, Mt = o_aug[..., :V], o_aug[:, :n0, ..., V:], ht_aug[..., :V], ht_aug[..., V:]
        else:
            o, ht = run(v, None)
            o_m, Mt = run(v.new_zeros(B, T, H, K), eye.contiguous())
            P = o_m[:, :n0]
        M = Mt[N - R:]
        summary_B = ht[N - R:]
    M = M * float(context.passes_state_through)  # a document starting inside the piece cuts the incoming state
    gathered = all_gather_pieces(torch.cat([summary_B.float(), M.float()], -1), context)
    S_in = _fold(gathered, V, context, diagonal)  # [R, H, K, V]
    correction = torch.einsum("bthk,bhkv->bthv", P.float(), S_in)
    head = (o[:, :n0].float() + correction).to(o.dtype)
    return torch.cat([head, o[:, n0:]], 1) if n0 < T else head
