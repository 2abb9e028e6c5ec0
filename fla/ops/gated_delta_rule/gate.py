"""The gated delta rule's gate and write strength from their raw projections (Gated DeltaNet / Mamba-2 style):

    g    = -exp(A_log) * softplus(g_raw + dt_bias)       (log decay per value head and token, <= 0)
    beta = sigmoid(beta_raw), times 2 with allow_neg_eigval (then I - beta k^T k has eigenvalues in [-1, 1])

`naive_gdn_gate` is the reference (the peer library's name and signature), `fused_gdn_gate` the same gate as one
Triton kernel each way (the peer's standalone function); `gated_delta_rule_inputs` is what the
ops' `use_gate_in_kernel` / `use_beta_sigmoid_in_kernel` / `allow_neg_eigval` options apply: the same float32
formulas in PyTorch, differentiated by autograd (not fused into the kernels yet: one extra elementwise pass; beta
goes back to its own dtype, so in bfloat16 it is rounded where the peer's kernel keeps float32).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from fla.ops.utils.dispatch import dispatch as by_device  # not `dispatch`: the peer has its own name there


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


# ---------------------------------------------------------------------------------------------------------------------
# fused_gdn_gate: the gate alone as one elementwise kernel each way (the peer's standalone function of that name).

@triton.jit
def gdn_gate_fwd_kernel(g, A_log, dt_bias, y, n, HV, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
    # g, y: flat [..., HV] contiguous; the head of element i is i % HV
    o = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = o < n
    h = o % HV
    b_g = tl.load(g + o, mask=m, other=0.).to(tl.float32)
    if HAS_BIAS:
        b_g += tl.load(dt_bias + h, mask=m, other=0.).to(tl.float32)
    b_a = tl.exp(tl.load(A_log + h, mask=m, other=0.).to(tl.float32))
    # softplus(x) = max(x, 0) + log(1 + exp(-|x|)), finite for any x
    b_sp = tl.maximum(b_g, 0.) + tl.log(1. + tl.exp(-tl.abs(b_g)))
    tl.store(y + o, (-b_a * b_sp).to(y.dtype.element_ty), mask=m)


@triton.jit
def gdn_gate_bwd_kernel(g, A_log, dt_bias, dy, dg, dA, n, HV, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
    # dg = dy * -exp(A) * sigmoid(g + b) (also d dt_bias per element); dA = dy * y per element (summed by the caller)
    o = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = o < n
    h = o % HV
    b_g = tl.load(g + o, mask=m, other=0.).to(tl.float32)
    if HAS_BIAS:
        b_g += tl.load(dt_bias + h, mask=m, other=0.).to(tl.float32)
    b_a = tl.exp(tl.load(A_log + h, mask=m, other=0.).to(tl.float32))
    b_dy = tl.load(dy + o, mask=m, other=0.).to(tl.float32)
    b_sp = tl.maximum(b_g, 0.) + tl.log(1. + tl.exp(-tl.abs(b_g)))
    tl.store(dg + o, -b_dy * b_a * tl.sigmoid(b_g), mask=m)
    tl.store(dA + o, -b_dy * b_a * b_sp, mask=m)


GATE_BLOCK = 1024


class GDNGateFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, g, A_log, dt_bias, output_dtype):
        g = g.contiguous()
        y = torch.empty(g.shape, dtype=output_dtype, device=g.device)
        n, HV = g.numel(), g.shape[-1]
        if n:
            gdn_gate_fwd_kernel[(triton.cdiv(n, GATE_BLOCK),)](g, A_log, dt_bias, y, n, HV,
                                                              HAS_BIAS=dt_bias is not None, BLOCK=GATE_BLOCK)
        ctx.save_for_backward(g, A_log, dt_bias)
        return y

    @staticmethod
    def backward(ctx, dy):
        g, A_log, dt_bias = ctx.saved_tensors
        n, HV = g.numel(), g.shape[-1]
        dg = torch.empty(g.shape, dtype=torch.float32, device=g.device)
        dA = torch.empty(g.shape, dtype=torch.float32, device=g.device)
        if n:
            gdn_gate_bwd_kernel[(triton.cdiv(n, GATE_BLOCK),)](g, A_log, dt_bias, dy.contiguous(), dg, dA, n, HV,
                                                              HAS_BIAS=dt_bias is not None, BLOCK=GATE_BLOCK)
        # the per-head parameters: sums over every token (float32), in their own dtypes
        d_A_log = dA.reshape(-1, HV).sum(0).to(A_log.dtype)
        d_bias = dg.reshape(-1, HV).sum(0).to(dt_bias.dtype) if dt_bias is not None else None
        return dg.to(g.dtype), d_A_log, d_bias, None


def _fused_gdn_gate_torch(g, A_log, dt_bias, output_dtype):
    return naive_gdn_gate(g, A_log, dt_bias, output_dtype)


_fused_gdn_gate = by_device(GDNGateFunction.apply, _fused_gdn_gate_torch)


def fused_gdn_gate(
    g: torch.Tensor,
    A_log: torch.Tensor,
    dt_bias: torch.Tensor | None = None,
    output_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """`-exp(A_log) * softplus(g + dt_bias)` as one kernel forward and one backward (float32 inside), differentiable
    in g, A_log and dt_bias. g: [..., HV]; A_log, dt_bias: [HV] -> [..., HV] in output_dtype."""
    if not isinstance(g, torch.Tensor) or g.dim() < 1 or not g.is_floating_point():
        raise ValueError(f"g must be a floating-point [..., HV] tensor (got {getattr(g, 'shape', type(g).__name__)})")
    HV = g.shape[-1]
    for name, t in (("A_log", A_log), ("dt_bias", dt_bias)):
        if t is not None and (not isinstance(t, torch.Tensor) or t.numel() != HV or t.device != g.device):
            raise ValueError(f"{name} must have HV = {HV} elements (g's last dim), on {g.device} "
                             f"(got {getattr(t, 'shape', t)})")
    A_log = A_log.reshape(HV).contiguous()
    dt_bias = dt_bias.reshape(HV).contiguous() if dt_bias is not None else None
    return _fused_gdn_gate(g, A_log, dt_bias, output_dtype)
