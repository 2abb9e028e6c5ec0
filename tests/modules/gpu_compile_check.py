"""Compile every fla.modules Triton kernel for an H100 (sm_90) on a machine without a GPU.

The interpreter runs kernels as NumPy and forgives what the compiler rejects (loop-carried types, constexpr misuse,
pointer types), so the CPU tests alone don't prove the kernels build. Here a stand-in driver reports a CUDA target
and every launch becomes a warm-up (compile to cubin, no launch), then the public modules run forward and backward
through the Triton launchers on CPU tensors (their outputs are meaningless). Exit 0: all compiled; 77: this triton
lacks the internals used here (skip); anything else: a kernel failed to compile.

    python -m tests.modules.gpu_compile_check
"""
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)  # kernels must be real JITFunctions, so unset before fla is imported

import torch  # noqa: E402

try:
    import triton.runtime.jit as jit
    from triton.backends.compiler import GPUTarget
    from triton.runtime.driver import driver
except ImportError as e:
    print(f"triton internals changed: {e}")
    sys.exit(77)


class CompileOnlyDriver:
    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        return torch.device("cpu")

    def get_benchmarker(self):
        # autotuners "time" every config: each one is compiled (so checked), and all tie
        def bench(fn, quantiles=None, **kwargs):
            fn()
            return [1.0] * len(quantiles) if quantiles else 1.0
        return bench


def main() -> None:
    if not hasattr(driver, "set_active") or not hasattr(jit.JITFunction, "run"):
        print("triton internals changed: no driver.set_active / JITFunction.run")
        sys.exit(77)
    driver.set_active(CompileOnlyDriver())
    compiled = set()
    run = jit.JITFunction.run

    def compile_only(self, *args, grid, warmup, **kwargs):
        compiled.add(self.fn.__name__)
        return run(self, *args, grid=grid, warmup=True, **kwargs)

    jit.JITFunction.run = compile_only
    import fla.modules as M

    os.environ["TRITON_INTERPRET"] = "1"  # now route the dispatch to the Triton launchers (kernels stay compiled)
    dt = torch.bfloat16
    x = torch.randn(64, 256, dtype=dt, requires_grad=True)
    r = torch.randn(64, 256, dtype=dt, requires_grad=True)
    y, res = M.RMSNorm(256, dtype=dt)(x, r, prenorm=True, residual_in_fp32=True)
    (y.float().sum() + res.sum()).backward()
    M.RMSNorm(256, dtype=dt)(x).float().sum().backward()
    M.FusedRMSNormGated(256, dtype=dt)(x, r).float().sum().backward()
    M.FusedRMSNormGated(256, activation="sigmoid", elementwise_affine=False)(x, r).float().sum().backward()
    logits = torch.randn(8, 5000, dtype=dt, requires_grad=True)
    target = torch.randint(0, 5000, (8,))
    M.FusedCrossEntropyLoss(label_smoothing=0.1)(logits, target).backward()
    M.fused_cross_entropy(logits.detach(), target)
    weight = torch.randn(100, 256, dtype=dt, requires_grad=True)
    M.fused_linear_cross_entropy(x, torch.randint(0, 100, (64,)), weight).backward()
    conv = M.ShortConvolution(256, 4, bias=True).to(dt)
    xc = torch.randn(2, 40, 256, dtype=dt, requires_grad=True)
    conv(xc, cache=torch.zeros(2, 256, 4, dtype=dt))[0].float().sum().backward()
    conv(xc.view(1, 80, 256), cu_seqlens=torch.tensor([0, 30, 80], dtype=torch.int32))[0].float().sum().backward()
    cache = torch.zeros(2, 256, 4, dtype=dt)
    conv(xc.view(1, 80, 256), cache=cache, cu_seqlens=torch.tensor([0, 30, 80]))[0].float().sum().backward()
    M.ShortConvolution(256, 4, activation=None).to(dt)(xc)[0].float().sum().backward()
    with torch.no_grad():
        conv(xc[:, :1], cache=torch.zeros(2, 256, 4, dtype=dt))
    q = torch.randn(2, 40, 4, 128, dtype=dt, requires_grad=True)
    for rope in (M.RotaryEmbedding(128), M.RotaryEmbedding(64, interleaved=True)):
        for offset in (torch.tensor([3, 5]), 7):
            a, b = rope(q, q, seqlen_offset=offset)
            (a.float().sum() + b.float().sum()).backward()
    M.swiglu(x, r).float().sum().backward()
    M.L2Norm()(x).float().sum().backward()
    print("compiled for sm_90:", ", ".join(sorted(compiled)))


if __name__ == "__main__":
    main()
