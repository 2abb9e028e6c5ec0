"""Context parallelism (CP): the bytes each rank sends per layer (CPU, gloo), and tokens/s and peak memory per rank
against the context length at CP degree 1, 2, 4 (GPU, NCCL).

The issue's table (CP 1, 2 and 4 on one 4-GPU node; 8k .. 256k global tokens; CSV + markdown table):

    python benchmarks/bench_cp.py --speed --worlds 1,2,4     # benchmarks/results/bench_cp_speed.csv, .md, .png

It spawns one group of processes per CP degree (NCCL on CUDA, rank r on GPU r; world 1 is the plain model without
cp_context: the single-device baseline). The same measurement under torchrun, one CP degree per command (each run
replaces its degree's rows in the same CSV, so three runs give the same table):

    torchrun --nproc_per_node 4 benchmarks/bench_cp.py --speed      # CP 4; --nproc_per_node 1 / 2 for CP 1 / 2

Speed mode: a small `fla.models` causal LM (`--model gated_deltanet`, `--hidden 1024 --layers 4 --vocab 32000`,
bfloat16, the fused linear cross entropy; `--set key=value` for any other config field, e.g. `--set
fuse_linear_cross_entropy=false`) on one sequence of T global tokens, T / world per rank (`cp_context` from
`fla.ops.cp.build_cp_context`). After `--warmup` steps, `--iters` forward + backward steps are timed with CUDA
events on every rank; a step's time is the slowest rank's, tokens/s = T / the median step time; peak memory is
`torch.cuda.max_memory_allocated` per rank (its max over the ranks, and every rank's). An out-of-memory point is
reported as "OOM" (the longer ones as not run), an exception as "error" with its message, a CP degree with more
ranks than visible GPUs as "not run", and the table is still written. `--speed --tiny` runs the same code on CPU
with gloo (2 ranks, tiny shapes): its wall times are a loaded CPU's and mean nothing, and CPU memory is not
measured. GPU figures: unmeasured so far (no GPU was lent).

Bytes mode (the default):

    python benchmarks/bench_cp.py                 # world 2 and 4, every CP op, two sequence lengths
    python benchmarks/bench_cp.py --tiny --out /tmp/cp   # small shapes; writes /tmp/cp/bench_cp.csv and .png

Each rank holds T / world tokens of one packed sequence (three documents, one spanning every rank) and runs one
layer's op forward and backward with `cp_context`, for every op that takes it. The forward bytes are counted where
the CP collectives are called (`fla.ops.cp.bytes_sent`: a rank's own piece times world - 1, what a ring all-gather
sends per rank); the backward is the all-gather's reduce-scatter, the same bytes again. The linear-state ops send a
fixed H x K x (V + 1) (diagonal decay) or H x K x (V + K) (delta rules, DPLR) float32 summary whatever T; the short
convolution its last W - 1 tokens, the token shift its last token; parallel_attn its whole K, V and gate piece
(O(T)). Wall times are not reported in this mode. Writes DIR/bench_cp.csv and DIR/bench_cp.png (`--out DIR`,
default benchmarks/results/).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import io
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
import report  # noqa: E402


def _ops(H, K, V):
    """Every op that takes `cp_context`, on this rank's L tokens: name -> run(L, ctx) -> this rank's output."""
    from fla.modules import ShortConvolution
    from fla.modules.token_shift import token_shift
    from fla.ops import (chunk_delta_rule, chunk_dplr_delta_rule, chunk_gated_delta_rule, chunk_gla, chunk_hgrn,
                         chunk_kda, chunk_linear_attn, chunk_retention, chunk_rwkv7, chunk_simple_gla, parallel_attn)
    from fla.ops.gated_delta_product import chunk_gated_delta_product
    conv = ShortConvolution(H * K, kernel_size=4)

    def x(*shape):
        return torch.randn(*shape, requires_grad=True)

    def qkv(L):
        return [x(1, L, H, K), x(1, L, H, K), x(1, L, H, V)]

    def gate(*shape):
        return (F.logsigmoid(torch.randn(*shape)) * 0.3).requires_grad_()

    def unit(L):  # RWKV-like removal key: a = -kk, b = kk * (a rate in (0, 1))
        return F.normalize(torch.randn(1, L, H, K), dim=-1).requires_grad_()

    def dplr(L, c):
        kk = unit(L)
        return chunk_dplr_delta_rule(*qkv(L), -kk, kk * torch.rand(1, L, H, K), gate(1, L, H, K), cp_context=c)[0]

    def rwkv7(L, c):
        kk = unit(L)
        r, k, v = qkv(L)
        return chunk_rwkv7(r, (-0.6 * torch.rand(1, L, H, K)).requires_grad_(), k, v, -kk,
                           kk * torch.rand(1, L, H, K), cp_context=c)[0]

    def product(L, c):  # n = 2 Householder rows per token: k, v, beta carry 2 L rows
        return chunk_gated_delta_product(x(1, L, H, K), x(1, 2 * L, H, K), x(1, 2 * L, H, V), gate(1, L, H),
                                         torch.rand(1, 2 * L, H), 2, use_qk_l2norm_in_kernel=True, cp_context=c)[0]

    return {
        "simple_gla": lambda L, c: chunk_simple_gla(*qkv(L), g=gate(1, L, H), cp_context=c)[0],
        "gla": lambda L, c: chunk_gla(*qkv(L), gate(1, L, H, K), cp_context=c)[0],
        "retention": lambda L, c: chunk_retention(*qkv(L), cp_context=c)[0],
        "linear_attn": lambda L, c: chunk_linear_attn(*[t.abs() for t in qkv(L)], cp_context=c)[0],
        "hgrn": lambda L, c: chunk_hgrn(x(1, L, H * K), gate(1, L, H * K), cp_context=c)[0],
        "delta_rule": lambda L, c: chunk_delta_rule(*qkv(L), torch.rand(1, L, H), use_qk_l2norm_in_kernel=True,
                                                    cp_context=c)[0],
        "gated_delta_rule": lambda L, c: chunk_gated_delta_rule(*qkv(L), gate(1, L, H), torch.rand(1, L, H),
                                                                use_qk_l2norm_in_kernel=True, cp_context=c)[0],
        "kda": lambda L, c: chunk_kda(*qkv(L), gate(1, L, H, K), torch.rand(1, L, H), use_qk_l2norm_in_kernel=True,
                                      cp_context=c)[0],
        "gated_delta_product": product,
        "dplr_delta_rule": dplr,
        "rwkv7": rwkv7,
        "short_conv": lambda L, c: conv(x(1, L, H * K), cp_context=c)[0],
        "token_shift": lambda L, c: token_shift(x(1, L, H * K), cp_context=c),
        "parallel_attn": lambda L, c: parallel_attn(*qkv(L), gate(1, L, H), cp_context=c),
    }


def _bytes_worker(rank, world, port, sizes, lengths, out_file):
    sys.path.insert(0, str(REPO))
    from fla.ops.cp import build_cp_context, bytes_sent
    from fla.ops.utils.dispatch import use_backend
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=300))
    torch.set_num_threads(1)  # world ranks share the cores: more threads each would only spin
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



# --- speed mode --------------------------------------------------------------------------------------------------

SPEED_COLUMNS = ["model", "world", "T", "tokens_per_rank", "status", "step_ms", "tokens_per_s", "peak_mem_gib",
                 "peak_mem_gib_per_rank", "device", "dtype", "note"]
CPU_NOTE = "CPU wall time: not meaningful"
# tiny CPU configs: every family's config needs its own small head sizes (as tests/models/test_models.py)
TINY_SET = {"gated_deltanet": "num_heads=2,head_dim=16,expand_v=1.0", "gla": "num_heads=2",
            "transformer": "num_heads=2,num_kv_heads=1", "kda": "num_heads=2,head_dim=16", "retnet": "num_heads=2"}


def _parse_set(text: str) -> dict:
    """'a=1,b=x,c=true' -> {'a': 1, 'b': 'x', 'c': True} (JSON values where they parse, else strings)."""
    out = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set takes key=value pairs separated by commas (got {item!r})")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _build_model(cfg: dict, device: torch.device):
    from transformers import AutoConfig, AutoModelForCausalLM

    import fla.models  # noqa: F401  (registers the families)
    kwargs = dict(vocab_size=cfg["vocab"], hidden_size=cfg["hidden"], num_hidden_layers=cfg["layers"],
                  eos_token_id=None, bos_token_id=None, pad_token_id=0,
                  fuse_linear_cross_entropy=device.type == "cuda", fuse_cross_entropy=device.type == "cuda")
    kwargs.update(_parse_set(cfg["set"]))
    torch.manual_seed(0)  # the same weights on every rank
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(cfg["model"], **kwargs))
    return model.to(device=device, dtype=getattr(torch, cfg["dtype"])).train()


def _step_ms(model, ids, ctx, n_targets, device) -> float:
    """One forward + backward of this rank's piece, in ms (CUDA events on a GPU, wall time on a CPU)."""
    kwargs = {} if ctx is None else dict(cp_context=ctx, num_items_in_batch=n_targets)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
    else:
        t0 = time.perf_counter()
    model(ids, labels=ids, **kwargs).loss.backward()
    model.zero_grad(set_to_none=True)
    if device.type == "cuda":
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    return (time.perf_counter() - t0) * 1e3


def _gather(obj, world: int, group) -> list:
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj, group=group)
    return out


def _speed_points(rank: int, world: int, cfg: dict, device: torch.device, side_group, part_file: str) -> None:
    """Every length of cfg['lengths'] on this rank; rank 0 appends one JSON row per length to part_file. The ranks
    agree on each point's outcome over `side_group` (gloo on the host: usable after a CUDA out-of-memory)."""
    from fla.ops.cp import build_cp_context
    from fla.ops.utils.dispatch import use_backend

    model = _build_model(cfg, device)
    stopped_at = None
    # plain CPU: the PyTorch twins (what CPU users run); CUDA: the Triton kernels, as dispatch picks them
    with use_backend("torch") if device.type == "cpu" else contextlib.nullcontext():
        for T in cfg["lengths"]:
            row = dict(model=cfg["model"], world=world, T=T, tokens_per_rank=T // world, device=cfg["device_name"],
                       dtype=cfg["dtype"], note=CPU_NOTE if device.type == "cpu" else "")
            times, peak, status, error = [], None, "ok", ""
            if stopped_at is not None:
                status, row["note"] = "not run", f"OOM or error at T = {stopped_at}"
            elif T % world:
                status, row["note"] = "not run", f"T is not a multiple of {world}"
            else:
                try:
                    ctx = build_cp_context(None, dist.group.WORLD) if world > 1 else None
                    g = torch.Generator().manual_seed(T)
                    ids = torch.randint(1, cfg["vocab"], (1, T), generator=g)[:, rank * (T // world):
                                                                                 (rank + 1) * (T // world)]
                    ids = ids.contiguous().to(device)
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                        torch.cuda.reset_peak_memory_stats(device)
                    for i in range(cfg["warmup"] + cfg["iters"]):
                        ms = _step_ms(model, ids, ctx, T - 1, device)
                        if i >= cfg["warmup"]:
                            times.append(ms)
                    if device.type == "cuda":
                        peak = torch.cuda.max_memory_allocated(device) / 2 ** 30
                except torch.OutOfMemoryError:
                    status, times = "OOM", []
                    model.zero_grad(set_to_none=True)
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                except Exception as e:  # noqa: BLE001  (a row that says what failed, and the table still comes)
                    status, times, error = "error", [], f"{type(e).__name__}: {e}"[:300]
            everyone = _gather((status, times, peak, error), world, side_group)
            statuses = [s for s, *_ in everyone]
            if "OOM" in statuses:
                row["status"] = "OOM"
                row["note"] = "out of memory on rank " + ", ".join(str(r) for r, s in enumerate(statuses)
                                                                  if s == "OOM")
                stopped_at = T
            elif "error" in statuses:  # the same failure on every rank (a bug, a missing kernel): stop here
                row["status"], stopped_at = "error", T
                row["note"] = next(f"rank {r}: {e}" for r, (_, _, _, e) in enumerate(everyone) if e)
            elif "not run" in statuses:
                row["status"] = "not run"
            else:
                step = [max(ts) for ts in zip(*(t for _, t, _, _ in everyone))]  # the slowest rank bounds a step
                ms = statistics.median(step)
                peaks = [p for _, _, p, _ in everyone]
                row.update(status="ok", step_ms=round(ms, 3), tokens_per_s=round(T / (ms / 1e3), 1))
                if device.type == "cuda":
                    row.update(peak_mem_gib=round(max(peaks), 3),
                               peak_mem_gib_per_rank="/".join(f"{p:.2f}" for p in peaks))
            if rank == 0:
                with open(part_file, "a") as f:
                    f.write(json.dumps(row) + "\n")
                print(f"world {world} T {T}: {row['status']} {row.get('tokens_per_s', '')}", flush=True)


def _init(rank: int, world: int, cfg: dict):
    """Process group (NCCL on CUDA, gloo on CPU) and a host-side gloo group for the agreement; -> (device, side)."""
    local = int(os.environ.get("LOCAL_RANK", rank))  # torchrun sets it; spawned ranks are one node's GPUs
    device = torch.device("cuda", local % torch.cuda.device_count()) if cfg["cuda"] else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)  # before anything touches CUDA: no rank makes a context on GPU 0
        cfg["device_name"] = torch.cuda.get_device_name(device)
    if world == 1:
        return device, None
    if device.type == "cpu":
        torch.set_num_threads(cfg["threads"])  # the ranks share the cores: more threads each would only spin
    timeout = datetime.timedelta(seconds=cfg["timeout"])
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world,
                            timeout=timeout, **({"device_id": device} if device.type == "cuda" else {}))
    side = dist.new_group(backend="gloo", timeout=timeout) if device.type == "cuda" else dist.group.WORLD
    return device, side


def _speed_worker(rank: int, world: int, port: int, cfg: dict, part_file: str) -> None:
    sys.path.insert(0, str(REPO))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    device, side = _init(rank, world, cfg)
    _speed_points(rank, world, cfg, device, side, part_file)
    if world > 1:
        dist.destroy_process_group()


def _spawn_speed(world: int, cfg: dict, part_file: str) -> None:
    """One group of `world` processes for every length; a rank that dies or hangs (a peer's OOM inside a collective)
    leaves the points it did not finish, which the caller reports."""
    if cfg["cuda"]:
        ctx = mp.get_context("spawn")  # CUDA cannot fork
    else:  # CPU: import once here and fork (a spawned rank would spend ~10 s importing the models again)
        import transformers  # noqa: F401
        import fla.models  # noqa: F401
        ctx = mp.get_context("fork")
    port = _free_port()
    procs = [ctx.Process(target=_speed_worker, args=(r, world, port, cfg, part_file), daemon=True)
             for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + cfg["timeout"] * (len(cfg["lengths"]) + 1)
    failed_at = None  # once a rank has died, the others get a minute to finish (or to fail on its absence)
    while any(p.is_alive() for p in procs) and time.monotonic() < deadline:
        if failed_at is None and any(p.exitcode not in (None, 0) for p in procs):
            failed_at = time.monotonic()
        if failed_at is not None and time.monotonic() - failed_at > min(cfg["timeout"], 60):
            break
        time.sleep(0.2)
    for p in procs:
        if p.is_alive():
            p.kill()
        p.join()


def _read_part(part_file: str, cfg: dict, world: int) -> list[dict]:
    rows = []
    if os.path.exists(part_file):
        with open(part_file) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    done = {r["T"] for r in rows}
    for T in cfg["lengths"]:  # a point no rank reported: the group died there (or at an earlier point)
        if T not in done:
            rows.append(dict(model=cfg["model"], world=world, T=T, tokens_per_rank=T // world, status="failed",
                             device=cfg["device_name"], dtype=cfg["dtype"],
                             note="the process group died or hung before this point (see its log above)"))
    return sorted(rows, key=lambda r: r["T"])


def _speed_cfg(args) -> dict:
    cuda = torch.cuda.is_available() and not args.tiny
    text = args.lengths or ("64,128" if args.tiny else "8k,16k,32k,64k,128k,256k")
    lengths = [int(float(t.rstrip("k")) * (1024 if t.endswith("k") else 1)) for t in text.split(",")]
    tiny = dict(hidden=32, layers=2, vocab=64, warmup=1, iters=2)
    cfg = dict(model=args.model, hidden=args.hidden, layers=args.layers, vocab=args.vocab, lengths=lengths,
               warmup=args.warmup, iters=args.iters, set=args.set, dtype=args.dtype or
               ("bfloat16" if cuda else "float32"), cuda=cuda, timeout=args.timeout, threads=1,
               device_name="cuda" if cuda else "cpu")  # the GPU's name comes from the ranks (_init)
    if args.tiny:
        cfg.update(tiny, set=",".join(filter(None, (TINY_SET.get(args.model, ""), args.set))))
    return cfg


def _write_speed(rows: list[dict], paths, cfg: dict, worlds: list[int], merge: bool = False) -> None:
    old = []
    if merge and paths[0].exists():  # keep the other CP degrees' rows (one torchrun per degree builds one table)
        old = [r for r in report.read_csv(paths[0]) if int(r["world"]) not in worlds or r["model"] != cfg["model"]]
        for r in old:
            for k in ("world", "T", "tokens_per_rank"):
                r[k] = int(r[k])
            for k in ("step_ms", "tokens_per_s", "peak_mem_gib"):
                r[k] = float(r[k]) if r.get(k) else None
    rows = sorted(old + rows, key=lambda r: (r["model"], r["world"], r["T"]))
    shown = [dict(r, tokens_per_s="OOM" if r["status"] == "OOM" else r.get("tokens_per_s"),
                  peak_mem_gib="OOM" if r["status"] == "OOM" else r.get("peak_mem_gib")) for r in rows]
    device = ", ".join(dict.fromkeys(r["device"] for r in rows))
    title = (f"{cfg['model']} (hidden {cfg['hidden']}, {cfg['layers']} layers, vocab {cfg['vocab']}, {cfg['dtype']}, "
             f"{device}): forward + backward, CP degree = world"
             + ("; CPU wall times: not meaningful" if not cfg["cuda"] else ""))
    headers = {"world": "CP", "tokens_per_s": "tokens/s", "peak_mem_gib": "peak GiB (max rank)",
               "peak_mem_gib_per_rank": "peak GiB per rank"}
    table = io.StringIO()
    with contextlib.redirect_stdout(table):  # the same table on the terminal and in DIR/bench_cp_speed.md
        report.print_table(shown, ["model", "world", "T", "tokens_per_rank", "status", "tokens_per_s", "peak_mem_gib",
                                   "peak_mem_gib_per_rank", "note"], title=title, headers=headers)
    print(table.getvalue(), end="")
    md = paths[0].with_suffix(".md")
    md.write_text(table.getvalue().lstrip("\n"))
    print(f"wrote {md}")
    report.save(rows, paths, report.Plot(
        x="T", series=("cp",), logx=True, xlabel="global tokens T", title=f"{cfg['model']} under CP",
        panels=[("tokens/s", ["tokens_per_s"])] + ([("peak GiB per rank (max)", ["peak_mem_gib"])]
                                                  if cfg["cuda"] else []),
        notes=[] if cfg["cuda"] else [CPU_NOTE]), fields=SPEED_COLUMNS,
        plot_rows=[dict(r, cp=f"CP {r['world']}") for r in rows if r["status"] == "ok"])


def speed_main(args) -> list[dict]:
    cfg = _speed_cfg(args)
    paths = report.output_paths(args, "bench_cp_speed")
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # under torchrun: this process is one rank
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        part = str(paths[0].parent / f".bench_cp_speed_{world}.jsonl")
        if rank == 0 and os.path.exists(part):
            os.remove(part)
        device, side = _init(rank, world, cfg)
        _speed_points(rank, world, cfg, device, side, part)
        rows = _read_part(part, cfg, world) if rank == 0 else []
        if world > 1:
            dist.destroy_process_group()
        if rank == 0:
            os.remove(part)
            _write_speed(rows, paths, cfg, [world], merge=True)
        return rows
    worlds = [int(w) for w in args.worlds.split(",")]
    rows = []
    for world in worlds:
        if cfg["cuda"] and world > torch.cuda.device_count():  # NCCL takes one GPU per rank
            rows += [dict(model=cfg["model"], world=world, T=T, tokens_per_rank=T // world, status="not run",
                          device="cuda", dtype=cfg["dtype"],
                          note=f"needs {world} GPUs, {torch.cuda.device_count()} visible") for T in cfg["lengths"]]
            continue
        part = str(paths[0].parent / f".bench_cp_speed_{world}.jsonl")
        if os.path.exists(part):
            os.remove(part)
        _spawn_speed(world, cfg, part)
        rows += _read_part(part, cfg, world)
        if os.path.exists(part):
            os.remove(part)
    _write_speed(rows, paths, cfg, worlds)
    return rows


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    report.add_output_args(parser, "bench_cp", "bytes: H = 2, K = V = 16, T in (64, 256); --speed: CPU, gloo, "
                                               "2 ranks, a 2-layer hidden-32 model, T in (64, 128)")
    parser.add_argument("--worlds", default=None, help="CP degrees to run, comma-separated (bytes: 2,4; --speed: "
                                                        "1,2,4 on CUDA, 1,2 with --tiny); not used under torchrun")
    parser.add_argument("--speed", action="store_true", help="tokens/s and peak memory per rank against T "
                                                             "(writes DIR/bench_cp_speed.csv and .png)")
    speed = parser.add_argument_group("speed mode")
    speed.add_argument("--model", default="gated_deltanet", help="an fla.models model_type with cp_context")
    speed.add_argument("--hidden", type=int, default=1024)
    speed.add_argument("--layers", type=int, default=4)
    speed.add_argument("--vocab", type=int, default=32000)
    speed.add_argument("--set", default="", help="more config fields, key=value,... (e.g. num_heads=8,head_dim=128)")
    speed.add_argument("--lengths", default=None, help="global tokens T, comma-separated (default "
                                                       "8k,16k,32k,64k,128k,256k; 64,128 with --tiny)")
    speed.add_argument("--warmup", type=int, default=2)
    speed.add_argument("--iters", type=int, default=5)
    speed.add_argument("--dtype", default=None, help="parameter dtype (default bfloat16 on CUDA, float32 on CPU)")
    speed.add_argument("--timeout", type=int, default=300, help="seconds a collective may wait (a stuck point)")
    args = parser.parse_args(argv)
    if args.speed:
        args.worlds = args.worlds or ("1,2" if args.tiny or not torch.cuda.is_available() else "1,2,4")
        return speed_main(args)
    paths = report.output_paths(args, "bench_cp")
    sizes, lengths = ((2, 16, 16), (64, 256)) if args.tiny else ((8, 64, 64), (512, 2048))
    import fla.modules  # noqa: F401  (imported once, before the ranks fork: CPU only, nothing of CUDA is touched)
    import fla.ops  # noqa: F401
    rows = []
    for world in [int(w) for w in (args.worlds or "2,4").split(",")]:
        part = str(paths[0].parent / f".bench_cp_{world}.csv")
        mp.start_processes(_bytes_worker, args=(world, _free_port(), sizes, lengths, part), nprocs=world,
                           join=True, start_method="fork")
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
