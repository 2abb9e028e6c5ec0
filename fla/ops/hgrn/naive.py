"""Reference: HGRN's element-wise gated recurrence one token at a time, float32 inside, public layout.

    h_t = exp(g_t) * h_{t-1} + x_t,   o_t = h_t          (x, g, h: [D] per token; g the log forget gate, <= 0)
"""
from __future__ import annotations

import torch

from fla.ops.utils.index import sequence_spans


def naive_recurrent_hgrn(
    x: torch.Tensor,
    g: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool | None = False,
    *,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Args:
        x, g: [B, T, D] inputs and log forget gates
        initial_state: [N, D] (N = B, or the number of sequences under cu_seqlens)
        cu_seqlens: [N + 1] packed sequences (B == 1)
    Returns:
        o: [B, T, D] in x's dtype; final_state: [N, D] float32 or None
    """
    B, T, D = x.shape
    o = torch.zeros(B, T, D, dtype=torch.float32, device=x.device)
    finals = []
    for i, (b, bos, eos) in enumerate(sequence_spans(cu_seqlens, B, T)):
        h = initial_state[i].float() if initial_state is not None else x.new_zeros(D, dtype=torch.float32)
        for t in range(bos, eos):
            h = g[b, t].float().exp() * h + x[b, t].float()
            o[b, t] = h
        finals.append(h)
    return o.to(x.dtype), (torch.stack(finals) if output_final_state else None)


def naive_chunk_hgrn(
    x: torch.Tensor,
    g: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool | None = False,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The peer library's chunked reference, by its name and arguments: the same function as the token-by-token
    recurrence, which is what it computes here (`chunk_size` does not change the result)."""
    return naive_recurrent_hgrn(x, g, initial_state, output_final_state)
