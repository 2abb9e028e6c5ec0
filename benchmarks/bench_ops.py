"""Speed of the chunked ops against sequence length at a fixed number of tokens per step, next to PyTorch SDPA.

    python benchmarks/bench_ops.py                                  # GPU: bf16, B*T = 65536, H = 16, K = V = 128
    python benchmarks/bench_ops.py --ops chunk_gla chunk_simple_gla --T 4096 16384 --out ours.csv
    python benchmarks/bench_ops.py --tiny                           # CPU: tiny sizes, torch paths (proves it runs)

For each op and length T (batch B = tokens / T): forward and forward+backward time (median; on a GPU triton's
do_bench) and TFLOP/s, printed as tables and written as CSV (`--out`, default bench_ops.csv).

FLOP counts (per batch row and head; K, V head dims):
- softmax attention (sdpa, parallel_attn), causal: forward T^2 (K + V) (two matmuls, half the matrix each),
  forward+backward 3.5x that;
- chunked linear ops, nominal: forward T (C (K + V) + 4 K V) with chunk size C = 64 (causal half of the two
  intra-chunk matmuls, plus the state read q h and the state update k^T v), forward+backward 3x that. The delta rules
  do more work than this nominal count; their TFLOP/s compare lengths and libraries, not ops.

The ops are imported lazily by module path, so the same registry runs against the peer library (`peer_ops.py` runs
this file in a process whose `fla` is fla-core). An op that does not import, or fails at a size, is skipped with a note.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import importlib
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

CHUNK = 64


@dataclass
class Inputs:
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    g: torch.Tensor    # [B, T, H] log decay
    gk: torch.Tensor   # [B, T, H, K] log decay per key channel
    beta: torch.Tensor  # [B, T, H] in (0, 1)

    def leaves(self) -> list[torch.Tensor]:
        return [self.q, self.k, self.v, self.g, self.gk, self.beta]


def _sdpa(x: Inputs) -> torch.Tensor:
    q, k, v = (t.transpose(1, 2) for t in (x.q, x.k, x.v))
    return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)


def _first(out):
    return out[0] if isinstance(out, tuple) else out


# name -> (module, function, call(fn, inputs) -> o, softmax?)  (module None: plain PyTorch)
OPS: dict[str, tuple[str | None, str | None, Callable, bool]] = {
    "chunk_simple_gla": ("fla.ops.simple_gla", "chunk_simple_gla", lambda f, x: f(x.q, x.k, x.v, g=x.g)[0], False),
    "chunk_gla": ("fla.ops.gla", "chunk_gla", lambda f, x: f(x.q, x.k, x.v, x.gk)[0], False),
    "chunk_retention": ("fla.ops.retention", "chunk_retention", lambda f, x: f(x.q, x.k, x.v)[0], False),
    "chunk_linear_attn": ("fla.ops.linear_attn", "chunk_linear_attn",
                          lambda f, x: f(x.q, x.k, x.v, normalize=False)[0], False),
    "chunk_delta_rule": ("fla.ops.delta_rule", "chunk_delta_rule",
                         lambda f, x: f(x.q, x.k, x.v, x.beta, use_qk_l2norm_in_kernel=True)[0], False),
    "chunk_gated_delta_rule": ("fla.ops.gated_delta_rule", "chunk_gated_delta_rule",
                               lambda f, x: f(x.q, x.k, x.v, x.g, x.beta, use_qk_l2norm_in_kernel=True)[0], False),
    "parallel_attn": ("fla.ops.attn", "parallel_attn", lambda f, x: _first(f(x.q, x.k, x.v)), True),
    "sdpa": (None, None, lambda f, x: _sdpa(x), True),
}


def load_op(name: str) -> Callable[[Inputs], torch.Tensor]:
    """The op as f(inputs) -> o; raises ImportError/AttributeError if this `fla` lacks it."""
    module, attr, call, _ = OPS[name]
    fn = getattr(importlib.import_module(module), attr) if module else None
    return lambda x: call(fn, x)


def flops(name: str, B: int, T: int, H: int, K: int, V: int) -> tuple[float, float]:
    """(forward, forward+backward) FLOPs, see the module docstring."""
    if OPS[name][3]:
        fwd = B * H * T * T * (K + V)
        return fwd, 3.5 * fwd
    fwd = B * H * T * (CHUNK * (K + V) + 4 * K * V)
    return fwd, 3.0 * fwd


def make_inputs(B, T, H, K, V, dtype, device) -> Inputs:
    torch.manual_seed(0)

    def leaf(t):
        return t.to(dtype).requires_grad_()

    return Inputs(
        q=leaf(torch.randn(B, T, H, K, device=device)),
        k=leaf(torch.randn(B, T, H, K, device=device)),
        v=leaf(torch.randn(B, T, H, V, device=device)),
        g=leaf(F.logsigmoid(torch.randn(B, T, H, device=device))),
        gk=leaf(F.logsigmoid(torch.randn(B, T, H, K, device=device)) / 16),
        beta=leaf(torch.rand(B, T, H, device=device)),
    )


def milliseconds(step: Callable[[], None], device: str, reps: int) -> float:
    if device == "cuda":
        import triton.testing

        return triton.testing.do_bench(step, warmup=25, rep=100, return_mode="median")
    step()  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def bench_op(op: Callable[[Inputs], torch.Tensor], x: Inputs, device: str, reps: int) -> tuple[float, float]:
    do = torch.randn_like(x.v)

    def forward():
        with torch.no_grad():
            op(x)

    def forward_backward():
        torch.autograd.backward(op(x), do)
        for t in x.leaves():
            t.grad = None

    return milliseconds(forward, device, reps), milliseconds(forward_backward, device, reps)


def torch_backend_on_cpu(device: str):
    """Our `fla` runs its PyTorch twins on a CPU (the interpreter would take minutes); a peer `fla` has no switch."""
    if device != "cpu":
        return contextlib.nullcontext()
    try:
        from fla.ops.utils.dispatch import use_backend
    except ImportError:
        return contextlib.nullcontext()
    return use_backend("torch")


def run(ops: list[str], lengths: list[int], tokens: int, H: int, K: int, V: int, dtype: torch.dtype, device: str,
        reps: int) -> list[dict]:
    rows = []
    loaded = {}
    for name in ops:
        try:
            loaded[name] = load_op(name)
        except (ImportError, AttributeError) as e:
            print(f"skip {name}: not available in this fla ({e})")
    for T in lengths:
        B = max(1, tokens // T)
        x = make_inputs(B, T, H, K, V, dtype, device)
        for name, op in loaded.items():
            row = dict(op=name, T=T, B=B, H=H, K=K, V=V, dtype=str(dtype).replace("torch.", ""), device=device)
            try:
                with torch_backend_on_cpu(device):
                    fwd_ms, fwdbwd_ms = bench_op(op, x, device, reps)
            except (RuntimeError, ValueError, NotImplementedError) as e:  # out of memory, unsupported shape, ...
                print(f"skip {name} at T={T}: {str(e).splitlines()[0][:120]}")
                if device == "cuda":
                    torch.cuda.empty_cache()
                continue
            fwd_flops, fwdbwd_flops = flops(name, B, T, H, K, V)
            row.update(fwd_ms=fwd_ms, fwdbwd_ms=fwdbwd_ms, fwd_tflops=fwd_flops / fwd_ms / 1e9,
                       fwdbwd_tflops=fwdbwd_flops / fwdbwd_ms / 1e9)
            rows.append(row)
            print(f"  T={T:6d} B={B:4d} {name:24s} fwd {fwd_ms:9.3f} ms ({row['fwd_tflops']:7.3g} TFLOP/s)  "
                  f"fwd+bwd {fwdbwd_ms:9.3f} ms ({row['fwdbwd_tflops']:7.3g} TFLOP/s)", flush=True)
        del x
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


FIELDS = ["op", "T", "B", "H", "K", "V", "dtype", "device", "fwd_ms", "fwdbwd_ms", "fwd_tflops", "fwdbwd_tflops"]


def write_csv(rows: list[dict], path: str) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {path}")


def print_tables(rows: list[dict]) -> None:
    names = list(dict.fromkeys(r["op"] for r in rows))
    lengths = sorted({r["T"] for r in rows})
    for key, title in (("fwd", "forward"), ("fwdbwd", "forward+backward")):
        print(f"\n{title}: ms (TFLOP/s)")
        print(f"{'T':>6s} " + " ".join(f"{n:>24s}" for n in names))
        for T in lengths:
            cells = []
            for n in names:
                r = next((r for r in rows if r["op"] == n and r["T"] == T), None)
                cells.append(f"{'-':>24s}" if r is None else
                             f"{r[key + '_ms']:>12.3f} ({r[key + '_tflops']:>8.3g})")
            print(f"{T:6d} " + " ".join(cells))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", nargs="+", default=list(OPS), choices=list(OPS), metavar="OP",
                        help=f"ops to time (default all: {', '.join(OPS)})")
    parser.add_argument("--T", nargs="+", type=int, default=None, help="sequence lengths (default 1k..16k)")
    parser.add_argument("--tokens", type=int, default=None, help="tokens per step B*T (default 65536)")
    parser.add_argument("--heads", type=int, default=None, help="heads H (default 16)")
    parser.add_argument("--dim", type=int, default=None, help="head dim K = V (default 128)")
    parser.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--reps", type=int, default=3, help="CPU repetitions (a GPU uses triton's do_bench)")
    parser.add_argument("--tiny", action="store_true", help="CPU-sized run (the default without a GPU)")
    parser.add_argument("--out", default="bench_ops.csv", help="CSV path")
    return parser.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    tiny = device == "cpu"
    lengths = args.T or ([64, 128] if tiny else [1024, 2048, 4096, 8192, 16384])
    tokens = args.tokens or (256 if tiny else 65536)
    H = args.heads or (2 if tiny else 16)
    D = args.dim or (32 if tiny else 128)
    dtype = getattr(torch, args.dtype or ("float32" if tiny else "bfloat16"))
    import fla

    where = torch.cuda.get_device_name() if device == "cuda" else "cpu (torch paths)"
    print(f"{where}, {dtype}, B*T = {tokens}, H = {H}, K = V = {D}, torch {torch.__version__}, "
          f"fla from {fla.__file__}")
    rows = run(args.ops, lengths, tokens, H, D, D, dtype, device, args.reps)
    print_tables(rows)
    write_csv(rows, args.out)
    return rows


if __name__ == "__main__":
    main()
