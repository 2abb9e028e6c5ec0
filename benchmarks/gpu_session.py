"""One GPU session: everything only a GPU shows, in one command under a time budget, as rows for RESULTS.md.

    python benchmarks/gpu_session.py [--out OUT] [--peer-path DIR] [--budget 480] [--append]
    python benchmarks/gpu_session.py --dry-run [--peer-path DIR]   # the plan: steps, commands, limits; runs nothing
    python benchmarks/gpu_session.py --tiny --out /tmp/session     # CPU: every step at smoke sizes (plumbing only)

Steps, in order (each a subprocess with its own time limit; one that fails or runs out of time is recorded as such
and the session goes on):
  env            device, driver and versions; which of flame's wheels are missing (then the train steps are skipped)
  check_bf16     bf16/fp16 correctness of every op against its float32 reference (check_bf16.py)
  ops_ours       bench_ops.py: the goal ops, parallel_attn and SDPA, bf16, B*T = 65536, H = 16, K = V = 128
  ops_peer       peer_ops.py --peer-path: the goal ops in fla-core (skipped without --peer-path)
  ops_compare    peer_ops.py --compare: ours / fla-core
  attn           bench_attn.py: softmax attention vs length, parallel_attn vs SDPA flash/cuDNN, the crossover (D = 128)
  modules        bench_modules.py: module speed and peak memory (FusedLinearCrossEntropy vs unfused)
  train_gla, train_transformer
                 bench_train.py: flame.train tokens/s, 340M models, 8 x 4096 tokens, compile on
  host           bench_host.py --tiny (if present): launches, PyTorch ops and syncs per call, ours and the peer's

Time: each step that will run has a planned share of `--budget` (PLAN below; with every step at --budget 480 they
are the seconds shown, otherwise scaled to fill the budget); a step may run until the sum of the shares up to and
including it has elapsed, so time an early step leaves unused goes to the later ones, and the session never runs
past the budget.

Output, in `--out` (at most seven files, rewritten after every step so that a session cut short still returns what
it measured): RESULTS-rows.md (a block ready for benchmarks/RESULTS.md), session.log (plan, each step's status and the
tail of its output), session.json, session.csv and session.png (each step's status, seconds and limit),
check_bf16.csv, steps.tar.gz (every step's full log, CSV and PNG: each step writes into its own folder, `--out
WORK/<step>`). `--append` also
appends the block to benchmarks/RESULTS.md. Exit status 1 if a step failed or ran out of time.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import hashlib
import importlib.util
import io
import json
import math
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import report  # noqa: E402

GOAL_OPS = ["chunk_gla", "chunk_simple_gla", "chunk_gated_delta_rule", "chunk_kda"]  # an op not there is skipped
OPS_LENGTHS = ["1024", "4096", "16384"]
FLAME_WHEELS = ["torchtitan", "datasets", "torchdata", "tyro", "dill", "multiprocess"]  # imported by flame.train
# goals from the issues (see RESULTS.md's status table)
GOAL_PEER_RATIO = 0.8           # ours / fla-core forward+backward
GOAL_CROSSOVER = 2048           # chunk_gla beats parallel_attn from T <= 2k
GOAL_FLCE_MEMORY = 0.25         # FusedLinearCrossEntropy peak memory vs unfused
GOAL_TRAIN = {"gla_340M": 1.2 * 87_000}  # tokens/s per device: 1.2x the peer flame's ~87k on one H100

# name -> planned seconds: the shares of the budget (less RESERVE_S) each step gets when every step runs; the shares
# of steps known to be skipped (no --peer-path, --steps) go to the others in proportion
PLAN = {"env": 20, "check_bf16": 100, "ops_ours": 40, "ops_peer": 70, "ops_compare": 5, "attn": 35, "modules": 25,
        "train_gla": 85, "train_transformer": 60, "host": 20}
# step -> the CSV it writes, relative to the work folder (each step's script writes into WORK/<step>/)
STEP_CSV = {"check_bf16": "check_bf16/check_bf16.csv", "ops_ours": "ops_ours/bench_ops.csv",
            "ops_peer": "ops_peer/peer_ops.csv", "ops_compare": "ops_compare/peer_compare.csv",
            "attn": "attn/bench_attn.csv", "modules": "modules/bench_modules.csv",
            "train_gla": "train_gla/bench_train.csv", "train_transformer": "train_transformer/bench_train.csv",
            "host": "host/bench_host.csv"}
RESERVE_S = 20  # the session's own start-up, and packing its outputs
MIN_STEP_S = 8  # a step with less time than this left is skipped, not started


@dataclass
class Step:
    name: str
    what: str
    argv: Callable[[float], list[str]]  # time limit -> command
    files: list[str] = field(default_factory=list)  # what it writes (in the work folder)
    skip: str | None = None             # why it will not run, known before the session starts
    needs: list[str] = field(default_factory=list)  # steps whose files it reads
    # filled in by the run
    status: str = "planned"
    rc: int | None = None
    seconds: float = 0.0
    limit: float = 0.0
    tail: str = ""


def build_steps(args: argparse.Namespace, work: Path) -> list[Step]:
    py = sys.executable
    tiny = ["--tiny"] if args.tiny else []
    w = lambda name: str(work / name)  # noqa: E731
    if args.tiny:  # CPU: the ops that smoke each script's plumbing fastest
        check_ops = ["--ops", "chunk_simple_gla", "parallel_attn", "rms_norm", "--dtypes", "float32"]
        bench = ["--ops", "chunk_gla", "chunk_simple_gla", "parallel_attn", "sdpa"]
        peer = ["--python", py, "--allow-ours"]  # ours standing in for the peer: proves the compare plumbing only
        peer_skip = None
    else:
        check_ops = []
        bench = ["--ops", *GOAL_OPS, "parallel_attn", "sdpa", "--T", *OPS_LENGTHS]
        peer = ["--peer-path", str(args.peer_path)] if args.peer_path else []
        peer_skip = None if args.peer_path else "no --peer-path (fla-core)"
    peer_bench = [a for a in bench if a not in ("parallel_attn", "sdpa")]
    train = ["--steps", "20", "--warmup", "8"] if not args.tiny else []
    host = HERE / "bench_host.py"
    steps = [
        Step("env", "device, driver, versions, missing wheels",
             lambda limit: [py, str(Path(__file__).resolve()), "--env-probe", w("env.json")]
             + (["--peer-path", str(args.peer_path)] if args.peer_path else []), ["env.json"]),
        Step("check_bf16", "bf16/fp16 correctness of every op vs its float32 reference",
             lambda limit: [py, str(HERE / "check_bf16.py"), *tiny, *check_ops, "--out", w("check_bf16"),
                            "--time-limit", f"{max(limit - 25, 5):.0f}"], [STEP_CSV["check_bf16"]]),
        Step("ops_ours", "op speed: ours and SDPA (bench_ops.py)",
             lambda limit: [py, str(HERE / "bench_ops.py"), *tiny, *bench, "--out", w("ops_ours")],
             [STEP_CSV["ops_ours"]]),
        Step("ops_peer", "op speed: fla-core (peer_ops.py)",
             lambda limit: [py, str(HERE / "peer_ops.py"), *peer, *tiny, *peer_bench, "--out", w("ops_peer")],
             [STEP_CSV["ops_peer"]], skip=peer_skip),
        Step("ops_compare", "ours / fla-core (peer_ops.py --compare)",
             lambda limit: [py, str(HERE / "peer_ops.py"), "--compare", w(STEP_CSV["ops_ours"]),
                            w(STEP_CSV["ops_peer"]), "--out", w("ops_compare")],
             skip=peer_skip, needs=["ops_ours", "ops_peer"]),
        Step("attn", "softmax attention vs length, crossover (bench_attn.py)",
             lambda limit: [py, str(HERE / "bench_attn.py"), *tiny, *([] if args.tiny else ["--dims", "128"]),
                            "--out", w("attn")], [STEP_CSV["attn"]]),
        Step("modules", "module speed and peak memory (bench_modules.py)",
             lambda limit: [py, str(HERE / "bench_modules.py"), *tiny, "--out", w("modules")],
             [STEP_CSV["modules"]]),
        Step("train_gla", "flame.train tokens/s, gla_340M (bench_train.py)",
             lambda limit: [py, str(HERE / "bench_train.py"), *tiny, "--models", "gla_340M", *train,
                            "--out", w("train_gla")], [STEP_CSV["train_gla"]]),
        Step("train_transformer", "flame.train tokens/s, transformer_340M (bench_train.py)",
             lambda limit: [py, str(HERE / "bench_train.py"), *tiny, "--models", "transformer_340M", *train,
                            "--out", w("train_transformer")], [STEP_CSV["train_transformer"]]),
        Step("host", "host work per call, ours and the peer's (bench_host.py)",
             lambda limit: [py, str(host), "--tiny", "--out", w("host")]
             + (["--peer-path", str(args.peer_path)] if args.peer_path else []), [STEP_CSV["host"]],
             skip=None if host.exists() else "benchmarks/bench_host.py not present"),
    ]
    if args.steps:
        for s in steps:
            if s.name not in args.steps and s.name != "env" and s.skip is None:  # env: the header's versions
                s.skip = "not selected (--steps)"
    return steps


def child_env(tiny: bool) -> dict:
    env = dict(os.environ)
    # ours first on the path (the scripts run as files, so the repository root is not on sys.path by itself)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.pop("TRITON_INTERPRET", None)  # compiled kernels on the GPU; check_bf16 --tiny sets it itself
    env.pop("FLA_BACKEND", None)       # no forced path: measure what users get
    env["PYTHONUNBUFFERED"] = "1"      # a killed step keeps its output up to the kill
    # the device machine reaches no network: fail at once instead of retrying hub look-ups
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env


def run_step(step: Step, limit: float, work: Path, env: dict) -> None:
    """Runs the step's command with a hard time limit (the whole process group: children included)."""
    argv = step.argv(limit)
    step.limit = limit
    log = work / f"{step.name}.log"
    begin = time.time()
    with open(log, "w") as f:
        f.write(f"$ {shlex.join(argv)}\n")
        f.flush()
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            step.rc = proc.wait(timeout=limit)
            step.status = "ok" if step.rc == 0 else f"failed (exit {step.rc})"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            step.rc = proc.returncode
            step.status = f"timed out after {limit:.0f} s"
    step.seconds = time.time() - begin
    step.tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])


# ---------------------------------------------------------------------------------------------------------------
# the environment probe (runs as its own process: the session itself never imports torch)
# ---------------------------------------------------------------------------------------------------------------

def env_probe(path: str, peer_path: str | None) -> int:
    info: dict = {"python": platform.python_version(), "host": platform.node()}
    import torch
    info["torch"] = torch.__version__
    info["cuda_runtime"] = torch.version.cuda
    info["cuda"] = torch.cuda.is_available()
    if info["cuda"]:
        p = torch.cuda.get_device_properties(0)
        info.update(device=torch.cuda.get_device_name(0), capability=f"{p.major}.{p.minor}",
                    sms=p.multi_processor_count, memory_gib=round(p.total_memory / 2**30, 1))
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            info["driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired, IndexError):
            info["driver"] = None
    for name in ("triton", "transformers"):
        try:
            info[name] = __import__(name).__version__
        except Exception as e:  # reported, not fatal: the steps that need it will say more
            info[name] = f"missing ({type(e).__name__})"
    info["missing_wheels"] = [m for m in FLAME_WHEELS if importlib.util.find_spec(m) is None]
    if peer_path:
        metas = sorted(Path(peer_path).glob("fla_core-*.dist-info"))
        info["peer"] = metas[-1].name[len("fla_core-"):-len(".dist-info")] if metas else "version unknown"
    Path(path).write_text(json.dumps(info, indent=1))
    print(json.dumps(info, indent=1))
    return 0


# ---------------------------------------------------------------------------------------------------------------
# RESULTS.md rows from the steps' CSVs
# ---------------------------------------------------------------------------------------------------------------

def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def t_label(T: int) -> str:
    return f"{T // 1024}k" if T % 1024 == 0 else str(T)


def verdict(ok: bool) -> str:
    return "meets" if ok else "misses"


def rows_check(step: Step, work: Path) -> list[list[str]]:
    rows = read_csv(work / STEP_CSV["check_bf16"])
    case = lambda r: (r["op"], r["dtype"], r["layout"], r["variant"])  # noqa: E731
    status: dict[tuple, str] = {}
    for r in rows:
        if status.get(case(r)) in ("FAIL", "error"):
            continue
        status[case(r)] = r["status"]
    n = {k: sum(v == k for v in status.values()) for k in ("pass", "FAIL", "error", "not run")}
    figure = (f"{n['pass']} of {len(status)} cases pass, {n['FAIL']} fail, {n['error']} error, {n['not run']} not run"
              + ("" if step.status == "ok" or n["FAIL"] or n["error"] else f" (step {step.status})"))
    for dtype in dict.fromkeys(r["dtype"] for r in rows):
        parts = []
        for kind, gate in (("values", False), ("gate grads", True)):
            errs = [(float(r["rel_err"]), r) for r in rows if r["dtype"] == dtype and r["rel_err"]
                    and (r["tensor"] in ("dg", "dbeta")) == gate and math.isfinite(float(r["rel_err"]))]
            if errs:
                e, r = max(errs, key=lambda x: x[0])
                parts.append(f"{kind} {e:.1e} ({r['tensor']} {r['op']} {r['layout']} {r['variant']}, "
                             f"bound {float(r['bound']):.0e})")
        if parts:
            figure += f"; worst {dtype}: " + ", ".join(parts)
    bad = [k for k, v in status.items() if v in ("FAIL", "error")]
    if bad:
        figure += "; failing: " + ", ".join(" ".join(k) for k in bad[:8]) + (" ..." if len(bad) > 8 else "")
    return [["bf16 / fp16 correctness of every op vs its float32 reference (fwd + every gradient; fixed and varlen; "
             "with and without initial state)", figure, "`benchmarks/check_bf16.py`"]]


def rows_ops(steps: dict[str, Step], work: Path) -> list[list[str]]:
    ours = {(r["op"], int(r["T"])): r for r in read_csv(work / STEP_CSV["ops_ours"])}
    peer_file = work / STEP_CSV["ops_peer"]
    peer = {(r["op"], int(r["T"])): r for r in read_csv(peer_file)} if peer_file.exists() else {}
    sizes = next(iter(ours.values()), None)
    where = (f"{sizes['dtype']}, B*T = {int(sizes['B']) * int(sizes['T'])}, H = {sizes['H']}, K = V = {sizes['K']}"
             if sizes else "")
    out = []
    for op in dict.fromkeys(o for o, _ in ours):
        if op == "sdpa":
            continue
        lengths = sorted(T for o, T in ours if o == op)
        if op == "parallel_attn":
            cells = [f"{t_label(T)} {float(ours[(op, T)]['fwdbwd_ms']):.2f} / "
                     f"{float(ours[('sdpa', T)]['fwdbwd_ms']):.2f} ms = "
                     f"{float(ours[(op, T)]['fwdbwd_ms']) / float(ours[('sdpa', T)]['fwdbwd_ms']):.2f}x"
                     for T in lengths if ("sdpa", T) in ours]
            out.append([f"parallel_attn vs PyTorch SDPA (its default backend) fwd+bwd, {where}",
                        "; ".join(cells) or "no SDPA figures", "`benchmarks/bench_ops.py`"])
            continue
        if peer and any((op, T) in peer for T in lengths):
            cells, ratios = [], []
            for T in lengths:
                if (op, T) in peer:
                    a, b = float(ours[(op, T)]["fwdbwd_ms"]), float(peer[(op, T)]["fwdbwd_ms"])
                    ratios.append(a / b)
                    cells.append(f"{t_label(T)} {a:.2f} / {b:.2f} ms = {a / b:.2f}x")
            geo = math.exp(sum(map(math.log, ratios)) / len(ratios))
            figure = "; ".join(cells) + f"; geometric mean {geo:.2f}x"
            if op in GOAL_OPS:
                figure += (f" ({verdict(max(ratios) <= GOAL_PEER_RATIO)} the goal, <= {GOAL_PEER_RATIO}x at every "
                           f"length; worst {max(ratios):.2f}x)")
            out.append([f"{op} fwd+bwd, ours / fla-core, {where}", figure,
                        "`benchmarks/bench_ops.py` + `peer_ops.py --peer-path`"])
        else:
            cells = [f"{t_label(T)} {float(ours[(op, T)]['fwdbwd_ms']):.2f} ms "
                     f"(fwd {float(ours[(op, T)]['fwd_ms']):.2f})" for T in lengths]
            why = steps["ops_peer"].skip or steps["ops_peer"].status
            out.append([f"{op} fwd+bwd, ours, {where}", "; ".join(cells) + f"; fla-core unmeasured ({why})",
                        "`benchmarks/bench_ops.py`"])
    return out


def crossover(rows: list[dict], D: int, method: str, ref: str) -> int | None:
    """Shortest length from which `method` beats `ref` at every measured length (bench_attn's rule)."""
    t = {(r["method"], int(r["T"])): float(r["fwdbwd_ms"]) for r in rows if int(r["D"]) == D}
    lengths = sorted({T for _, T in t})
    wins = [T for T in lengths if all((method, u) in t and (ref, u) in t and t[(method, u)] < t[(ref, u)]
                                      for u in lengths if u >= T)]
    return min(wins) if wins else None


def rows_attn(step: Step, work: Path) -> list[list[str]]:
    rows = read_csv(work / STEP_CSV["attn"])
    out = []
    methods = list(dict.fromkeys(r["method"] for r in rows))
    ref = "sdpa_flash" if "sdpa_flash" in methods else "sdpa"
    for D in sorted({int(r["D"]) for r in rows}):
        t = {(r["method"], int(r["T"])): float(r["fwdbwd_ms"]) for r in rows if int(r["D"]) == D}
        lengths = sorted({T for _, T in t})
        ratios = [(T, t[("parallel_attn", T)] / t[(ref, T)]) for T in lengths
                  if ("parallel_attn", T) in t and (ref, T) in t]
        if ratios:
            out.append([f"parallel_attn / {ref} fwd+bwd, D = {D}",
                        ", ".join(f"{t_label(T)} {r:.2f}x" for T, r in ratios)
                        + f" ({verdict(all(r <= 1 for _, r in ratios))} the goal, <= 1 at every length)",
                        "`benchmarks/bench_attn.py`"])
        cells = []
        for m in methods:
            if m in ("parallel_attn",) or m.startswith("sdpa"):
                continue
            T = crossover(rows, D, m, "parallel_attn")
            cell = f"{m} from T >= {T}" if T else f"{m} not within {t_label(lengths[0])}-{t_label(lengths[-1])}"
            if m == "chunk_gla":
                cell += f" ({verdict(T is not None and T <= GOAL_CROSSOVER)} the <= 2k goal)"
            cells.append(cell)
        if cells:
            out.append([f"crossover: linear op faster than parallel_attn (fwd+bwd) at every longer length, D = {D}",
                        "; ".join(cells), "`benchmarks/bench_attn.py`"])
    return out


def rows_modules(step: Step, work: Path) -> list[list[str]]:
    rows = read_csv(work / STEP_CSV["modules"])
    out = []
    flce = next((r for r in rows if r["module"] == "linear_cross_entropy"), None)
    if flce:
        ratio = float(flce["mem_ratio"])
        out.append([f"FusedLinearCrossEntropy peak memory vs lm_head + cross_entropy, {flce['tokens']} tokens, "
                    f"hidden {flce['hidden']}, vocab {flce['vocab']}, {flce['dtype']}",
                    f"{float(flce['ours_mb']):.0f} MB vs {float(flce['ref_mb']):.0f} MB = {ratio:.3f}x "
                    f"({verdict(ratio <= GOAL_FLCE_MEMORY)} the <= {GOAL_FLCE_MEMORY}x goal)",
                    "`benchmarks/bench_modules.py`"])
    if rows:
        out.append([f"fla.modules fwd+bwd speed-up over the PyTorch reference ({rows[0]['dtype']}, "
                    f"{rows[0]['tokens']} tokens, hidden {rows[0]['hidden']})",
                    ", ".join(f"{r['module']} {float(r['speedup']):.2f}x" for r in rows),
                    "`benchmarks/bench_modules.py`"])
    return out


def rows_train(step: Step, work: Path) -> list[list[str]]:
    out = []
    for r in read_csv(work / STEP_CSV[step.name]):
        tps = float(r["tokens_per_s_per_device"])
        figure = (f"{tps:,.0f} tokens/s per device, MFU {r['mfu_percent'] or '-'}%, peak {r['peak_memory_gib']} GiB, "
                  f"final loss {r['final_loss']} after {r['steps']} steps, {r['wall_s']} s wall")
        goal = GOAL_TRAIN.get(r["model"])
        if goal:
            figure += f" ({verdict(tps >= goal)} the >= {goal / 1000:.0f}k goal: 1.2x the peer flame's ~87k)"
        out.append([f"training {r['model']}, {r['nproc']} process(es), {r['batch_size']} x {r['seq_len']} tokens, "
                    f"compile {r['compile']}", figure, "`benchmarks/bench_train.py`"])
    return out


def rows_host(step: Step, work: Path) -> list[list[str]]:
    rows = read_csv(work / STEP_CSV["host"])
    by = {(r["library"], r["op"], r["mode"]): r for r in rows}
    cells = []
    for op in dict.fromkeys(r["op"] for r in rows):
        parts = []
        for mode in ("fixed", "varlen"):
            ours, peer = by.get(("ours", op, mode)), by.get(("peer", op, mode))
            if ours:
                text = f"{mode} {ours['launches']} launches / {ours['syncs_again']} syncs"
                if peer:
                    text += f" (fla-core {peer['launches']} / {peer['syncs_again']})"
                parts.append(text)
        if parts:
            cells.append(f"{op}: " + ", ".join(parts))
    return [["host work per fwd+bwd call (CPU proxy: kernel launches / device->host syncs per repeated call)",
             "; ".join(cells), "`benchmarks/bench_host.py --tiny`"]]


ROWS: dict[str, Callable] = {"check_bf16": rows_check, "attn": rows_attn, "modules": rows_modules,
                             "train_gla": rows_train, "train_transformer": rows_train, "host": rows_host}


def results_block(steps: list[Step], work: Path, info: dict, args: argparse.Namespace, wall: float) -> str:
    by = {s.name: s for s in steps}
    table: list[list[str]] = []
    for s in steps:
        if s.name in ("env", "ops_peer", "ops_compare"):
            continue
        builder = rows_ops if s.name == "ops_ours" else ROWS.get(s.name)
        produced = []
        if s.status not in ("planned", "skipped") and builder is not None and all(
                (work / f).exists() for f in s.files):
            try:
                produced = builder(by, work) if s.name == "ops_ours" else builder(s, work)
            except (OSError, KeyError, ValueError, ZeroDivisionError, StopIteration) as e:
                produced = [[s.what, f"could not read its output ({type(e).__name__}: {e}); see steps.tar.gz",
                             f"`{s.name}`"]]
        if produced:
            table += produced
            if s.status != "ok":
                table[-1][1] += f" (step {s.status}: figures may be partial)"
        elif s.status != "planned" and not (s.skip or "").startswith("not selected"):
            reason = s.skip if s.status == "skipped" else s.status
            table.append([s.what, f"unmeasured: {reason}", f"`{s.name}`"])
    for name in ("ops_peer", "ops_compare"):
        s = by[name]
        if s.status not in ("ok", "skipped", "planned"):
            table.append([s.what, f"{s.status}; see steps.tar.gz", f"`{s.name}`"])
    device = info.get("device") or ("cpu (smoke run: figures say nothing about a GPU)" if args.tiny else "no GPU")
    versions = ", ".join(f"{k} {info[k]}" for k in ("torch", "triton", "transformers", "cuda_runtime", "driver",
                                                    "python") if info.get(k))
    if info.get("peer"):
        versions += f", fla-core {info['peer']}"
    lines = [f"## GPU session: {device}, {datetime.date.today().isoformat()}", "",
             f"`benchmarks/gpu_session.py` at {source_id()}, budget {args.budget:.0f} s, wall {wall:.0f} s; "
             f"{versions or 'versions unknown (the env step did not run)'}.",
             "", "| what | figure | how |", "| --- | --- | --- |"]
    lines += ["| " + " | ".join(c.replace("|", "/").replace("\n", " ") for c in row) + " |" for row in table]
    return "\n".join(lines) + "\n"


def source_id() -> str:
    """The commit (when .git is there) and a hash of fla/ + flame/ + benchmarks/ sources, to tell which code ran."""
    h = hashlib.sha1()
    for path in sorted(p for d in ("fla", "flame", "benchmarks") for p in (REPO / d).rglob("*.py")):
        h.update(str(path.relative_to(REPO)).encode())
        h.update(path.read_bytes())
    commit = ""
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        if out.returncode == 0:
            dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "fla", "flame", "benchmarks"],
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            commit = f"commit {out.stdout.strip()}{' + local changes' if dirty else ''}, "
    except (OSError, subprocess.TimeoutExpired):
        pass
    return f"{commit}sources {h.hexdigest()[:12]}"


# ---------------------------------------------------------------------------------------------------------------
# the session
# ---------------------------------------------------------------------------------------------------------------

def deadlines(steps: list[Step], budget: float) -> dict[str, float]:
    """Step name -> seconds after the start by which it must end: the planned shares of the steps that will run,
    scaled so that they fill the budget less RESERVE_S (start-up, packing), summed in order."""
    running = [s for s in steps if s.skip is None]
    scale = max(budget - RESERVE_S, 0.0) / max(sum(PLAN[s.name] for s in running), 1)
    total, out = 0.0, {}
    for s in steps:
        if s.skip is None:
            total += PLAN[s.name] * scale
        out[s.name] = min(total, budget)
    return out


def print_plan(steps: list[Step], budget: float, work: Path) -> None:
    ends = deadlines(steps, budget)
    print(f"plan: budget {budget:.0f} s; each step may run until its deadline (seconds from the start)")
    previous = 0.0
    for s in steps:
        share = ends[s.name] - previous
        previous = ends[s.name]
        state = f"skip: {s.skip}" if s.skip else f"share {share:4.0f} s, ends by {ends[s.name]:4.0f} s"
        print(f"  {s.name:18s} {state}\n    {shlex.join(s.argv(share))}")
    print(f"step files in {work}")


def write_outputs(out: Path, work: Path, steps: list[Step], info: dict, args, wall: float, plan_text: str) -> str:
    block = results_block(steps, work, info, args, wall)
    (out / "RESULTS-rows.md").write_text(block)
    log = [plan_text, ""]
    for s in steps:
        log.append(f"== {s.name}: {s.status} ({s.seconds:.0f} s of {s.limit:.0f} s)"
                   + (f" [{s.skip}]" if s.status == "skipped" else ""))
        if s.tail:
            log.append(s.tail)
    (out / "session.log").write_text("\n".join(log) + "\n")
    (out / "session.json").write_text(json.dumps(
        {"env": info, "wall_s": round(wall, 1), "budget_s": args.budget,
         "steps": [dict(name=s.name, status=s.status, rc=s.rc, seconds=round(s.seconds, 1), limit=round(s.limit, 1),
                        skip=s.skip) for s in steps]}, indent=1))
    if (work / STEP_CSV["check_bf16"]).exists():
        shutil.copy(work / STEP_CSV["check_bf16"], out / "check_bf16.csv")
    rows = [dict(step=s.name, status=s.status, seconds=round(s.seconds, 1), limit=round(s.limit, 1),
                 skip=s.skip or "") for s in steps]
    with contextlib.redirect_stdout(io.StringIO()):  # rewritten after every step: not worth a line each time
        report.save(rows, (out / "session.csv", out / "session.png"), report.Plot(
            x="step", kind="bar", title=f"gpu_session steps, budget {args.budget:.0f} s",
            panels=[("seconds", ["seconds", "limit"])]))
    with tarfile.open(out / "steps.tar.gz", "w:gz") as tar:
        for path in sorted(work.iterdir()):
            tar.add(path, arcname=f"steps/{path.name}")
    return block


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=report.RESULTS / "gpu_session", metavar="DIR",
                        help="folder for the results (created; default benchmarks/results/gpu_session/)")
    parser.add_argument("--peer-path", type=Path, help="folder holding fla-core's fla/ (pip install --target DIR)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds for the whole session (default 480; 1500 with --tiny: the CPU is slow)")
    parser.add_argument("--steps", nargs="+", choices=list(PLAN), help="run only these steps (and env)")
    parser.add_argument("--work", type=Path, help="folder for the steps' logs and CSVs (default: a temporary one)")
    parser.add_argument("--append", action="store_true", help="also append the rows to benchmarks/RESULTS.md")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run of every step (figures are meaningless)")
    parser.add_argument("--env-probe", help=argparse.SUPPRESS)  # the env step: write device facts as JSON here
    args = parser.parse_args(argv)
    if args.env_probe:
        return env_probe(args.env_probe, str(args.peer_path) if args.peer_path else None)
    if args.peer_path and not (args.peer_path / "fla" / "__init__.py").exists():
        parser.error(f"--peer-path {args.peer_path} holds no fla/__init__.py: install fla-core there first "
                     "(pip install --no-deps --target DIR fla-core)")
    if args.append and args.tiny:
        parser.error("--append with --tiny would put CPU smoke figures into RESULTS.md")
    if args.budget is None:
        args.budget = 1500.0 if args.tiny else 480.0
    if args.dry_run:
        work = args.work.resolve() if args.work else Path("<a temporary folder>")
    else:
        # absolute: the steps run from the repository root, peer_ops' child from a scratch folder
        work = (args.work or Path(tempfile.mkdtemp(prefix="gpu_session-"))).resolve()
    steps = build_steps(args, work)
    if args.dry_run:
        print_plan(steps, args.budget, work)
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        print_plan(steps, args.budget, work)
    plan_text = buffer.getvalue()
    print(plan_text, flush=True)

    env = child_env(args.tiny)
    ends = deadlines(steps, args.budget)
    begin = time.time()
    info: dict = {}
    no_gpu = False
    by = {s.name: s for s in steps}
    for s in steps:
        elapsed = time.time() - begin
        limit = ends[s.name] - elapsed
        if s.skip is None and any(by[n].status != "ok" for n in s.needs):
            s.skip = "needs " + " and ".join(s.needs) + " to succeed"
        if s.skip is None and s.name.startswith("train") and info.get("missing_wheels"):
            s.skip = "missing wheels: " + ", ".join(info["missing_wheels"]) + " (see benchmarks/README.md)"
        if s.skip is None and limit < MIN_STEP_S:
            s.skip = f"budget spent ({elapsed:.0f} of {args.budget:.0f} s)"
        if s.skip is not None:
            s.status = "skipped"
            print(f"== {s.name}: skipped ({s.skip})", flush=True)
        else:
            print(f"== {s.name}: {s.what} (up to {limit:.0f} s)", flush=True)
            run_step(s, limit, work, env)
            tail = "\n".join("   | " + line for line in s.tail.splitlines()[-12:])
            print(f"   {s.status} in {s.seconds:.0f} s\n{tail}", flush=True)
        if s.name == "env":
            info = json.loads((work / "env.json").read_text()) if (work / "env.json").exists() else {}
            no_gpu = not args.tiny and s.status == "ok" and not info.get("cuda")
            if no_gpu:  # every figure would be a CPU one: say so instead (--tiny smokes the plumbing on CPU)
                for rest in steps[1:]:
                    rest.skip = "no CUDA device (torch.cuda.is_available() is False)"
        block = write_outputs(out, work, steps, info, args, time.time() - begin, plan_text)
    wall = time.time() - begin
    block = write_outputs(out, work, steps, info, args, wall, plan_text)
    print("\nsteps: " + ", ".join(f"{s.name} {s.status}" for s in steps))
    print(f"session {wall:.0f} s of {args.budget:.0f}; results in {out} (RESULTS-rows.md, session.log, "
          f"steps.tar.gz)\n")
    print(block)
    if args.append:
        results = HERE / "RESULTS.md"
        text = results.read_text()
        results.write_text(text + ("" if text.endswith("\n") else "\n") + "\n" + block)
        print(f"appended to {results}")
    if no_gpu:
        print("no CUDA device: nothing was measured (use --tiny for a CPU smoke run)")
        return 2
    return 1 if any(s.status.startswith(("failed", "timed out")) for s in steps) else 0


if __name__ == "__main__":
    sys.exit(main())
