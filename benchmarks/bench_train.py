"""Trainer throughput: tokens/s per device and MFU of `flame.train` itself (FSDP2, compile, data loader, optimizer,
everything a real run pays for), read from the run's own metrics.jsonl.

    python benchmarks/bench_train.py                  # GPU: transformer_340M and gla_340M at 4k context, compile on
    python benchmarks/bench_train.py --models gla_340M --batch-size 8 --steps 40 --nproc 8
    python benchmarks/bench_train.py --tiny           # CPU: the debug model, a few steps (proves the script runs)

Goal (issue): >= 1.2x what the peer trainer reaches on one H100 (~87k tokens/s for GLA-340M at 4k). The embedded
corpus and tokenizer are used, so no network is needed. The first `--warmup` logged steps (compilation, allocator
growth) are left out of the figures. Results: a table on stdout, DIR/bench_train.csv and DIR/bench_train.png
(`--out DIR`, default benchmarks/results/); record GPU figures in benchmarks/RESULTS.md with device and date.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import report  # noqa: E402

NAME = "bench_train"


def run(model: str, *, steps: int, batch_size: int, seq_len: int, compile: bool, nproc: int, warmup: int,
        extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as dump:
        args = ["--model.config", str(ROOT / "configs" / "models" / f"{model}.json"), "--job.dump_folder", dump,
                "--training.steps", str(steps), "--training.batch_size", str(batch_size), "--training.seq_len",
                str(seq_len), "--training.compile", str(compile).lower(), "--metrics.log_freq", "1",
                "--checkpoint.enable", "false", "--lr_scheduler.warmup_steps", "1", "--job.print_config", "false",
                "--data.dataset", "default"] + extra
        if nproc > 1:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                   "-m", "flame.train"]
        else:
            cmd = [sys.executable, "-m", "flame.train"]
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        env.pop("TRITON_INTERPRET", None)  # a CPU run takes fla's PyTorch paths; a GPU run the compiled kernels
        begin = time.time()
        proc = subprocess.run(cmd + args, cwd=ROOT, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{model}: flame.train failed\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        recs = [json.loads(line) for line in open(os.path.join(dump, "metrics.jsonl")) if '"loss"' in line]
    measured = [r for r in recs if r["step"] > warmup] or recs
    tps = statistics.median(r["tokens_per_second_per_device"] for r in measured)
    mfus = [r["mfu"] for r in measured if r.get("mfu") is not None]
    return {"model": model, "nproc": nproc, "batch_size": batch_size, "seq_len": seq_len, "compile": compile,
            "steps": steps, "tokens_per_s_per_device": round(tps, 1),
            "mfu_percent": round(statistics.median(mfus), 2) if mfus else None,
            "peak_memory_gib": round(max(r["peak_memory_gib"] for r in recs), 2),
            "final_loss": round(recs[-1]["loss"], 4), "wall_s": round(time.time() - begin, 1)}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["transformer_340M", "gla_340M"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10, help="logged steps left out of the figures")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--nproc", type=int, default=1)
    report.add_output_args(parser, NAME, "CPU smoke run: the debug models, 4 steps of 2 x 128 tokens, compile off")
    parser.add_argument("extra", nargs="*", help="more flame.train options, after --")
    args = parser.parse_args(argv)
    if args.tiny:
        args.models = [m.replace("_340M", "_debug").replace("_1.3B", "_debug") for m in args.models]
        args.steps, args.warmup, args.batch_size, args.seq_len, args.no_compile = 4, 1, 2, 128, True
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    paths = report.output_paths(args, NAME)
    rows = []
    for model in args.models:
        row = run(model, steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len,
                  compile=not args.no_compile, nproc=args.nproc, warmup=args.warmup, extra=args.extra)
        rows.append(row)
        print(json.dumps(row), flush=True)
    report.print_table(rows, title="flame.train throughput (median over the logged steps after the warm-up)")
    report.save(rows, paths, report.Plot(
        x="model", kind="bar", title=f"flame.train, {args.nproc} process(es), {args.batch_size} x {args.seq_len}",
        panels=[("tokens/s per device", ["tokens_per_s_per_device"]), ("peak memory GiB", ["peak_memory_gib"])]))
    return rows


if __name__ == "__main__":
    main()
