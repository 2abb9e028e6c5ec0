"""The parallel (attention) form of retention, the peer library's `parallel_retention`: simple GLA's parallel form
with the fixed per-head decay (see `fla.ops.simple_gla.parallel`)."""
from __future__ import annotations

import torch

from fla.ops.retention.chunk import chunk_retention
from fla.ops.retention.naive import retention_log_decays
from fla.ops.simple_gla.parallel import decayed_scores
from fla.ops.utils.checks import normalize_inputs


@normalize_inputs
def parallel_retention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    output_attentions: bool = False,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """q, k: [B, T, H, K]; v: [B, T, H, V] -> o [B, T, H, V], and A [B, H, T, T] float32 with output_attentions
    (not with cu_seqlens)."""
    if output_attentions and cu_seqlens is not None:
        raise ValueError("output_attentions=True is not supported with cu_seqlens (as in the peer library)")
    o, _ = chunk_retention(q, k, v, scale=scale, cu_seqlens=cu_seqlens)
    if not output_attentions:
        return o, None
    B, T, H, _ = q.shape
    g = retention_log_decays(H, device=q.device).expand(B, T, H)
    return o, decayed_scores(q, k, g, q.shape[-1] ** -0.5 if scale is None else float(scale))
