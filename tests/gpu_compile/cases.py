"""What the sm_90 compile check runs: every public op and module, forward and backward, on small CPU tensors.

Each case is a function of no arguments; `CASES` lists them. Three variants per op cover both sides of every
constexpr branch and the three GPU dtypes without the full product (every variant is a set of fresh compiles):
- "full":  bfloat16, fixed length (B=2), K=V=128, initial state, final state (its gradient flows in), every gate;
- "bare":  float16, varlen (a length-1 sequence, lengths not multiples of the chunk), K=96, V=80, nothing optional;
- "fp32":  float32, varlen, K=V=64, initial and final state, the other gate form where an op has two.
Outputs are garbage (nothing runs): only the compiles count. Add a case when a kernel or a flag is added; the
harness lists every @triton.jit function under fla/ that no case compiled.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

VARIANTS = {
    "full": dict(dtype=torch.bfloat16, varlen=False, K=128, V=128, state=True, gates=True),
    "bare": dict(dtype=torch.float16, varlen=True, K=96, V=80, state=False, gates=False),
    "fp32": dict(dtype=torch.float32, varlen=True, K=64, V=64, state=True, gates=True),
}
H, T_FIXED, LENGTHS = 2, 150, (1, 69, 80)


class Inputs:
    """Random inputs of one variant: q, k [B, T, H, K]; v [B, T, HV, V]; states [N, HV, K, V] float32."""

    def __init__(self, dtype, varlen, K, V, state, gates, HV=H):
        self.dtype, self.K, self.V, self.HV, self.state, self.gates = dtype, K, V, HV, state, gates
        if varlen:
            self.B, self.T, self.N = 1, sum(LENGTHS), len(LENGTHS)
            self.cu_seqlens = torch.tensor([0, *torch.tensor(LENGTHS).cumsum(0).tolist()], dtype=torch.int32)
        else:
            self.B, self.T, self.N, self.cu_seqlens = 2, T_FIXED, 2, None

    def x(self, *shape, dtype=None, fn=None):
        t = torch.randn(self.B, self.T, *shape, dtype=torch.float32)
        if fn is not None:
            t = fn(t)
        return t.to(dtype or self.dtype).requires_grad_()

    def qkv(self):
        return self.x(H, self.K), self.x(H, self.K), self.x(self.HV, self.V)

    def h0(self, V=None):
        if not self.state:
            return None
        return torch.randn(self.N, self.HV, self.K, V or self.V, dtype=torch.float32, requires_grad=True)

    def log_decay(self, *shape, dtype=torch.float32):
        return self.x(*shape, dtype=dtype, fn=lambda t: F.logsigmoid(t) / 8)


def backward(out) -> None:
    """Sum every output (the final state too, so its gradient flows in) and run the backward."""
    outs = out if isinstance(out, tuple) else (out,)
    loss = sum(o.float().sum() for o in outs if o is not None)
    loss.backward()


def each_variant(fn):
    """One case per variant: `fn(Inputs)` runs the op forward and backward."""
    cases = []
    for name, variant in VARIANTS.items():
        def case(variant=variant):
            fn(Inputs(**variant))
        case.__name__ = f"{fn.__name__}[{name}]"
        cases.append(case)
    return cases


# ---------------------------------------------------------------------------------------------------------------
# fla.ops families


def simple_gla(x: Inputs):
    from fla.ops.simple_gla import chunk_simple_gla, fused_recurrent_simple_gla

    q, k, v = x.qkv()
    kw = dict(initial_state=x.h0(), output_final_state=x.state, cu_seqlens=x.cu_seqlens)
    gate = {}
    if x.gates:  # bf16: per-token gate; float32: per-head constant decay
        gate = dict(g=x.log_decay(H)) if x.dtype == torch.bfloat16 else dict(g_gamma=-torch.rand(H) / 8)
    backward(chunk_simple_gla(q, k, v, **gate, **kw))
    backward(fused_recurrent_simple_gla(q, k, v, **gate, **kw, reverse=x.gates))


def gla(x: Inputs):
    from fla.ops.gla import chunk_gla, fused_recurrent_gla

    q, k, v = x.qkv()
    g = x.log_decay(H, x.K)
    kw = dict(initial_state=x.h0(), output_final_state=x.state, cu_seqlens=x.cu_seqlens)
    backward(chunk_gla(q, k, v, g, **kw))
    gates = dict(gk=g, gv=x.log_decay(H, x.V)) if x.gates else dict(gk=g)
    backward(fused_recurrent_gla(q, k, v, **gates, **kw, reverse=x.gates))
    if x.gates:
        backward(fused_recurrent_gla(q, k, v, gv=gates["gv"], **kw))


def retention(x: Inputs):
    from fla.ops.retention import chunk_retention, fused_recurrent_retention

    q, k, v = x.qkv()
    kw = dict(initial_state=x.h0(), output_final_state=x.state, cu_seqlens=x.cu_seqlens)
    backward(chunk_retention(q, k, v, **kw))
    backward(fused_recurrent_retention(q, k, v, **kw, reverse=x.gates))


def linear_attn(x: Inputs):
    from fla.ops.linear_attn import chunk_linear_attn, fused_recurrent_linear_attn

    q, k, v = x.qkv()
    normalize = x.gates
    kw = dict(initial_state=x.h0(x.V + 1 if normalize else None), output_final_state=x.state,
              cu_seqlens=x.cu_seqlens, normalize=normalize)
    backward(chunk_linear_attn(q, k, v, **kw))
    backward(fused_recurrent_linear_attn(q, k, v, **kw, reverse=x.gates))


def delta_rule(x: Inputs):
    from fla.ops.delta_rule import chunk_delta_rule, fused_recurrent_delta_rule

    q, k, v = x.qkv()
    beta = x.x(H, dtype=x.dtype, fn=torch.sigmoid)
    kw = dict(initial_state=x.h0(), output_final_state=x.state, cu_seqlens=x.cu_seqlens,
              use_qk_l2norm_in_kernel=x.gates)
    backward(chunk_delta_rule(q, k, v, beta, **kw))
    backward(fused_recurrent_delta_rule(q, k, v, beta, **kw))


def gated_delta_rule(x: Inputs):
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule

    x.HV = 2 * H if x.gates else H  # grouped values in the full variants
    q, k, v = x.qkv()
    g = x.log_decay(x.HV)
    beta = x.x(x.HV, dtype=x.dtype, fn=torch.sigmoid)
    kw = dict(initial_state=x.h0(), output_final_state=x.state, cu_seqlens=x.cu_seqlens,
              use_qk_l2norm_in_kernel=x.gates)
    backward(chunk_gated_delta_rule(q, k, v, g, beta, **kw))
    backward(fused_recurrent_gated_delta_rule(q, k, v, g, beta=beta, **kw))
    if x.gates:  # a beta per value channel
        backward(fused_recurrent_gated_delta_rule(q, k, v, g, beta=x.x(x.HV, x.V, fn=torch.sigmoid), **kw))
    from fla.ops.gated_delta_rule.gate import fused_gdn_gate  # the standalone gate, with and without dt_bias
    backward(fused_gdn_gate(x.x(x.HV), torch.rand(x.HV, requires_grad=True),
                            torch.randn(x.HV, requires_grad=True) if x.gates else None))


def kda(x: Inputs):
    from fla.ops.kda import chunk_kda, fused_recurrent_kda
    from fla.ops.utils.cumsum import chunk_local_cumsum
    from fla.ops.utils.wy_gk import chunk_kkt_gk_fwd

    x.HV = 2 * H if x.gates else H  # grouped values in the full variants
    q, k, v = x.qkv()
    beta = x.x(x.HV, dtype=x.dtype, fn=torch.sigmoid)
    kw = dict(initial_state=x.h0(), output_final_state=x.state, cu_seqlens=x.cu_seqlens,
              use_qk_l2norm_in_kernel=x.gates)
    gate = dict(g=x.log_decay(x.HV, x.K))
    if x.gates:  # the in-kernel gate, with dt_bias in bf16 and without it in float32
        gate = dict(g=x.x(x.HV, x.K), use_gate_in_kernel=True, A_log=torch.rand(x.HV, requires_grad=True))
        if x.dtype == torch.bfloat16:
            gate["dt_bias"] = torch.randn(x.HV * x.K, requires_grad=True)
    backward(chunk_kda(q, k, v, beta=beta, **gate, **kw))
    backward(fused_recurrent_kda(q, k, v, beta=beta, **gate, **kw))
    with torch.no_grad():  # the two-operand, non-strict gated K K^T (DPLR's form)
        G = chunk_local_cumsum(x.log_decay(H, x.K), 64, cu_seqlens=x.cu_seqlens)
        chunk_kkt_gk_fwd(k, G, q=q, cu_seqlens=x.cu_seqlens, strict=False)


def dplr(x: Inputs):
    from fla.ops.generalized_delta_rule import chunk_dplr_delta_rule, fused_recurrent_dplr_delta_rule
    from fla.ops.rwkv7 import chunk_rwkv7

    q, k, v = x.qkv()
    kk, rate = x.x(H, x.K, fn=lambda t: F.normalize(t, dim=-1)), x.x(H, x.K, fn=torch.sigmoid)
    gk = x.log_decay(H, x.K)
    kw = dict(initial_state=x.h0(), output_final_state=x.state, cu_seqlens=x.cu_seqlens)
    backward(chunk_dplr_delta_rule(q, k, v, -kk, kk * rate, gk, **kw))
    backward(fused_recurrent_dplr_delta_rule(q, k, v, -kk, kk * rate, gk, **kw, reverse=x.gates))
    if x.gates:
        backward(chunk_rwkv7(q, gk, k, v, -kk, kk * rate, **kw))


def hgrn(x: Inputs):
    from fla.ops.hgrn import chunk_hgrn, fused_recurrent_hgrn

    D = 2 * x.K if x.gates else x.V  # 256 (several channel blocks) / 80 (a masked block) / 128
    inp = x.x(D)
    g = x.log_decay(D, dtype=x.dtype if x.dtype != torch.float16 else torch.float32)  # a float32 gate in "bare"
    h0 = torch.randn(x.N, D, requires_grad=True) if x.state else None
    kw = dict(initial_state=h0, output_final_state=x.state, cu_seqlens=x.cu_seqlens)
    backward(chunk_hgrn(inp, g, **kw))
    backward(fused_recurrent_hgrn(inp, g, **kw))


def attn(x: Inputs):
    from fla.ops.attn import parallel_attn

    hkv = 1 if x.gates else H  # grouped queries, a forget gate and a window in the full variants
    q = x.x(H, x.K)
    k, v = x.x(hkv, x.K), x.x(hkv, x.K)
    extra = dict(g=x.log_decay(H, dtype=x.dtype), window_size=64,
                 sink_bias=torch.randn(H, requires_grad=True)) if x.gates else {}  # an attention sink too
    backward(parallel_attn(q, k, v, cu_seqlens=x.cu_seqlens, **extra))
    # the query-offset kernels (context parallelism): about the last half of every sequence's keys get queries
    from fla.ops.attn.parallel import parallel_attn_q_offset
    cu_k = x.cu_seqlens
    cu_q = None if cu_k is None else torch.cat([cu_k[:1], ((cu_k[1:] - cu_k[:-1] + 1) // 2).cumsum(0)]).int()
    Tq = x.T // 2 if cu_q is None else int(cu_q[-1])
    backward(parallel_attn_q_offset(q[:, :Tq], k, v, cu_seqlens=cu_q, cu_seqlens_k=cu_k, **extra))


# ---------------------------------------------------------------------------------------------------------------
# shared blocks, for the flag combinations no op uses (a value gate in chunk_h, a scaled reverse cumsum)


def utils(x: Inputs):
    from fla.ops.utils.chunk_h import chunk_bwd_dh, chunk_fwd_h
    from fla.ops.utils.cumsum import chunk_local_cumsum

    with torch.no_grad():
        q, k, v = x.qkv()
        do = x.x(H, x.V)
        gates = {}
        if x.gates:  # every gate form at once in bf16, scalar and value gates in float32
            gk = chunk_local_cumsum(x.log_decay(H, x.K), 64, reverse=True, scale=0.5, cu_seqlens=x.cu_seqlens)
            gates = dict(gk=gk) if x.dtype == torch.bfloat16 else dict(g=x.log_decay(H))
            gates["gv"] = chunk_local_cumsum(x.log_decay(H, x.V), 64, cu_seqlens=x.cu_seqlens)
        h0 = x.h0()
        h, ht = chunk_fwd_h(k, v, **gates, h0=h0, output_final_state=x.state, cu_seqlens=x.cu_seqlens)
        chunk_bwd_dh(q, do, **gates, h0=h0, dht=torch.ones_like(ht) if ht is not None else None, scale=0.5,
                     cu_seqlens=x.cu_seqlens)
        # the two-kernel WY form (the chunk ops use the fused chunk_kkt_solve; these stay public blocks)
        from fla.ops.utils.wy import chunk_scaled_dot_kkt_fwd, solve_tril
        beta = x.x(H).sigmoid()
        G = chunk_local_cumsum(x.log_decay(H), 64, cu_seqlens=x.cu_seqlens) if x.gates else None
        solve_tril(chunk_scaled_dot_kkt_fwd(k, beta, G, x.cu_seqlens), x.cu_seqlens, output_dtype=k.dtype)


# ---------------------------------------------------------------------------------------------------------------
# fla.modules (the shapes the layers use; dims of a small model)


def modules(x: Inputs):
    import fla.modules as M
    from fla.modules.fused_linear_cross_entropy import fused_linear_cross_entropy

    dt, D = x.dtype, 256
    a, b = x.x(D), x.x(D)
    y, res = M.RMSNorm(D, dtype=dt)(a, b, prenorm=True, residual_in_fp32=x.gates)
    backward((y, res))
    backward(M.RMSNorm(D, dtype=dt, elementwise_affine=x.gates)(a))
    backward(M.FusedRMSNormGated(D, dtype=dt, activation="swish" if x.gates else "sigmoid")(a, b))
    # the mean-centred kernel with bias (LayerNorm, its gated form) and the grouped view (GroupNorm)
    backward(M.LayerNorm(D, bias=x.gates, dtype=dt)(a, b, prenorm=True))
    backward(M.FusedLayerNormGated(D, bias=True, dtype=dt, activation="swish" if x.gates else "sigmoid")(a, b))
    backward(M.GroupNorm(4, D, bias=True, is_rms_norm=x.gates, dtype=dt)(a))
    # the *Linear forms: the backward kernel recomputes y (STORE_Y), gated and not
    lw = torch.randn(64, D, dtype=dt, requires_grad=True)
    backward(M.GroupNormLinear(4, D, bias=True, dtype=dt)(a, lw, None, b, prenorm=True))
    backward(M.FusedRMSNormSwishGateLinear(D, dtype=dt)(a, b, lw) if x.gates
             else M.FusedLayerNormSwishGateLinear(D, dtype=dt)(a, b, lw))
    logits = torch.randn(8, 5000, dtype=dt, requires_grad=True)
    target = torch.randint(0, 5000, (8,))
    options = dict(label_smoothing=0.1, logit_scale=0.5, logit_softcapping=30.0, lse_square_scale=1e-4) if x.gates \
        else {}
    backward(M.FusedCrossEntropyLoss(**options)(logits, target))
    weight = torch.randn(100, D, dtype=dt, requires_grad=True)
    backward(fused_linear_cross_entropy(a.reshape(-1, D), torch.randint(0, 100, (a.shape[0] * a.shape[1],)),
                                        weight))
    conv = M.ShortConvolution(D, 4, bias=x.gates, activation="silu" if x.gates else None).to(dt)
    cache = torch.zeros(x.N, D, 4, dtype=dt) if x.state else None
    backward(conv(a, cache=cache, cu_seqlens=x.cu_seqlens)[0])
    with torch.no_grad():
        conv(a[:, :1].detach(), cache=torch.zeros(x.B, D, 4, dtype=dt))
    q = x.x(4, x.K)
    rope = M.RotaryEmbedding(x.K, interleaved=not x.gates)
    offsets = torch.tensor([3, 5]) if x.cu_seqlens is None else 0
    backward(rope(q, q, seqlen_offset=offsets, cu_seqlens=x.cu_seqlens))
    backward(M.swiglu(a, b))
    backward(M.L2Norm()(a))
    from fla.modules.mlp import powglu_linear
    backward(powglu_linear(a, b, torch.randn(D, D, dtype=dt, requires_grad=True), None))


def activations(x: Inputs):
    """Every code of the elementwise ACT switch, forward and backward; the gated kernels with and without the
    product written back (WRITE_Z, the *_linear weight gradient); row-strided inputs (STRIDED) in the bare variant."""
    import fla.modules.activations as A

    D = 200
    if x.gates:
        a, b = x.x(D), x.x(D)
    else:  # halves of one buffer: the strided addressing
        buf = x.x(2 * D)
        a, b = buf[..., :D], buf[..., D:]
    for fn in (A.sigmoid, A.logsigmoid, A.swish, A.elu_p1, A.sqrelu, A.fast_gelu_impl):
        if x.dtype != torch.float32:  # float32 adds nothing the two half types do not show (fewer compiles)
            backward(fn(a))
    for fn in (A.swiglu, A.sigmoidglu, A.powglu):
        backward(fn(a, b))
    w = torch.randn(64, D, dtype=x.dtype, requires_grad=True)
    for fn in (A.swiglu_linear, A.sigmoidglu_linear, A.powglu_linear):
        backward(fn(a, b, w, None))


def quant_and_kl(x: Inputs):
    """BitLinear's norm + 8-bit quantization (RMS / LayerNorm, bias, residual) and the chunked KL-divergence loss."""
    from fla.modules.fused_bitlinear import FusedBitLinear, layer_norm_linear_quant
    from fla.modules.fused_kl_div import fused_kl_div_loss

    dt, D = x.dtype, 256
    a, b = x.x(D), x.x(D)
    backward(FusedBitLinear(D, 64, bias=x.gates).to(dt)(a))
    norm_w, norm_b = torch.ones(D, dtype=dt, requires_grad=True), torch.zeros(D, dtype=dt, requires_grad=True)
    lin_w = torch.randn(64, D, dtype=dt, requires_grad=True)
    backward(layer_norm_linear_quant(a, norm_w, norm_b, lin_w, None, b, prenorm=True, residual_in_fp32=x.gates))
    h = a.reshape(-1, D)
    teacher_x, teacher_w = h.detach()[:, :128].contiguous(), torch.randn(1000, 128, dtype=dt)
    backward(fused_kl_div_loss(h, teacher_x, torch.randn(1000, D, dtype=dt, requires_grad=True), teacher_w))


# Variant-major: a run cut short by its time budget has compiled every family in bfloat16 first.
_PER_FAMILY = [each_variant(fn) for fn in (simple_gla, gla, retention, linear_attn, delta_rule, gated_delta_rule,
                                           kda, dplr, hgrn, attn, utils, modules,
                                           activations)]
_PER_FAMILY.append(each_variant(quant_and_kl))
CASES = [cases[i] for i in range(len(VARIANTS)) for cases in _PER_FAMILY]
