"""Training throughput of whole models: tokens/s, model TFLOP/s (from `model.flops_per_token`) and peak memory of
a full step (forward, backward with FusedLinearCrossEntropy, AdamW), for each model config, padded-batch or packed
(varlen) input, with and without per-block `torch.compile`.

    python benchmarks/bench_model.py                      # GPU: 340M configs, bf16 autocast, 8 x 2048 tokens
    python benchmarks/bench_model.py --configs configs/models/gla_1.3B.json --seq-len 4096 --batch-size 4
    python benchmarks/bench_model.py --tiny               # CPU: debug configs, torch paths, a few steps

"varlen" packs random-length documents into each row and passes `cu_seqlens` (what the trainer does); "batch" is
B full-length rows. Peak memory is `torch.cuda.max_memory_allocated` (not measured on a CPU). On a CPU the numbers
say nothing about GPU speed: the tiny mode only proves the script runs. Writes DIR/bench_model.csv and .png
(`--out DIR`, default benchmarks/results/).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import fla.models  # noqa: E402,F401  (registers the families)
from fla.ops.utils.dispatch import use_backend  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
NAME = "bench_model"
FAMILIES = ("transformer", "gla", "retnet", "delta_net", "gated_deltanet")


def build(config_path: Path, device: str, dtype: torch.dtype):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(config_path)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).to(device=device, dtype=dtype).train()


def make_batch(vocab: int, batch_size: int, seq_len: int, varlen: bool, device: str, gen: torch.Generator):
    """(input_ids, cu_seqlens): [B, T] rows, or one packed row [1, B * T] of documents of random length."""
    if not varlen:
        return torch.randint(0, vocab, (batch_size, seq_len), device=device, generator=gen), None
    total = batch_size * seq_len
    lens = []
    while sum(lens) < total:
        lens.append(int(torch.randint(1, seq_len + 1, (1,), generator=gen)))
    lens[-1] -= sum(lens) - total
    cu_seqlens = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32, device=device)
    return torch.randint(0, vocab, (1, total), device=device, generator=gen), cu_seqlens


def run_case(config_path: Path, args, varlen: bool, compiled: bool) -> dict:
    device = args.device
    dtype = torch.float32 if device == "cpu" else torch.bfloat16 if args.dtype == "bf16" else torch.float32
    model = build(config_path, device, torch.float32 if args.autocast else dtype)
    if compiled:
        for block in model.model.layers:
            block.compile()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
    gen = torch.Generator(device="cpu").manual_seed(0)
    batches = [make_batch(model.config.vocab_size, args.batch_size, args.seq_len, varlen, "cpu", gen)
               for _ in range(4)]
    batches = [(x.to(device), None if c is None else c.to(device)) for x, c in batches]
    autocast = torch.autocast(device, dtype=torch.bfloat16) if args.autocast and device == "cuda" \
        else contextlib.nullcontext()

    def step(i: int) -> float:
        input_ids, cu_seqlens = batches[i % len(batches)]
        with autocast:
            loss = model(input_ids, labels=input_ids, cu_seqlens=cu_seqlens, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    for i in range(args.warmup):
        step(i)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for i in range(args.steps):
        loss = step(i)
    if device == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    tokens = args.steps * args.batch_size * args.seq_len
    tokens_per_s = tokens / elapsed
    params = sum(p.numel() for p in model.parameters())
    return {
        "config": config_path.stem,
        "params_M": round(params / 1e6, 1),
        "input": "varlen" if varlen else "batch",
        "compile": "on" if compiled else "off",
        "batch_x_seq": f"{args.batch_size}x{args.seq_len}",
        "tokens_per_s": round(tokens_per_s),
        "model_TFLOPs": round(tokens_per_s * model.flops_per_token(args.seq_len) / 1e12, 4),
        "peak_mem_GiB": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None,
        "ms_per_step": round(1e3 * elapsed / args.steps, 1),
        "final_loss": round(loss, 3),
    }


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="*", type=Path, help="model JSONs (default: <family>_340M for each family)")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--input", choices=("batch", "varlen", "both"), default="both")
    parser.add_argument("--compile", choices=("on", "off", "both"), default="both")
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--no-autocast", dest="autocast", action="store_false",
                        help="cast the weights to --dtype instead of fp32 weights + bf16 autocast")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    report.add_output_args(parser, NAME, "CPU smoke run: debug configs, 2 x 128 tokens, 2 steps, compile off")
    return parser.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    paths = report.output_paths(args, NAME)
    if args.tiny:
        args.configs = args.configs or [ROOT / "configs" / "models" / f"{f}_debug.json" for f in FAMILIES]
        args.seq_len, args.batch_size, args.steps, args.warmup = 128, 2, 2, 1
        args.compile = "off" if args.compile == "both" else args.compile
    args.configs = args.configs or [ROOT / "configs" / "models" / f"{f}_340M.json" for f in FAMILIES]
    inputs = [False, True] if args.input == "both" else [args.input == "varlen"]
    compiles = [False, True] if args.compile == "both" else [args.compile == "on"]

    rows = []
    backend = use_backend("torch") if args.device == "cpu" else contextlib.nullcontext()
    with backend:
        for path in args.configs:
            for varlen in inputs:
                for compiled in compiles:
                    try:
                        rows.append(run_case(path, args, varlen, compiled))
                        print(json.dumps(rows[-1]), flush=True)
                    except torch.cuda.OutOfMemoryError:
                        print(f"{path.stem} varlen={varlen} compile={compiled}: out of memory", flush=True)
                        torch.cuda.empty_cache()
    if not rows:
        print("no case ran: nothing to write")
        return rows
    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    report.print_table(rows, title=f"device: {device}, torch {torch.__version__}")
    rows = [{"device": device, **r} for r in rows]
    report.save(rows, paths, report.Plot(
        x="config", series=("input", "compile"), kind="bar", title=f"training step, {device}",
        panels=[("tokens/s", ["tokens_per_s"]), ("ms per step", ["ms_per_step"])]))
    return rows


if __name__ == "__main__":
    main()
