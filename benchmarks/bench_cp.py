"""Context parallelism on CPU (gloo): the bytes each rank sends per layer, forward and backward, against T.

    python benchmarks/bench_cp.py                 # world 2 and 4, every CP op, two sequence lengths
    python benchmarks/bench_cp.py --tiny --out /tmp/cp   # small shapes; writes /tmp/cp/bench_cp.csv and .png

Each rank holds T / world tokens of one packed sequence (three documents, one spanning every rank) and runs one
layer's op forward and backward with `cp_context`. The forward bytes are counted where the CP collectives are
called (`fla.ops.cp.bytes_sent`: a rank's own piece times world - 1, what a ring all-gather sends per rank); the
backward is the all-gather's reduce-scatter, the same bytes again. The linear-state ops send a fixed
H x K x (V + 1) (diagonal decay) or H x K x (V + K) (delta rules) float32 summary whatever T; the short convolution
its last W - 1 tokens; parallel_attn its whole K, V and gate piece (O(T)). Wall times here are a loaded CPU's:
not reported. Speed and memory on a GPU: unmeasured. Writes DIR/bench_cp.csv and DIR/bench_cp.png (`--out DIR`,
default benchmarks/results/).
"""
from __future__ import annotations

import argparse
import csv
import datetime
import os
import socket
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
import report  # noqa: E402


def _ops(H, K, V):
    from fla.modules import ShortConvolution
    from fla.ops import (chunk_delta_rule, chunk_gated_delta_rule, chunk_gla, chunk_linear_attn, chunk_retention,
                         chunk_simple_gla, parallel_attn)
    conv = ShortConvolution(H * K, kernel_size=4)

    def qkv(L):
        return [torch.randn(1, L, H, K, requires_grad=True) for _ in range(2)] + [
            torch.randn(1, L, H, V, requires_grad=True)]

    def gate(*shape):
        return F.logsigmoid(torch.randn(*shape)).requires_grad_()

    return {
        "simple_gla": lambda L, c: chunk_simple_gla(*qkv(L), g=gate(1, L, H), cp_context=c)[0],
        "gla": lambda L, c: chunk_gla(*qkv(L), gate(1, L, H, K), cp_context=c)[0],
        "retention": lambda L, c: chunk_retention(*qkv(L), cp_context=c)[0],
        "linear_attn": lambda L, c: chunk_linear_attn(*[x.abs() for x in qkv(L)], cp_context=c)[0],
        "delta_rule": lambda L, c: chunk_delta_rule(*qkv(L), torch.rand(1, L, H), use_qk_l2norm_in_kernel=True,
                                                    cp_context=c)[0],
        "gated_delta_rule": lambda L, c: chunk_gated_delta_rule(*qkv(L), gate(1, L, H), torch.rand(1, L, H),
                                                                use_qk_l2norm_in_kernel=True, cp_context=c)[0],
        "short_conv": lambda L, c: conv(torch.randn(1, L, H * K, requires_grad=True), cp_context=c)[0],
        "parallel_attn": lambda L, c: parallel_attn(*qkv(L), gate(1, L, H), cp_context=c),
    }


def _worker(rank, world, port, sizes, lengths, out_file):
    sys.path.insert(0, str(REPO))
    from fla.ops.cp import build_cp_context, bytes_sent
    from fla.ops.utils.dispatch import use_backend
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=300))
    torch.manual_seed(0)
    rows = []
    with use_backend("torch"):
        for T in lengths:
            cu = torch.tensor([0, T // 8, T // 8 + T * 3 // 4, T])  # the middle document spans every rank
            ctx = build_cp_context(cu, dist.group.WORLD, conv1d_kernel_size=4)
            for name, run in _ops(*sizes).items():
                bytes_sent(reset=True)
                o = run(T // world, ctx)
                fwd = bytes_sent(reset=True)
                o.float().square().sum().backward()
                rows.append(dict(op=name, world=world, T=T, H=sizes[0], K=sizes[1], V=sizes[2],
                                 fwd_bytes_per_rank=fwd["bytes"], bwd_bytes_per_rank=fwd["bytes"],
                                 collectives=fwd["calls"]))
    if rank == 1:  # every rank sends the same amount; rank 1 is in the middle
        with open(out_file, "w") as f:
            writer = csv.DictWriter(f, list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    report.add_output_args(parser, "bench_cp", "H = 2, K = V = 16, T in (64, 256)")
    parser.add_argument("--worlds", default="2,4", help="CP degrees to run (comma-separated)")
    args = parser.parse_args(argv)
    paths = report.output_paths(args, "bench_cp")
    sizes, lengths = ((2, 16, 16), (64, 256)) if args.tiny else ((8, 64, 64), (512, 2048))
    rows = []
    for world in [int(w) for w in args.worlds.split(",")]:
        part = str(paths[0].parent / f".bench_cp_{world}.csv")
        mp.spawn(_worker, args=(world, _free_port(), sizes, lengths, part), nprocs=world, join=True)
        with open(part) as f:
            rows += [{k: int(v) if v.isdigit() else v for k, v in r.items()} for r in csv.DictReader(f)]
        os.remove(part)
    report.print_table(rows, ["op", "world", "T", "fwd_bytes_per_rank", "bwd_bytes_per_rank", "collectives"],
                       title=f"(H, K, V) = {sizes}; one layer, bytes sent per rank")
    report.save(rows, paths, report.Plot(
        x="T", series=("op",), split="world", logx=True, logy=True, xlabel="sequence length T",
        title=f"context parallelism, (H, K, V) = {sizes}", panels=[("forward bytes sent per rank",
                                                                    ["fwd_bytes_per_rank"])]))
    return rows


if __name__ == "__main__":
    main()
