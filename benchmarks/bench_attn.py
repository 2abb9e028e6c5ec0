"""Softmax attention speed against sequence length, and where linear attention overtakes it.

At a fixed number of tokens per step (batch = tokens / length), causal, for each head dim: forward and
forward+backward time and TFLOP/s of `fla.ops.attn.parallel_attn`, PyTorch SDPA (flash and cuDNN backends where
present) and the chunked linear-attention ops of `fla.ops`; then the crossover length from which each linear op is
faster than parallel_attn (forward+backward), and parallel_attn's ratio to SDPA flash.

    python benchmarks/bench_attn.py                        # GPU: bf16, 16k tokens, T = 1k..16k, D = 64, 128
    python benchmarks/bench_attn.py --tiny                 # CPU: tiny sizes, the torch paths (proves the script runs)

Writes DIR/bench_attn.csv and DIR/bench_attn.png (`--out DIR`, default benchmarks/results/).

Causal FLOPs: forward 2 * B * H * T^2 * D (two matmuls, half the matrix), forward+backward 3.5x that. Linear ops get
no TFLOP/s (a different count); compare their times. On a CPU the numbers say nothing about GPU speed.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from fla.ops.attn import parallel_attn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402

NAME = "bench_attn"
FIELDS = ["D", "T", "B", "method", "fwd_ms", "fwdbwd_ms", "fwd_tflops", "fwdbwd_tflops"]


def sdpa_fn(backend_name: str | None):
    """SDPA on [B, T, H, D] inputs, restricted to one backend (None: PyTorch's choice)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = getattr(SDPBackend, backend_name) if backend_name else None

    def run(q, k, v):
        args = (q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        if backend is None:
            return F.scaled_dot_product_attention(*args, is_causal=True).transpose(1, 2)
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(*args, is_causal=True).transpose(1, 2)
    return run


def linear_ops() -> dict[str, Callable]:
    """The chunked linear-attention ops that import, each as f(q, k, v) -> o with its own gates made up front."""
    ops = {}
    try:
        from fla.ops.gla.chunk import chunk_gla
        ops["chunk_gla"] = lambda q, k, v, gates: chunk_gla(q, k, v, gates["gk"])[0]
    except ImportError as e:
        print(f"chunk_gla unavailable: {e}")
    try:
        from fla.ops.simple_gla import chunk_simple_gla
        ops["chunk_simple_gla"] = lambda q, k, v, gates: chunk_simple_gla(q, k, v, gates["g"])[0]
    except ImportError as e:
        print(f"chunk_simple_gla unavailable: {e}")
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
        ops["chunk_gated_delta_rule"] = lambda q, k, v, gates: chunk_gated_delta_rule(
            q, k, v, gates["g"], gates["beta"], use_qk_l2norm_in_kernel=True)[0]
    except ImportError as e:
        print(f"chunk_gated_delta_rule unavailable: {e}")
    return ops


def measure(fn: Callable[[], torch.Tensor], do: torch.Tensor, leaves: list[torch.Tensor], device: str,
            backward: bool, reps: int) -> float:
    """Median milliseconds of fn() (and its backward)."""
    def step():
        o = fn()
        if backward:
            torch.autograd.backward(o, do)
            for x in leaves:
                x.grad = None

    step()  # autotuning and compilation happen here, outside the timed runs
    if device == "cuda":
        import triton.testing

        return triton.testing.do_bench(step, warmup=25, rep=100, return_mode="median")
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def bench_one(name, fn, inputs, leaves, do, device, reps, flops):
    row = {"method": name}
    try:
        with torch.no_grad():
            row["fwd_ms"] = measure(lambda: fn(*inputs), do, leaves, device, False, reps)
        row["fwdbwd_ms"] = measure(lambda: fn(*inputs), do, leaves, device, True, reps)
    except (RuntimeError, NotImplementedError, ValueError) as e:  # a backend absent for this shape or device
        print(f"  {name}: skipped ({str(e).splitlines()[0][:100]})")
        return None
    if flops:
        row["fwd_tflops"] = flops / row["fwd_ms"] / 1e9
        row["fwdbwd_tflops"] = 3.5 * flops / row["fwdbwd_ms"] / 1e9
    if device == "cuda":
        torch.cuda.empty_cache()
    return row


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    report.add_output_args(parser, NAME, "CPU: 256 tokens, T = 32..256, D = 32, float32, torch paths (the default "
                                         "without a GPU)")
    parser.add_argument("--tokens", type=int, default=None, help="tokens per step (batch = tokens / length)")
    parser.add_argument("--lengths", type=int, nargs="+", default=None)
    parser.add_argument("--dims", type=int, nargs="+", default=None, help="head dims")
    parser.add_argument("--heads", type=int, default=None)
    parser.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--reps", type=int, default=10, help="CPU repetitions (GPU uses triton's do_bench)")
    return parser.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    paths = report.output_paths(args, NAME)

    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    tiny = device == "cpu"
    tokens = args.tokens or (256 if tiny else 16384)
    lengths = args.lengths or ([32, 64, 128, 256] if tiny else [1024, 2048, 4096, 8192, 16384])
    dims = args.dims or ([32] if tiny else [64, 128])
    heads = args.heads or (2 if tiny else 16)
    dtype = getattr(torch, args.dtype or ("float32" if tiny else "bfloat16"))
    print(f"device {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}, {dtype}, {tokens} tokens/step, "
          f"{heads} heads, torch {torch.__version__}")

    methods: dict[str, tuple[Callable, bool]] = {"parallel_attn": (lambda q, k, v, gates: parallel_attn(q, k, v), True)}
    if device == "cuda":
        methods["sdpa_flash"] = (lambda q, k, v, gates, f=sdpa_fn("FLASH_ATTENTION"): f(q, k, v), True)
        methods["sdpa_cudnn"] = (lambda q, k, v, gates, f=sdpa_fn("CUDNN_ATTENTION"): f(q, k, v), True)
    else:
        methods["sdpa"] = (lambda q, k, v, gates, f=sdpa_fn(None): f(q, k, v), True)
    methods.update({name: (fn, False) for name, fn in linear_ops().items()})

    rows = []
    for D in dims:
        for T in lengths:
            B = max(1, tokens // T)
            torch.manual_seed(0)
            q, k, v = (torch.randn(B, T, heads, D, device=device, dtype=dtype).requires_grad_() for _ in range(3))
            do = torch.randn(B, T, heads, D, device=device, dtype=dtype)
            gates = {
                "gk": F.logsigmoid(torch.randn(B, T, heads, D, device=device)).to(dtype).requires_grad_(),
                "g": F.logsigmoid(torch.randn(B, T, heads, device=device)).to(dtype).requires_grad_(),
                "beta": torch.rand(B, T, heads, device=device, dtype=dtype).requires_grad_(),
            }
            flops = 2 * B * heads * T * T * D
            for name, (fn, softmax) in methods.items():
                row = bench_one(name, lambda q, k, v, fn=fn: fn(q, k, v, gates), (q, k, v),
                                [q, k, v, *gates.values()], do, device, args.reps,
                                flops if softmax else None)
                if row is not None:
                    rows.append({"D": D, "T": T, "B": B, **row})
                    print(f"  D={D:4d} T={T:6d} B={B:4d} {name:24s} fwd {row['fwd_ms']:9.3f} ms  "
                          f"fwd+bwd {row['fwdbwd_ms']:9.3f} ms" +
                          (f"  {row['fwd_tflops']:8.3g} / {row['fwdbwd_tflops']:8.3g} TFLOP/s" if softmax else ""))

    print_table(rows, methods)
    print_crossover(rows, dims, lengths, methods)
    where = torch.cuda.get_device_name() if device == "cuda" else "cpu (torch paths)"
    report.save(rows, paths, report.Plot(
        x="T", panels=[("forward+backward ms", ["fwdbwd_ms"])], series=("method",), split="D", logx=True, logy=True,
        title=f"{where}, {str(dtype)[6:]}, {tokens} tokens/step, H = {heads}", xlabel="sequence length T"), FIELDS)
    return rows


def _time(rows, D, T, method, key="fwdbwd_ms"):
    return next((r[key] for r in rows if r["D"] == D and r["T"] == T and r["method"] == method), None)


def print_table(rows, methods) -> None:
    names = [m for m in methods if any(r["method"] == m for r in rows)]
    table = []
    for D, T in sorted({(r["D"], r["T"]) for r in rows}):
        line = {"D": D, "T": T}
        for n in names:
            r = next((r for r in rows if r["D"] == D and r["T"] == T and r["method"] == n), None)
            line[n] = "-" if r is None else report.fmt(r["fwdbwd_ms"]) + (
                f" ({report.fmt(r['fwdbwd_tflops'])})" if "fwdbwd_tflops" in r else "")
        table.append(line)
    report.print_table(table, title="forward+backward ms (TFLOP/s for softmax attention)")


def print_crossover(rows, dims, lengths, methods) -> None:
    def faster(D, t, name):
        a, b = _time(rows, D, t, name), _time(rows, D, t, "parallel_attn")
        return a is not None and b is not None and a < b

    table = []
    for D in dims:
        for name, (_, softmax) in methods.items():
            if softmax:
                continue
            wins = [T for T in lengths if all(faster(D, t, name) for t in lengths if t >= T)]
            table.append({"D": D, "linear op": name,
                          "faster than parallel_attn from": f"T >= {min(wins)}" if wins else "not in the range"})
    report.print_table(table, title="crossover (forward+backward): the shortest length from which the linear op "
                                    "beats parallel_attn at every longer length")
    ref = "sdpa_flash" if any(r["method"] == "sdpa_flash" for r in rows) else "sdpa"
    table = []
    for D in dims:
        line = {"D": D}
        for T in lengths:
            a, b = _time(rows, D, T, "parallel_attn"), _time(rows, D, T, ref)
            line[f"T={T}"] = None if a is None or b is None else a / b
        table.append(line)
    report.print_table(table, title=f"parallel_attn / {ref} forward+backward time (goal: <= 1 at every length)")


if __name__ == "__main__":
    main()
