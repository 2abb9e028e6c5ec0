"""Data pipeline throughput: tokens/s that one loader worker delivers (read + tokenize + mix + pack + state).

    python benchmarks/bench_data.py [--seconds 5] [--csv benchmarks/results/bench_data.csv]

Tokenizers: the embedded 4096-token BPE and a 32k-token BPE trained on the same corpus (cached under the flame
cache dir). Sources: the default corpus, random-access and streaming. Each case runs the real loader
(`build_dataloader`) with num_workers=0, i.e. one process doing a worker's whole job, single-threaded
(TOKENIZERS_PARALLELISM=false), and, for reference, the bare Rust tokenizer on the same documents.
Goal: one worker >= 200k tokens/s (an H100 training a 340M model eats ~100k tokens/s).
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one worker = one core
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def tokenizer_32k():
    from flame.data.corpus import cache_dir
    from flame.data.tokenizer import load_tokenizer
    from flame.tools.build_tokenizer import build_tokenizer

    path = cache_dir() / "bench_tokenizer_32k"
    if not (path / "tokenizer.json").exists():
        print("training a 32k BPE on the default corpus (once)...", flush=True)
        build_tokenizer(path, vocab_size=32000)
    return load_tokenizer(str(path))


def loader_rate(tokenizer, streaming: bool, seconds: float, seq_len: int, batch_size: int,
                num_workers: int = 0) -> tuple[float, float, float]:
    """(tokens per wall second, tokens per CPU second of this process, wall seconds per batch) after a warm-up
    batch. The CPU-second rate is what one worker can do on an idle core (this box is shared)."""
    import torch

    from flame.data import SourceConfig, build_dataloader

    torch.set_num_threads(1)
    loader = build_dataloader(sources=[SourceConfig("default", streaming=streaming)], tokenizer=tokenizer,
                              seq_len=seq_len, batch_size=batch_size, num_workers=num_workers, seed=0)
    it = iter(loader)
    next(it)
    n, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        batch = next(it)
        n += 1
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert batch["input_ids"].shape == (batch_size, seq_len)
    tokens = n * batch_size * seq_len
    return tokens / elapsed, tokens / cpu, elapsed / n


def bare_tokenizer_rate(tokenizer, seconds: float) -> float:
    import datasets

    from flame.data import default_corpus

    texts = list(datasets.load_from_disk(default_corpus("train"))["text"])
    backend = tokenizer.backend_tokenizer
    n_tokens, start, cpu, i = 0, time.perf_counter(), time.process_time(), 0
    while time.perf_counter() - start < seconds:
        block = texts[i:i + 256] or texts[:256]
        i = (i + 256) % len(texts)
        n_tokens += sum(len(e.ids) for e in backend.encode_batch_fast(block, add_special_tokens=False))
    return n_tokens / (time.perf_counter() - start), n_tokens / (time.process_time() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="also measure this many worker processes together")
    parser.add_argument("--csv", default="benchmarks/results/bench_data.csv")
    args = parser.parse_args()

    from flame.data import load_tokenizer

    tokenizers = {"default-4k": load_tokenizer(None), "bpe-32k": tokenizer_32k()}
    rows = []

    def row(name, tok, case, workers, wall, cpu, per_batch):
        rows.append({"tokenizer": name, "vocab": len(tok), "case": case, "workers": workers,
                     "tokens_per_s": round(wall), "tokens_per_cpu_s": "" if cpu is None else round(cpu),
                     "ms_per_batch": "" if per_batch is None else round(per_batch * 1e3, 1)})
        r = rows[-1]
        print(f"{name:>10s} {case:<40s} workers={workers}  {wall / 1e3:6.0f}k tokens/s"
              + ("" if cpu is None else f"  {cpu / 1e3:6.0f}k tokens/CPU-s"), flush=True)

    for name, tok in tokenizers.items():
        wall, cpu = bare_tokenizer_rate(tok, args.seconds)
        row(name, tok, "bare tokenizer (encode_batch_fast)", 1, wall, cpu, None)
        for streaming in (False, True):
            wall, cpu, per_batch = loader_rate(tok, streaming, args.seconds, args.seq_len, args.batch_size)
            row(name, tok, f"loader, {'streaming' if streaming else 'random access'}", 1, wall, cpu, per_batch)
        if args.workers > 1:
            wall, _, per_batch = loader_rate(tok, False, args.seconds, args.seq_len, args.batch_size, args.workers)
            row(name, tok, "loader, random access, worker processes", args.workers, wall, None, per_batch)

    load = os.getloadavg()[0]
    print(f"\nbatch {args.batch_size} x {args.seq_len} tokens, {os.cpu_count()} CPU cores (load average {load:.1f}), "
          "one thread per worker\n")
    print("| tokenizer | vocab | case | workers | tokens/s (wall) | tokens/CPU-s | ms/batch |\n|---|---|---|---|---|---|---|")
    for r in rows:
        cpu = f"{r['tokens_per_cpu_s']:,}" if r["tokens_per_cpu_s"] != "" else ""
        print(f"| {r['tokenizer']} | {r['vocab']} | {r['case']} | {r['workers']} | {r['tokens_per_s']:,} | {cpu} | "
              f"{r['ms_per_batch']} |")
    Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
    with open(args.csv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"\nwrote {args.csv}")


if __name__ == "__main__":
    main()
