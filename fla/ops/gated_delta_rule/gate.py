"""The gated delta rule's gate and write strength from their raw projections (Gated DeltaNet / Mamba-2 style):

    g    = -exp(A_log) * softplus(g_raw + dt_bias)       (log decay per value head and token, <= 0)
    beta = sigmoid(beta_raw), times 2 with allow_neg_eigval (then I - beta k^T k has eigenvalues in [-1, 1])

`naive_gdn_gate` is the reference (the peer library's name and signature); `gated_delta_rule_inputs` is what the
ops' `use_gate_in_kernel` / `use_beta_sigmoid_in_kernel` / `allow_neg_eigval` options apply: the same float32
formulas in PyTorch, differentiated by autograd (not fused into the kernels yet: one extra elementwise pass; beta
goes back to its own dtype, so in bfloat16 it is rounded where the peer's kernel keeps float32).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def naive_gdn_gate(
    g: torch.Tensor,
    A_log: torch.Tensor,
    dt_bias: torch.Tensor | None = None,
    output_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """g: [..., HV] raw gate; A_log: [HV]; dt_bias: [HV] or None -> -exp(A_log) * softplus(g + dt_bias) [..., HV]."""
    g = g.float()
    if dt_bias is not None:
        g = g + dt_bias.float()
    return (-A_log.float().exp() * F.softplus(g)).to(output_dtype)


def gated_delta_rule_inputs(g, beta, use_gate_in_kernel: bool, A_log, dt_bias, use_beta_sigmoid_in_kernel: bool,
                            allow_neg_eigval: bool):
    """(g, beta) as the kernels take them (log decays, write strengths) from what the op was given."""
    if use_gate_in_kernel:
        if A_log is None or g is None:
            raise ValueError("use_gate_in_kernel=True needs g (the raw gate projection) and A_log [HV] (dt_bias "
                             "optional): g = -exp(A_log) * softplus(g + dt_bias)")
        g = naive_gdn_gate(g, A_log, dt_bias)
    elif A_log is not None or dt_bias is not None:
        raise ValueError("A_log / dt_bias are used only with use_gate_in_kernel=True; pass it, or fold them into g")
    if allow_neg_eigval and not use_beta_sigmoid_in_kernel:
        raise ValueError("allow_neg_eigval=True needs use_beta_sigmoid_in_kernel=True (beta = 2 * sigmoid(beta))")
    if use_beta_sigmoid_in_kernel and beta is not None:
        # in float32, back in beta's dtype: the kernels are built and checked for beta in the dtype of q
        beta = (torch.sigmoid(beta.float()) * (2.0 if allow_neg_eigval else 1.0)).to(beta.dtype)
    return g, beta
