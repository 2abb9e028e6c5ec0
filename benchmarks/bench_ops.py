"""Speed of the chunked ops against sequence length at a fixed number of tokens per step, next to PyTorch SDPA.

    python benchmarks/bench_ops.py                                  # GPU: bf16, B*T = 65536, H = 16, K = V = 128
    python benchmarks/bench_ops.py --ops chunk_gla chunk_kda --T 4096 16384 --out DIR
    python benchmarks/bench_ops.py --tiny                           # CPU: tiny sizes, torch paths (proves it runs)

For each op and length T (batch B = tokens / T): forward and forward+backward time (median; on a GPU triton's
do_bench) and TFLOP/s, printed as tables, written to DIR/bench_ops.csv (after every length, so a run cut short keeps
what it measured) and plotted to DIR/bench_ops.png (DIR: `--out`, default benchmarks/results/).

Ops (`--ops`; the peer library's names and argument order, fla-core 0.6.0): chunk_simple_gla, chunk_gla,
chunk_retention, chunk_linear_attn, chunk_delta_rule, chunk_gated_delta_rule, chunk_kda, fused_recurrent_kda
(forward only where the library has no backward), chunk_dplr_delta_rule, chunk_rwkv7, chunk_gated_delta_product
(2 Householder steps per token), chunk_hgrn (x, g of width H*K), parallel_attn, and sdpa (PyTorch). Inputs are drawn
the way the field draws them: logsigmoid gates (per key channel divided by 16), sigmoid-range betas, L2-normalized
keys in the kernel, a = -k_hat, b = k_hat * (0..1) for the low-rank terms.

FLOP counts (per batch row and head; K, V head dims):
- softmax attention (sdpa, parallel_attn), causal: forward T^2 (K + V) (two matmuls, half the matrix each),
  forward+backward 3.5x that;
- chunked linear ops, nominal: forward T (C (K + V) + 4 K V) with chunk size C = 64 (causal half of the two
  intra-chunk matmuls, plus the state read q h and the state update k^T v), forward+backward 3x that; gated
  DeltaProduct counts its 2 steps per token. The delta rules do more work than this nominal count; their TFLOP/s
  compare lengths and libraries, not ops. chunk_hgrn is an elementwise scan: no TFLOP/s.

The ops are imported lazily by module path, so the same registry runs against the peer library (`peer_ops.py` runs
this file in a process whose `fla` is fla-core). An op that does not import is skipped with a note; one that fails
is skipped with its error's first line (at that length only when it ran out of memory, else at every length).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))  # report.py; never the repository root (a peer `fla`)
import report  # noqa: E402

NAME = "bench_ops"
CHUNK = 64
HOUSEHOLDER = 2  # gated DeltaProduct: Householder steps per token


@dataclass
class Inputs:
    """The leaves of one size, made on first use (an op needs only its own)."""
    B: int
    T: int
    H: int
    K: int
    V: int
    dtype: torch.dtype
    device: str
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    def __getattr__(self, name: str) -> torch.Tensor:
        if name.startswith("_") or name not in MAKERS:
            raise AttributeError(name)
        if name not in self.tensors:
            torch.manual_seed(len(self.tensors))
            self.tensors[name] = MAKERS[name](self).to(self.dtype).requires_grad_()
        return self.tensors[name]

    def leaves(self) -> list[torch.Tensor]:
        return list(self.tensors.values())


def _randn(x: Inputs, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, device=x.device)


def _unit(x: Inputs, T: int) -> torch.Tensor:
    return F.normalize(_randn(x, x.B, T, x.H, x.K), dim=-1)


# name -> how the leaf is drawn, [B, T, H, *] unless said
MAKERS: dict[str, Callable[[Inputs], torch.Tensor]] = {
    "q": lambda x: _randn(x, x.B, x.T, x.H, x.K),
    "k": lambda x: _randn(x, x.B, x.T, x.H, x.K),
    "v": lambda x: _randn(x, x.B, x.T, x.H, x.V),
    "g": lambda x: F.logsigmoid(_randn(x, x.B, x.T, x.H)),                 # log decay per head
    "gk": lambda x: F.logsigmoid(_randn(x, x.B, x.T, x.H, x.K)) / 16,      # log decay per key channel
    "beta": lambda x: torch.rand(x.B, x.T, x.H, device=x.device),
    "a": lambda x: -_unit(x, x.T),                                          # dplr / rwkv7 low-rank terms
    "b": lambda x: _unit(x, x.T) * torch.rand(x.B, x.T, x.H, 1, device=x.device),
    "k_hh": lambda x: _randn(x, x.B, x.T * HOUSEHOLDER, x.H, x.K),          # DeltaProduct: [B, T*n, H, *]
    "v_hh": lambda x: _randn(x, x.B, x.T * HOUSEHOLDER, x.H, x.V),
    "beta_hh": lambda x: torch.rand(x.B, x.T * HOUSEHOLDER, x.H, device=x.device),
    "x_hgrn": lambda x: _randn(x, x.B, x.T, x.H * x.K),                     # hgrn: [B, T, H*K]
    "g_hgrn": lambda x: F.logsigmoid(_randn(x, x.B, x.T, x.H * x.K)),
}


def _sdpa(x: Inputs) -> torch.Tensor:
    q, k, v = (t.transpose(1, 2) for t in (x.q, x.k, x.v))
    return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)


def _first(out):
    return out[0] if isinstance(out, tuple) else out


@dataclass(frozen=True)
class Op:
    module: str | None    # None: plain PyTorch
    attr: str | None
    call: Callable        # (fn, inputs) -> o
    flops: str = "linear"  # "softmax", "linear" (nominal), "product" (linear x HOUSEHOLDER), "none"


OPS: dict[str, Op] = {
    "chunk_simple_gla": Op("fla.ops.simple_gla", "chunk_simple_gla", lambda f, x: f(x.q, x.k, x.v, g=x.g)),
    "chunk_gla": Op("fla.ops.gla", "chunk_gla", lambda f, x: f(x.q, x.k, x.v, x.gk)),
    "chunk_retention": Op("fla.ops.retention", "chunk_retention", lambda f, x: f(x.q, x.k, x.v)),
    "chunk_linear_attn": Op("fla.ops.linear_attn", "chunk_linear_attn",
                            lambda f, x: f(x.q, x.k, x.v, normalize=False)),
    "chunk_delta_rule": Op("fla.ops.delta_rule", "chunk_delta_rule",
                           lambda f, x: f(x.q, x.k, x.v, x.beta, use_qk_l2norm_in_kernel=True)),
    "chunk_gated_delta_rule": Op("fla.ops.gated_delta_rule", "chunk_gated_delta_rule",
                                 lambda f, x: f(x.q, x.k, x.v, x.g, x.beta, use_qk_l2norm_in_kernel=True)),
    "chunk_kda": Op("fla.ops.kda", "chunk_kda",
                    lambda f, x: f(x.q, x.k, x.v, x.gk, x.beta, use_qk_l2norm_in_kernel=True)),
    "fused_recurrent_kda": Op("fla.ops.kda", "fused_recurrent_kda",  # keywords: the peer has A_log before scale
                              lambda f, x: f(x.q, x.k, x.v, x.gk, x.beta, use_qk_l2norm_in_kernel=True)),
    "chunk_dplr_delta_rule": Op("fla.ops.generalized_delta_rule", "chunk_dplr_delta_rule",
                                lambda f, x: f(x.q, x.k, x.v, x.a, x.b, x.gk)),
    "chunk_rwkv7": Op("fla.ops.rwkv7", "chunk_rwkv7", lambda f, x: f(x.q, x.gk, x.k, x.v, x.a, x.b)),
    "chunk_gated_delta_product": Op("fla.ops.gated_delta_product", "chunk_gated_delta_product",
                                    lambda f, x: f(x.q, x.k_hh, x.v_hh, x.g, x.beta_hh, HOUSEHOLDER,
                                                   use_qk_l2norm_in_kernel=True), flops="product"),
    "chunk_hgrn": Op("fla.ops.hgrn", "chunk_hgrn", lambda f, x: f(x.x_hgrn, x.g_hgrn), flops="none"),
    "parallel_attn": Op("fla.ops.attn", "parallel_attn", lambda f, x: f(x.q, x.k, x.v), flops="softmax"),
    "sdpa": Op(None, None, lambda f, x: _sdpa(x), flops="softmax"),
}


def load_op(name: str) -> Callable[[Inputs], torch.Tensor]:
    """The op as f(inputs) -> o; raises ImportError/AttributeError if this `fla` lacks it."""
    op = OPS[name]
    fn = getattr(importlib.import_module(op.module), op.attr) if op.module else None
    return lambda x: _first(op.call(fn, x))


def flops(name: str, B: int, T: int, H: int, K: int, V: int) -> tuple[float, float] | None:
    """(forward, forward+backward) FLOPs, see the module docstring; None where no count applies."""
    kind = OPS[name].flops
    if kind == "softmax":
        fwd = B * H * T * T * (K + V)
        return fwd, 3.5 * fwd
    if kind == "none":
        return None
    fwd = B * H * T * (CHUNK * (K + V) + 4 * K * V) * (HOUSEHOLDER if kind == "product" else 1)
    return fwd, 3.0 * fwd


def make_inputs(B, T, H, K, V, dtype, device) -> Inputs:
    return Inputs(B, T, H, K, V, dtype, device)


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


class NoBackward(Exception):
    """The op's output has no gradient in this library (an inference-only kernel)."""


def bench_op(op: Callable[[Inputs], torch.Tensor], x: Inputs, device: str, reps: int) -> tuple[float, float | None]:
    """(forward ms, forward+backward ms or None when the op has no backward here)."""
    def forward():
        with torch.no_grad():
            op(x)

    fwd_ms = milliseconds(forward, device, reps)
    o = op(x)
    if not o.requires_grad:
        return fwd_ms, None
    do = torch.randn_like(o)
    del o

    def forward_backward():
        torch.autograd.backward(op(x), do)
        for t in x.leaves():
            t.grad = None

    return fwd_ms, milliseconds(forward_backward, device, reps)


def torch_backend_on_cpu(device: str):
    """Our `fla` runs its PyTorch twins on a CPU (the interpreter would take minutes); a peer `fla` has no switch."""
    if device != "cpu":
        return contextlib.nullcontext()
    try:
        from fla.ops.utils.dispatch import use_backend
    except ImportError:
        return contextlib.nullcontext()
    return use_backend("torch")


def interpreter_takes_first_config() -> None:
    """Under the Triton interpreter (a peer `fla` on a CPU) autotuners cannot benchmark (no driver): use each one's
    first config, as our own `fla.ops.utils.dispatch.autotune` does there."""
    from triton.runtime.autotuner import Autotuner

    prune = Autotuner.prune_configs
    Autotuner.prune_configs = lambda self, kwargs: prune(self, kwargs)[:1]


def _reason(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:160] if lines else ''}".rstrip(": ")


def _out_of_memory(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def run(ops: list[str], lengths: list[int], tokens: int, H: int, K: int, V: int, dtype: torch.dtype, device: str,
        reps: int, on_length: Callable[[list[dict]], None] | None = None,
        skipped: dict[str, str] | None = None) -> list[dict]:
    """Rows of the ops measured; `skipped` (if given) receives op -> why it was not (or not at every length)."""
    rows = []
    loaded = {}
    skipped = {} if skipped is None else skipped

    def skip(name: str, why: str, at: str = "") -> None:
        print(f"skip {name}{at}: {why}")
        skipped[name] = why + at

    for name in ops:
        try:
            loaded[name] = load_op(name)
        except (ImportError, AttributeError) as e:
            skip(name, f"not in this fla ({_reason(e)})")
    for T in lengths:
        B = max(1, tokens // T)
        x = make_inputs(B, T, H, K, V, dtype, device)
        for name, op in list(loaded.items()):
            row = dict(op=name, T=T, B=B, H=H, K=K, V=V, dtype=str(dtype).replace("torch.", ""), device=device,
                       note="")
            try:
                with torch_backend_on_cpu(device):
                    fwd_ms, fwdbwd_ms = bench_op(op, x, device, reps)
            except Exception as e:  # noqa: BLE001  out of memory, unsupported dtype or shape, a kernel that fails
                if device == "cuda":
                    torch.cuda.empty_cache()
                if _out_of_memory(e):
                    skip(name, "out of memory", f" at T={T}")
                else:  # the same failure at every length: say it once
                    skip(name, _reason(e))
                    del loaded[name]
                continue
            finally:
                for t in x.leaves():
                    t.grad = None
            counts = flops(name, B, T, H, K, V)
            row.update(fwd_ms=fwd_ms, fwdbwd_ms=fwdbwd_ms)
            if counts:
                row.update(fwd_tflops=counts[0] / fwd_ms / 1e9,
                           fwdbwd_tflops=None if fwdbwd_ms is None else counts[1] / fwdbwd_ms / 1e9)
            if fwdbwd_ms is None:
                row["note"] = "forward only: no backward in this library"
            rows.append(row)
            print(f"  T={T:6d} B={B:4d} {name:26s} fwd {fwd_ms:9.3f} ms  fwd+bwd "
                  + ("        -   " if fwdbwd_ms is None else f"{fwdbwd_ms:9.3f} ms"), flush=True)
        del x
        if device == "cuda":
            torch.cuda.empty_cache()
        if on_length:
            on_length(rows)
    return rows


FIELDS = ["op", "T", "B", "H", "K", "V", "dtype", "device", "fwd_ms", "fwdbwd_ms", "fwd_tflops", "fwdbwd_tflops",
          "note"]


def print_tables(rows: list[dict]) -> None:
    """One table per direction: a row per length, a column per op, 'ms (TFLOP/s)' in each cell."""
    names = list(dict.fromkeys(r["op"] for r in rows))
    for key, title in (("fwd", "forward"), ("fwdbwd", "forward+backward")):
        table = []
        for T in sorted({r["T"] for r in rows}):
            line = {"T": T}
            for n in names:
                r = next((r for r in rows if r["op"] == n and r["T"] == T), None)
                ms = None if r is None else r.get(key + "_ms")
                tf = None if r is None else r.get(key + "_tflops")
                line[n] = "-" if ms is None else report.fmt(ms) + ("" if tf is None else f" ({report.fmt(tf)})")
            table.append(line)
        report.print_table(table, title=f"{title}: ms (TFLOP/s)")


def plot_spec(title: str) -> report.Plot:
    return report.Plot(x="T", panels=[("forward ms", ["fwd_ms"]), ("forward+backward ms", ["fwdbwd_ms"])],
                       series=("op",), title=title, xlabel="sequence length T (B = tokens / T)", logx=True,
                       logy=True)


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
    report.add_output_args(parser, NAME, "CPU: B*T = 256, H = 2, K = V = 32, T = 64, 128, float32 (the default "
                                         "without a GPU)")
    parser.add_argument("--name", default=NAME, help=argparse.SUPPRESS)  # peer_ops: its child writes peer_ops.*
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
    paths = report.output_paths(args, args.name)
    interpreted = device == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"
    if interpreted:
        interpreter_takes_first_config()
    import fla

    try:  # our fla has PyTorch paths (and this module); a peer's may lack fla.ops.utils altogether
        ours = importlib.util.find_spec("fla.ops.utils.dispatch") is not None
    except ImportError:
        ours = False
    if device == "cuda":
        where = torch.cuda.get_device_name()
    elif ours:
        where = "cpu (our PyTorch paths)"
    else:
        where = "cpu (this fla's Triton kernels in the interpreter)" if interpreted else "cpu"
    print(f"{where}, {dtype}, B*T = {tokens}, H = {H}, K = V = {D}, torch {torch.__version__}, "
          f"fla from {fla.__file__}")
    if device == "cpu" and not ours and not interpreted:
        print("note: this fla has no PyTorch paths and TRITON_INTERPRET is not 1: its Triton ops cannot run on a CPU")
    title = f"{args.name}: {where}, {str(dtype)[6:]}, B*T = {tokens}, H = {H}, K = V = {D}"
    skipped: dict[str, str] = {}
    rows = run(args.ops, lengths, tokens, H, D, D, dtype, device, args.reps,
               on_length=lambda rows: report.write_csv(rows, paths[0], FIELDS, quiet=True), skipped=skipped)
    print_tables(rows)
    if skipped:
        report.print_table([dict(op=k, why=v) for k, v in skipped.items()], title="not measured")
    spec = plot_spec(title)
    spec.notes = [f"not measured: {', '.join(skipped)}"] if skipped else []
    report.save(rows, paths, spec, FIELDS)
    return rows


if __name__ == "__main__":
    main()
