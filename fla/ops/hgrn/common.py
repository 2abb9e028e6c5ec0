"""What both HGRN ops share: the input checks, the scan's combine step, and the PyTorch path for CPUs without the
Triton interpreter.

The recurrence h_t = a_t h_{t-1} + x_t (a_t = exp(g_t)) is a composition of affine maps h -> a h + x, which is
associative: (a1, x1) then (a2, x2) is (a1 a2, a2 x1 + x2). So a chunk of tokens is one parallel scan, and a whole
chunk acts on the state entering it as one map (A, X): h_out = A h_in + X.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fla.ops.utils.checks import check_cu_seqlens, check_initial_state, check_tensor
from fla.ops.utils.index import sequence_spans


@triton.jit
def affine_combine(a1, x1, a2, x2):
    """(a1, x1) then (a2, x2): h -> a2 (a1 h + x1) + x2."""
    return a1 * a2, a2 * x1 + x2


def check_hgrn_inputs(x, g, initial_state, cu_seqlens) -> None:
    check_tensor("x", x, "[B, T, D]", (None, None, None))
    B, T, D = x.shape
    check_tensor("g", g, "[B, T, D]", (B, T, D), device=x.device)
    N = check_cu_seqlens(cu_seqlens, B, T) if cu_seqlens is not None else B
    check_initial_state(initial_state, N, (D,), "[N, D]", x.device)


def hgrn_torch(x, g, initial_state, output_final_state, cu_seqlens, chunk_size: int = 64):
    """The recurrence in plain PyTorch, differentiated by autograd: the same chunked scan as the kernels (chunk_size
    steps vectorized over every chunk, then one carry per chunk), so a sequence costs chunk_size + T / chunk_size
    small steps, not T. Sequence starts get a = 0 with the initial state folded into x, so packed sequences run as
    one stream without any state crossing a boundary."""
    B, T, D = x.shape
    spans = sequence_spans(cu_seqlens, B, T)
    a, xf = g.float().exp(), x.float()
    start = torch.zeros(B, T, 1, dtype=torch.bool, device=x.device)
    h0 = None
    if initial_state is not None:
        h0 = x.new_zeros(B, T, D, dtype=torch.float32)
    for i, (b, bos, eos) in enumerate(spans):
        if eos > bos:
            start[b, bos] = True
            if h0 is not None:
                h0[b, bos] = initial_state[i]
    if h0 is not None:
        xf = xf + torch.where(start, a * h0, 0.)
    a = torch.where(start, 0., a)
    C = chunk_size
    NT = triton.cdiv(T, C)
    pad = NT * C - T
    a = torch.cat([a, a.new_ones(B, pad, D)], 1).view(B, NT, C, D)
    xf = torch.cat([xf, xf.new_zeros(B, pad, D)], 1).view(B, NT, C, D)
    h, A = xf.new_zeros(B, NT, D), xf.new_ones(B, NT, D)
    local, decay = [], []
    for j in range(C):  # within every chunk at once, from a zero state
        h, A = a[:, :, j] * h + xf[:, :, j], a[:, :, j] * A
        local.append(h)
        decay.append(A)
    local, decay = torch.stack(local, 2), torch.stack(decay, 2)
    s, carries = xf.new_zeros(B, D), []
    for c in range(NT):  # the state entering each chunk
        carries.append(s)
        s = local[:, c, -1] + decay[:, c, -1] * s
    o = (local + decay * torch.stack(carries, 1)[:, :, None]).flatten(1, 2)[:, :T]
    final_state = None
    if output_final_state:
        finals = []
        for i, (b, bos, eos) in enumerate(spans):
            if eos > bos:
                finals.append(o[b, eos - 1])
            else:
                finals.append(initial_state[i].float() if initial_state is not None else o.new_zeros(D))
        final_state = torch.stack(finals)
    return o.to(x.dtype), final_state
