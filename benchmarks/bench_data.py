"""Data pipeline throughput: tokens/s that one loader worker delivers (read + tokenize + mix + pack + state).

    python benchmarks/bench_data.py [--seconds 5] [--out DIR]
    python benchmarks/bench_data.py --tiny      # smoke run: the 4k tokenizer only, 0.5 s a case, no worker processes

Tokenizers: the embedded 4096-token BPE and a 32k-token BPE trained on the same corpus (cached under the flame
cache dir). Sources: the default corpus, random-access and streaming. Each case runs the real loader
(`build_dataloader`) with num_workers=0, i.e. one process doing a worker's whole job, single-threaded
(TOKENIZERS_PARALLELISM=false), and, for reference, the bare Rust tokenizer on the same documents.
Goal: one worker >= 200k tokens/s (an H100 training a 340M model eats ~100k tokens/s).
Writes DIR/bench_data.csv and DIR/bench_data.png (`--out DIR`, default benchmarks/results/).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one worker = one core
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402

NAME = "bench_data"


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


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=None, help="per case (default 5; --tiny 0.5)")
    parser.add_argument("--seq-len", type=int, default=None, help="default 2048 (--tiny 256)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 8 (--tiny 2)")
    parser.add_argument("--workers", type=int, default=None,
                        help="also measure this many worker processes together (default 2; --tiny: none)")
    report.add_output_args(parser, NAME, "smoke run: the embedded 4k tokenizer only (no 32k BPE training), 0.5 s "
                                         "a case, 2 x 256 tokens, no worker processes")
    args = parser.parse_args(argv)
    tiny = dict(seconds=0.5, seq_len=256, batch_size=2, workers=0)
    full = dict(seconds=5.0, seq_len=2048, batch_size=8, workers=2)
    for key, value in (tiny if args.tiny else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    paths = report.output_paths(args, NAME)

    from flame.data import load_tokenizer

    tokenizers = {"default-4k": load_tokenizer(None)}
    if not args.tiny:
        tokenizers["bpe-32k"] = tokenizer_32k()
    rows = []

    def row(name, tok, case, workers, wall, cpu, per_batch):
        rows.append({"tokenizer": name, "vocab": len(tok), "case": case, "workers": workers,
                     "tokens_per_s": round(wall), "tokens_per_cpu_s": None if cpu is None else round(cpu),
                     "ms_per_batch": None if per_batch is None else round(per_batch * 1e3, 1)})
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
    report.print_table(rows, headers={"tokens_per_s": "tokens/s (wall)", "tokens_per_cpu_s": "tokens/CPU-s",
                                      "ms_per_batch": "ms/batch"},
                       title=f"batch {args.batch_size} x {args.seq_len} tokens, {os.cpu_count()} CPU cores (load "
                             f"average {load:.1f}), one thread per worker")
    report.save(rows, paths, report.Plot(
        x="case", series=("tokenizer",), kind="bar", title=f"data pipeline, load average {load:.1f}",
        panels=[("tokens per CPU-second (one worker)", ["tokens_per_cpu_s"]), ("tokens per wall second",
                                                                              ["tokens_per_s"])],
        hline=(200_000, "goal 200k/s per worker")))
    return rows


if __name__ == "__main__":
    main()
