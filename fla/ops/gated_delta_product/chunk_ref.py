"""The peer library's `chunk_gated_delta_product_ref` (its tests import it): the gated delta rule over the unrolled
Householder steps. That is also how `chunk_gated_delta_product` computes here (see `chunk.py`), so this is the same
function under the peer's name and argument order; the independent reference is `naive.py`."""
from __future__ import annotations

import torch

from fla.ops.gated_delta_product.chunk import chunk_gated_delta_product


def chunk_gated_delta_product_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None,
    beta: torch.Tensor,
    num_householder: int,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    use_qk_l2norm_in_kernel: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Shapes as `chunk_gated_delta_product`."""
    return chunk_gated_delta_product(q, k, v, g, beta, num_householder, scale=scale, initial_state=initial_state,
                                     output_final_state=output_final_state,
                                     use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel, cu_seqlens=cu_seqlens)
