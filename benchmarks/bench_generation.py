"""Generation throughput of whole models: prefill time, decode tokens/s and peak memory, for each model config and
batch size, through `model.generate` (greedy, a fixed number of new tokens) and through a bare decode loop (the
model's forward with its cache, without generate()'s bookkeeping).

    python benchmarks/bench_generation.py                  # GPU: 340M configs, bf16, prompt 512, 256 new tokens
    python benchmarks/bench_generation.py --batch-sizes 1 16 64 --prompt-len 2048
    python benchmarks/bench_generation.py --tiny           # CPU: debug configs, torch paths

Linear-attention models keep a fixed-size state per layer, so their decode cost per token does not grow with the
context; the Transformer's KV cache does. On a CPU the numbers say nothing about GPU speed. Writes
DIR/bench_generation.csv and .png (`--out DIR`, default benchmarks/results/).
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
NAME = "bench_generation"
FAMILIES = ("transformer", "gla", "retnet", "delta_net", "gated_deltanet")


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


@torch.inference_mode()
def run_case(config_path: Path, batch_size: int, args) -> dict:
    from transformers import AutoConfig, AutoModelForCausalLM

    device = args.device
    dtype = torch.bfloat16 if device == "cuda" and args.dtype == "bf16" else torch.float32
    config = AutoConfig.from_pretrained(config_path)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).to(device=device, dtype=dtype).eval()
    prompt = torch.randint(3, config.vocab_size, (batch_size, args.prompt_len), device=device)
    gen_kwargs = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                      pad_token_id=0)

    model.generate(prompt[:, :16], **{**gen_kwargs, "max_new_tokens": 4, "min_new_tokens": 4})  # warm-up
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    sync(device)
    start = time.perf_counter()
    out = model(prompt, use_cache=True, logits_to_keep=1)
    sync(device)
    prefill_s = time.perf_counter() - start

    # bare decode loop on the prefilled cache
    cache, token = out.cache, out.logits[:, -1:].argmax(-1)
    sync(device)
    start = time.perf_counter()
    for _ in range(args.new_tokens):
        out = model(token, cache=cache, use_cache=True)
        token = out.logits[:, -1:].argmax(-1)
    sync(device)
    loop_s = time.perf_counter() - start

    start = time.perf_counter()
    seq = model.generate(prompt, **gen_kwargs)
    sync(device)
    generate_s = time.perf_counter() - start
    assert seq.shape == (batch_size, args.prompt_len + args.new_tokens)

    return {
        "config": config_path.stem,
        "batch": batch_size,
        "prompt": args.prompt_len,
        "new": args.new_tokens,
        "prefill_ms": round(1e3 * prefill_s, 1),
        "decode_ms_per_step": round(1e3 * loop_s / args.new_tokens, 2),
        "decode_tokens_per_s": round(batch_size * args.new_tokens / loop_s),
        "generate_tokens_per_s": round(batch_size * args.new_tokens / generate_s),
        "peak_mem_GiB": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None,
    }


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="*", type=Path, help="model JSONs (default: <family>_340M for each family)")
    parser.add_argument("--batch-sizes", nargs="*", type=int, default=[1, 8, 32])
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    report.add_output_args(parser, NAME, "CPU smoke run: debug configs, batch 1 and 4, prompt 32, 16 new tokens")
    return parser.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    paths = report.output_paths(args, NAME)
    if args.tiny:
        args.configs = args.configs or [ROOT / "configs" / "models" / f"{f}_debug.json" for f in FAMILIES]
        args.batch_sizes, args.prompt_len, args.new_tokens = [1, 4], 32, 16
    args.configs = args.configs or [ROOT / "configs" / "models" / f"{f}_340M.json" for f in FAMILIES]

    rows = []
    with use_backend("torch") if args.device == "cpu" else contextlib.nullcontext():
        for path in args.configs:
            for batch_size in args.batch_sizes:
                try:
                    rows.append(run_case(path, batch_size, args))
                    print(json.dumps(rows[-1]), flush=True)
                except torch.cuda.OutOfMemoryError:
                    print(f"{path.stem} batch={batch_size}: out of memory", flush=True)
                    torch.cuda.empty_cache()
    if not rows:
        print("no case ran: nothing to write")
        return rows
    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    report.print_table(rows, title=f"device: {device}, torch {torch.__version__}")
    rows = [{"device": device, **r} for r in rows]
    report.save(rows, paths, report.Plot(
        x="batch", series=("config",), logx=True, title=f"generation, {device}", xlabel="batch size",
        panels=[("decode tokens/s (bare loop)", ["decode_tokens_per_s"]), ("prefill ms", ["prefill_ms"])]))
    return rows


if __name__ == "__main__":
    main()
