"""The shared per-key-gate intra-chunk blocks (fla/ops/utils/chunk_gk.py) against autograd of the chunk formula.

With h (state entering each chunk) and dh (gradient of the state leaving it) held fixed, the blocks' outputs are the
gradients of  L = sum_c [ <o_c, do_c> + <h_leave_c, dh_c> ]  where, per chunk, G = cumsum(g) and
    o_t = scale * ((q_t exp(G_t)) h + sum_{s <= t} (sum_k q_tk k_sk exp(G_tk - G_sk)) v_s)
    h_leave = exp(G_L) h + sum_s (k_s exp(G_L - G_s))^T v_s.
The reference builds that loss in float64 and lets autograd differentiate it (no hand-derived gradient in it).
"""
import pytest
import torch
import torch.nn.functional as F

from fla.ops.utils.chunk_gk import chunk_gk_bwd_dqkg, chunk_gk_bwd_dv, chunk_gk_fwd_o
from fla.ops.utils.cumsum import chunk_local_cumsum
from fla.ops.utils.dispatch import use_backend
from fla.ops.utils.index import prepare_chunk_offsets, sequence_spans
from tests.helpers import assert_close, device, poisoned_empty, seed


def reference(q, k, v, g, h, do, dh, scale, cu_seqlens, chunk_size):
    """o and the gradients (q, k, v, raw g) of the loss above, float64 autograd, one chunk at a time."""
    q, k, v, g = (x.double().requires_grad_() for x in (q, k, v, g))
    o = torch.zeros_like(v)
    loss = 0.
    offsets = prepare_chunk_offsets(cu_seqlens, chunk_size).tolist() if cu_seqlens is not None else None
    for i, (b, bos, eos) in enumerate(sequence_spans(cu_seqlens, q.shape[0], q.shape[1])):
        for c, start in enumerate(range(bos, eos, chunk_size)):
            end = min(start + chunk_size, eos)
            c += offsets[i] if offsets is not None else 0
            qc, kc, vc = q[b, start:end], k[b, start:end], v[b, start:end]
            G = g[b, start:end].cumsum(0)
            L = end - start
            causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()[:, :, None, None]
            D = torch.where(causal, (G[:, None] - G[None, :]).clamp(max=0), -torch.inf).exp()
            A = torch.einsum("thk,shk,tshk->hts", qc, kc, D)
            hc = h[b, c].double()
            oc = scale * (torch.einsum("thk,hkv->thv", qc * G.exp(), hc) + torch.einsum("hts,shv->thv", A, vc))
            h_leave = G[-1].exp()[..., None] * hc + torch.einsum("shk,shv->hkv", kc * (G[-1] - G).exp(), vc)
            o[b, start:end] = oc.detach()
            loss = loss + (oc * do[b, start:end].double()).sum() + (h_leave * dh[b, c].double()).sum()
    return (o, *torch.autograd.grad(loss, (q, k, v, g)))


CASES = [
    # (B, T, cu_seqlens, H, K, V, chunk_size, decay)
    (2, 45, None, 1, 48, 40, 16, "logsigmoid"),
    (1, 75, [0, 1, 20, 20, 75], 2, 16, 24, 32, "strong"),
    (1, 70, [0, 64, 70], 1, 32, 16, 64, "very strong"),
    (1, 40, None, 1, 80, 72, 16, "logsigmoid"),  # several K and V blocks in every kernel
]


def decays(shape, kind):
    g = F.logsigmoid(torch.randn(shape))
    if kind == "strong":
        g[..., ::3] = -5 + 0.1 * torch.randn_like(g[..., ::3])
    if kind == "very strong":
        # G reaches ~ -5 * 64 = -320 over a chunk: exp(-G) alone would overflow float32
        g = -5 + 0.5 * torch.randn(shape)
    return g


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("B,T,cu,H,K,V,chunk_size,decay", CASES)
def test_blocks_match_autograd(B, T, cu, H, K, V, chunk_size, decay, backend):
    seed(B, T, cu, H, K, V, chunk_size, decay)
    cu_seqlens = torch.tensor(cu, dtype=torch.int32, device=device()) if cu is not None else None
    NT = triton_cdiv(T, chunk_size) if cu is None else int(prepare_chunk_offsets(cu_seqlens, chunk_size)[-1])
    q, k, v = torch.randn(B, T, H, K), torch.randn(B, T, H, K), torch.randn(B, T, H, V)
    g = decays((B, T, H, K), decay)
    h, dh = torch.randn(B, NT, H, K, V), torch.randn(B, NT, H, K, V)
    do = torch.randn(B, T, H, V)
    q, k, v, g, h, dh, do = (x.to(device()) for x in (q, k, v, g, h, dh, do))  # compiled kernels on a GPU machine
    scale = K ** -0.5
    o_ref, dq_ref, dk_ref, dv_ref, dg_ref = reference(q, k, v, g, h, do, dh, scale, cu_seqlens, chunk_size)
    with use_backend(backend), poisoned_empty():
        gc = chunk_local_cumsum(g, chunk_size, cu_seqlens=cu_seqlens)
        o = chunk_gk_fwd_o(q, k, v, gc, h, scale, cu_seqlens, chunk_size)
        dv = chunk_gk_bwd_dv(q, k, gc, do, dh, scale, cu_seqlens, chunk_size)
        dq, dk, dg = chunk_gk_bwd_dqkg(q, k, v, gc, h, do, dh, scale, cu_seqlens, chunk_size, g_dtype=g.dtype)
    for name, got, want in [("o", o, o_ref), ("dq", dq, dq_ref), ("dk", dk, dk_ref), ("dv", dv, dv_ref)]:
        assert_close(name, got, want, 1e-5)
    # dg is a reverse sum of q dq - k dk, terms that largely cancel under very strong decays: float32 keeps ~5e-5
    # there (the torch twin, in plain float32 einsums, shows the same)
    assert_close("dg", dg, dg_ref, 2e-4 if decay == "very strong" else 1e-5)


def triton_cdiv(a, b):
    return -(-a // b)


# The interpreter runs kernels as Python and so accepts code the compiler rejects (mismatched types across branches,
# dot operand dtypes, block shapes). Compiling for an H100 target needs no GPU: do it in a fresh process (this one has
# TRITON_INTERPRET set, which turns kernels into interpreted functions).
COMPILE_SCRIPT = r'''
import os, sys
os.environ.pop("TRITON_INTERPRET", None)
import triton
from triton.backends.compiler import GPUTarget
from fla.ops.utils import chunk_gk as m

def compile_kernel(kernel, types, constexprs):
    while not isinstance(kernel, triton.runtime.jit.JITFunction):
        kernel = kernel.fn
    signature = {name: "constexpr" if name in constexprs else types[name] for name in kernel.arg_names}
    src = triton.compiler.ASTSource(kernel, signature, constexprs)
    triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "num_stages": 2})
    print("compiled", kernel.__name__, constexprs)

dt, varlen = sys.argv[1], sys.argv[2] == "varlen"
P = "*" + dt
index = dict(cu_seqlens="*i32", chunk_indices="*i32", scale="fp32", T="i32")
shape = dict(H=2, K=96, V=80, BT=64, IS_VARLEN=varlen, PREC="ieee" if dt == "fp32" else "tf32")
compile_kernel(m.chunk_gk_fwd_o_kernel, dict(q=P, k=P, v=P, g="*fp32", h=P, o=P, **index),
               dict(shape, BC=16, BK=32, BV=64))
compile_kernel(m.chunk_gk_bwd_dv_kernel, dict(q=P, k=P, g="*fp32", do=P, dh=P, dv=P, **index),
               dict(shape, BC=16, BK=32, BV=64))
compile_kernel(m.chunk_gk_bwd_dA_kernel, dict(v=P, do=P, dA="*fp32", **index),
               {n: x for n, x in dict(shape, BV=64).items() if n != "K"})
compile_kernel(m.chunk_gk_bwd_dqk_intra_kernel, dict(q=P, k=P, g="*fp32", dA="*fp32", dq="*fp32", dk="*fp32", **index),
               {n: x for n, x in dict(shape, BC=16, BK=32).items() if n != "V"})
compile_kernel(m.chunk_gk_bwd_dqkg_inter_kernel, dict(q=P, k=P, v=P, g="*fp32", h=P, do=P, dh=P, dq_intra="*fp32",
               dk_intra="*fp32", dq=P, dk=P, dg="*fp32", **index), dict(shape, BK=64, BV=64))
'''


# One case (a compile costs ~10 s per kernel on this box); the varlen branch differs only in index arithmetic.
@pytest.mark.parametrize("dtype,layout", [("bf16", "fixed")])
def test_kernels_compile_for_h100(dtype, layout):
    import os
    import subprocess
    import sys

    pytest.importorskip("triton.backends.nvidia.compiler")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, "-c", COMPILE_SCRIPT, dtype, layout], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("compiled") == 5
