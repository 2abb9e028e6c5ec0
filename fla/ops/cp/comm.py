"""The collectives of context parallelism: torch.distributed's autograd-aware all-gather, and what is built on it.

Every exchange is one all-gather of a small per-rank tensor whose backward is a reduce-scatter of its gradients
(torch's functional collectives), so the backward of a CP op (the state gradient handed back to earlier ranks, the
halo gradient, dK/dV of the gathered keys) comes from autograd: exact, and nothing to write by hand.
`torch.distributed.nn.functional.all_gather` is not used: on gloo its backward scatters from group ranks as if
they were global ranks, which breaks in a sub-group (a CP group of a data x context mesh).

Each rank calls the same collectives in the same order: the ops build the same graph on every rank (masks, not
rank-dependent branches), so the backward runs the reduce-scatters in the same order everywhere too.
"""
from __future__ import annotations

import torch
import torch.distributed._functional_collectives as funcol

from fla.ops.cp.context import FLACPContext

# all_gather_single_autograd is torch >= 2.12's name; all_gather_tensor_autograd the older one (the GPU boxes' 2.11)
_gather = getattr(funcol, "all_gather_single_autograd", None) or funcol.all_gather_tensor_autograd

# Bytes this process has put into CP all-gathers since the last reset (its own piece times world_size - 1: what a
# ring all-gather sends per rank). The backward's reduce-scatter sends the same amount again.
_sent = {"bytes": 0, "calls": 0}


def bytes_sent(reset: bool = False) -> dict:
    """{'bytes', 'calls'}: what this rank's CP all-gathers sent (forward) since the last reset; calls made inside a
    torch.compile'd region are not counted (benchmarks/bench_cp.py runs eagerly)."""
    out = dict(_sent)
    if reset:
        _sent.update(bytes=0, calls=0)
    return out


def all_gather_pieces(x: torch.Tensor, context: FLACPContext) -> torch.Tensor:
    """[*S] on every rank -> [world_size, *S], rank r's tensor at index r; differentiable (the gradient of every
    rank's copy is summed back onto its owner)."""
    world = context.world_size
    if not torch.compiler.is_compiling():  # dynamo guards on a mutated global int: it recompiled on every call
        _sent["bytes"] += x.numel() * x.element_size() * (world - 1)
        _sent["calls"] += 1
    if world == 1:
        return x.unsqueeze(0)
    out = _gather(x.contiguous().view(1, *x.shape), 0, context.group)
    return funcol.wait_tensor(out) if isinstance(out, funcol.AsyncCollectiveTensor) else out


def halo_before(x: torch.Tensor, n: int, width: int, context: FLACPContext) -> torch.Tensor:
    """The n tokens just before this rank's piece: x [B, T_local, ...] -> [B, n, ...]. Every rank contributes its
    last `width` tokens (the same width on every rank, e.g. min(T_local, W - 1) for a window W); with pieces shorter
    than the halo it spans several earlier ranks. Needs n <= rank * width. Differentiable."""
    B, T = x.shape[:2]
    if not 0 <= n <= context.rank * width or width > T:
        raise ValueError(f"halo of {n} tokens from {context.rank} earlier ranks of {width} tokens each "
                         f"(T_local = {T}) is not available")
    tails = all_gather_pieces(x[:, T - width:], context)  # [world, B, width, ...]
    before = tails[:context.rank].transpose(0, 1).reshape(B, context.rank * width, *x.shape[2:])
    return before[:, before.shape[1] - n:]
