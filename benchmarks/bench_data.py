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
                num_workers: int = 0) -> tuple[float, float]:
    """(tokens/s, seconds per batch) of the loader after a warm-up batch."""
    import torch

    from flame.data import SourceConfig, build_dataloader

    torch.set_num_threads(1)
    loader = build_dataloader(sources=[SourceConfig("default", streaming=streaming)], tokenizer=tokenizer,
                              seq_len=seq_len, batch_size=batch_size, num_workers=num_workers, seed=0)
    it = iter(loader)
    next(it)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        batch = next(it)
        n += 1
    elapsed = time.perf_counter() - start
    assert batch["input_ids"].shape == (batch_size, seq_len)
    return n * batch_size * seq_len / elapsed, elapsed / n


def bare_tokenizer_rate(tokenizer, seconds: float) -> float:
    import datasets

    from flame.data import default_corpus

    texts = list(datasets.load_from_disk(default_corpus("train"))["text"])
    backend = tokenizer.backend_tokenizer
    n_tokens, start, i = 0, time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        block = texts[i:i + 256] or texts[:256]
        i = (i + 256) % len(texts)
        n_tokens += sum(len(e.ids) for e in backend.encode_batch_fast(block, add_special_tokens=False))
    return n_tokens / (time.perf_counter() - start)


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
    for name, tok in tokenizers.items():
        rows.append({"tokenizer": name, "vocab": len(tok), "case": "bare tokenizer (encode_batch_fast)", "workers": 1,
                     "tokens_per_s": bare_tokenizer_rate(tok, args.seconds), "ms_per_batch": ""})
        for streaming in (False, True):
            rate, per_batch = loader_rate(tok, streaming, args.seconds, args.seq_len, args.batch_size)
            rows.append({"tokenizer": name, "vocab": len(tok), "workers": 1, "tokens_per_s": rate,
                         "case": f"loader, {'streaming' if streaming else 'random access'}",
                         "ms_per_batch": f"{per_batch * 1e3:.1f}"})
        if args.workers > 1:
            rate, per_batch = loader_rate(tok, False, args.seconds, args.seq_len, args.batch_size, args.workers)
            rows.append({"tokenizer": name, "vocab": len(tok), "workers": args.workers, "tokens_per_s": rate,
                         "case": "loader, random access, all workers together", "ms_per_batch": f"{per_batch * 1e3:.1f}"})
        for r in rows[-4:]:
            print(f"{r['tokenizer']:>10s} {r['case']:<45s} workers={r['workers']}  {r['tokens_per_s'] / 1e3:8.0f}k tokens/s",
                  flush=True)

    print(f"\nbatch {args.batch_size} x {args.seq_len} tokens, {os.cpu_count()} CPU cores, one thread per worker\n")
    header = f"| tokenizer | vocab | case | workers | tokens/s | ms/batch |\n|---|---|---|---|---|---|"
    print(header)
    for r in rows:
        print(f"| {r['tokenizer']} | {r['vocab']} | {r['case']} | {r['workers']} | {r['tokens_per_s']:,.0f} | "
              f"{r['ms_per_batch']} |")
    Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
    with open(args.csv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"\nwrote {args.csv}")


if __name__ == "__main__":
    main()
