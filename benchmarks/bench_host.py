"""What the host does per op call, without a GPU: kernel launches, PyTorch ops and device->host syncs.

    python benchmarks/bench_host.py                          # ours: every op, fixed length and varlen
    python benchmarks/bench_host.py --peer-path /tmp/peer    # also fla-core, in its own process, side by side
    python benchmarks/bench_host.py --ops chunk_gla --verbose --tiny --out DIR

A proxy for the host floor under an op's GPU time (~5 us per launch, ~5-10 us per PyTorch op, ~20 us or a drained
queue per sync), read on a CPU box: Triton launches become no-ops (no compile, no interpreter: the compiled-path host
code runs, the kernels do not, outputs are garbage), triton answers as an sm_90 target, and the inputs stand for GPU
tensors (`tests/host_trace.py` says how syncs are told from host work). Counts, not times.

Per op and mode, forward + backward (the gradient of o), B * T = 4 x 4096 tokens, H = 16, K = V = 128, bf16:
- `fixed`: [4, 4096]; `varlen`: [1, 16384] with cu_seqlens of 4 sequences; `varlen+cpu`: the same plus
  `cu_seqlens_cpu`, the host copy flame already has (only ops that take it);
- `first`: the first call with a new cu_seqlens tensor (the first layer of a step), `again`: a second call with the
  same one (every later layer). Launch counts are the same in both.
Writes DIR/bench_host.csv and DIR/bench_host.png (`--out DIR`, default benchmarks/results/).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import json
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))  # report.py (the folder holds no fla: a peer's stays first)
import report  # noqa: E402

NAME = "bench_host"

os.environ.pop("TRITON_INTERPRET", None)  # the compiled path's host code, not the interpreter's


def load_host_trace():
    """tests/host_trace.py by file path: putting the repository on sys.path would shadow a peer `fla`."""
    spec = importlib.util.spec_from_file_location("host_trace", REPO / "tests" / "host_trace.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["host_trace"] = module
    spec.loader.exec_module(module)
    return module


# name -> (module, function, call(fn, x, varlen kwargs) -> o)
OPS = {
    "chunk_simple_gla": ("fla.ops.simple_gla", "chunk_simple_gla",
                         lambda f, x, kw: f(x["q"], x["k"], x["v"], g=x["g"], **kw)),
    "chunk_gla": ("fla.ops.gla", "chunk_gla", lambda f, x, kw: f(x["q"], x["k"], x["v"], x["gk"], **kw)),
    "chunk_retention": ("fla.ops.retention", "chunk_retention", lambda f, x, kw: f(x["q"], x["k"], x["v"], **kw)),
    "chunk_linear_attn": ("fla.ops.linear_attn", "chunk_linear_attn",
                          lambda f, x, kw: f(x["q"], x["k"], x["v"], normalize=False, **kw)),
    "chunk_delta_rule": ("fla.ops.delta_rule", "chunk_delta_rule",
                         lambda f, x, kw: f(x["q"], x["k"], x["v"], x["beta"], use_qk_l2norm_in_kernel=True, **kw)),
    "chunk_gated_delta_rule": ("fla.ops.gated_delta_rule", "chunk_gated_delta_rule",
                               lambda f, x, kw: f(x["q"], x["k"], x["v"], x["g"], x["beta"],
                                                  use_qk_l2norm_in_kernel=True, **kw)),
    "chunk_kda": ("fla.ops.kda", "chunk_kda", lambda f, x, kw: f(x["q"], x["k"], x["v"], x["gk"], x["beta"],
                                                                 use_qk_l2norm_in_kernel=True, **kw)),
    "chunk_dplr_delta_rule": ("fla.ops.generalized_delta_rule", "chunk_dplr_delta_rule",
                              lambda f, x, kw: f(x["q"], x["k"], x["v"], x["a"], x["b"], x["gk"], **kw)),
    "chunk_rwkv7": ("fla.ops.rwkv7", "chunk_rwkv7",
                    lambda f, x, kw: f(x["q"], x["gk"], x["k"], x["v"], x["a"], x["b"], **kw)),
    "chunk_gated_delta_product": ("fla.ops.gated_delta_product", "chunk_gated_delta_product",
                                  lambda f, x, kw: f(x["q"], x["k2"], x["v2"], x["g"], x["beta2"], 2,
                                                     use_qk_l2norm_in_kernel=True, **kw)),
    "parallel_attn": ("fla.ops.attn", "parallel_attn", lambda f, x, kw: f(x["q"], x["k"], x["v"], **kw)),
}


def make_inputs(ht, B, T, H, K, V, dtype):
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)

    def leaf(t):
        return ht.on_device(t.to(dtype).requires_grad_())

    unit = F.normalize(torch.randn(B, T, H, K), dim=-1)
    return dict(q=leaf(torch.randn(B, T, H, K)), k=leaf(torch.randn(B, T, H, K)), v=leaf(torch.randn(B, T, H, V)),
                g=leaf(F.logsigmoid(torch.randn(B, T, H))), gk=leaf(F.logsigmoid(torch.randn(B, T, H, K)) / 16),
                beta=leaf(torch.rand(B, T, H)),
                a=leaf(-unit), b=leaf(unit * torch.rand(B, T, H, 1)),  # dplr / rwkv7 low-rank terms
                # gated DeltaProduct, 2 Householder steps per token: [B, 2T, H, *]
                k2=leaf(torch.randn(B, 2 * T, H, K)), v2=leaf(torch.randn(B, 2 * T, H, V)),
                beta2=leaf(torch.rand(B, 2 * T, H)))


def measure(args) -> list[dict]:
    """Runs in the process whose `fla` is measured; returns one row per (op, mode)."""
    import torch

    warnings.filterwarnings("ignore")
    ht = load_host_trace()
    if not ht.install_stand_in_driver():
        raise SystemExit("this triton has no driver.set_active: cannot stand in for a GPU")
    ht.stand_in_torch_cuda()
    try:  # ours: send every op to the Triton launchers although the tensors are on the CPU
        import fla.ops.utils.dispatch as dispatch
        original = dispatch.get_backend
    except ImportError:
        original = None

    def triton_everywhere() -> None:
        """Also where a module bound `get_backend` by name (`from ... import get_backend`)."""
        if original is not None:
            for module in list(sys.modules.values()):
                if getattr(module, "get_backend", None) is original:
                    module.get_backend = lambda x: "triton"

    dtype = getattr(torch, args.dtype)
    seqs, T, H, D = args.seqs, args.T, args.heads, args.dim
    rows = []
    for name in args.ops:
        module, attr, call = OPS[name]
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            print(f"# {name}: not in this fla ({e})", file=sys.stderr)
            continue
        triton_everywhere()
        takes_cpu = "cu_seqlens_cpu" in inspect.signature(fn).parameters
        for mode in ("fixed", "varlen", "varlen+cpu"):
            if mode == "varlen+cpu" and not takes_cpu:
                continue
            B, L = (seqs, T) if mode == "fixed" else (1, seqs * T)
            x = make_inputs(ht, B, L, H, D, D, dtype)
            bounds = [i * T for i in range(seqs + 1)]

            def varlen_kwargs():  # a new cu_seqlens object: what each training step brings
                if mode == "fixed":
                    return {}
                kw = {"cu_seqlens": ht.on_device(torch.tensor(bounds, dtype=torch.int32))}
                if mode == "varlen+cpu":
                    kw["cu_seqlens_cpu"] = torch.tensor(bounds, dtype=torch.int32)
                return kw

            def step(kw, trace_fwd, trace_bwd):
                with trace_fwd:
                    out = call(fn, x, kw)
                o = out[0] if isinstance(out, tuple) else out
                do = ht.on_device(torch.ones_like(o))
                with trace_bwd:
                    torch.autograd.backward(o, do)
                for t in x.values():
                    t.grad = None

            row = dict(op=name, mode=mode)
            try:
                with ht.count_launches(skip=True):
                    step(varlen_kwargs(), ht.HostTrace(), ht.HostTrace())  # warm-up: autotune and lazy caches
                    kw = varlen_kwargs()
                    for when in ("first", "again"):
                        fwd, bwd = ht.HostTrace(), ht.HostTrace()
                        step(kw, fwd, bwd)
                        row["launches"] = fwd.launches + bwd.launches
                        row[f"ops_{when}"] = fwd.ops + bwd.ops
                        row[f"syncs_{when}"] = len(fwd.syncs) + len(bwd.syncs)
                        row[f"where_{when}"] = [f"fwd {w} {s}" for s, w in fwd.syncs] + [
                            f"bwd {w} {s}" for s, w in bwd.syncs]
            except Exception as e:  # an op this library cannot run here: say so, go on
                print(f"# {name} {mode}: {type(e).__name__}: {str(e)[:200]}", file=sys.stderr)
                continue
            rows.append(row)
    return rows


def run_peer(args) -> list[dict]:
    """The same measurement in a child process whose `fla` is the peer's."""
    sys.path.insert(0, str(HERE))
    from peer_ops import child_env, which_fla

    env = child_env(args.peer_path)
    location = which_fla(args.python, env)
    if Path(location).resolve().is_relative_to(REPO):
        raise SystemExit(f"the peer process imports this repository's fla ({location}): check --peer-path")
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "peer.json"
        cmd = [args.python, str(Path(__file__).resolve()), "--as-child", str(out), "--ops", *args.ops,
               "--T", str(args.T), "--seqs", str(args.seqs), "--heads", str(args.heads), "--dim", str(args.dim),
               "--dtype", args.dtype]
        subprocess.run(cmd, env=env, cwd=scratch, check=True)
        return json.loads(out.read_text())


COUNTS = ("launches", "ops_first", "ops_again", "syncs_first", "syncs_again")


def print_table(ours: list[dict], peer: list[dict] | None, verbose: bool) -> None:
    theirs = {(r["op"], r["mode"]): r for r in peer or []}
    table = []
    for r in ours:
        line = {"op": r["op"], "mode": r["mode"]}
        p = theirs.get((r["op"], r["mode"]), {})
        for key in COUNTS:
            line[key] = r[key] if peer is None else f"{r[key]} / {p.get(key, '-')}"
        table.append(line)
    report.print_table(table, title="host work per call, forward + backward (counts on a CPU box standing in for an "
                                    "sm_90 GPU: a proxy, not a time)" + (", ours / peer" if peer is not None else ""))
    if verbose:
        for r in ours:
            for where in r["where_first"]:
                print(f"  {r['op']} {r['mode']}: sync (first call): {where}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", nargs="+", default=list(OPS), choices=list(OPS))
    parser.add_argument("--T", type=int, default=4096, help="tokens per sequence")
    parser.add_argument("--seqs", type=int, default=4, help="sequences (the batch, or the packed documents)")
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--dim", type=int, default=128, help="K = V")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--peer-path", help="folder holding the peer's fla/ (e.g. an unpacked fla-core wheel)")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the peer's process")
    report.add_output_args(parser, NAME, "T = 200, H = 2, K = V = 64 (same counts, less memory)")
    parser.add_argument("--verbose", action="store_true", help="print where each sync of our first call comes from")
    parser.add_argument("--as-child", help=argparse.SUPPRESS)  # write the rows of this process's fla as JSON
    args = parser.parse_args(argv)
    if args.tiny:
        args.T, args.heads, args.dim = 200, 2, 64
    if args.as_child:
        Path(args.as_child).write_text(json.dumps(measure(args)))
        return 0
    paths = report.output_paths(args, NAME)
    peer = run_peer(args) if args.peer_path or args.python != sys.executable else None
    ours = measure(args)
    print_table(ours, peer, args.verbose)
    rows = [dict(r, library=library) for library, part in (("ours", ours), ("peer", peer or [])) for r in part]
    report.save(rows, paths, report.Plot(
        x="op", series=("library", "mode"), kind="bar", title="host work per fwd+bwd call (repeated call)",
        panels=[("kernel launches", ["launches"]), ("device->host syncs", ["syncs_again"])]),
        fields=["library", "op", "mode", *COUNTS])
    return 0


if __name__ == "__main__":
    sys.exit(main())
