"""Metrics: a console line with a progress bar and ETA, `<dump_folder>/metrics.jsonl`, TensorBoard and W&B.

The TensorBoard and W&B writers are torchtitan's (`TensorBoardLogger`, `WandBLogger`). Its `MetricsProcessor` is
not used: it builds a CUDA memory monitor and expects torchtitan's ParallelDims, so it fails on a CPU box. What it
computes (throughput, MFU, peak memory) is the few lines of `throughput` and `peak_memory_gib` below.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import socket
import time
from collections import deque
from typing import Any

import torch


def peak_memory_gib(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocator peak on GPU, peak resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    try:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    except (ImportError, OSError):
        return float("nan")


def peak_flops(device: torch.device, override_tflops: float | None) -> float | None:
    """Peak bf16 FLOP/s of one device, for MFU: the config's value, else torchtitan's table for known GPUs."""
    if override_tflops is not None:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    from torchtitan.tools.utils import get_peak_flops
    return get_peak_flops(torch.cuda.get_device_name(device))


def _network_reachable(host: str = "api.wandb.ai", port: int = 443, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


class EtaEstimator:
    """Seconds left, from the pace of the recent steps: a moving window over the last half of this run's steps
    (at most `max_window`), measured from the end of its first step.

    The first step is left out (it compiles, warms up the allocator and waits for the first batch: on CPU with
    compile it can take longer than all others together), and an average over the whole run would carry that
    forever; a window over recent steps also takes in what repeats (validation, checkpoints) in its share."""

    def __init__(self, total_steps: int, max_window: int = 1000):
        self.total_steps = total_steps
        self.points: deque[tuple[int, float]] = deque(maxlen=max_window + 1)

    def update(self, step: int, now: float | None = None) -> None:
        """Call once at the end of every step."""
        self.points.append((step, time.monotonic() if now is None else now))

    def seconds_per_step(self) -> float:
        if len(self.points) < 2:
            return float("nan")
        last_step, last_time = self.points[-1]
        span = max(1, (len(self.points) - 1) // 2)
        first_step, first_time = self.points[-1 - span]
        return (last_time - first_time) / max(last_step - first_step, 1)

    def seconds_left(self) -> float:
        if not self.points:
            return float("nan")
        return self.seconds_per_step() * max(self.total_steps - self.points[-1][0], 0)


def progress_bar(done: int, total: int, width: int = 20) -> str:
    filled = int(width * min(done, total) / max(total, 1))
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def _set_aside_records_after(path: str, step: int) -> None:
    """A resumed run repeats the steps after its checkpoint: move the earlier run's records of those steps to
    `metrics.discarded.jsonl` (kept, never deleted), so `metrics.jsonl` holds each step once, in order."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.readlines()
    keep, drop = [], []
    for line in lines:
        try:
            later = json.loads(line)["step"] > step
        except (ValueError, KeyError, TypeError):
            later = False  # a torn last line from a kill mid-write: keep it where it is
        (drop if later else keep).append(line)
    if not drop:
        return
    with open(os.path.join(os.path.dirname(path), "metrics.discarded.jsonl"), "a") as f:
        f.writelines(drop)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(keep)
    os.replace(tmp, path)  # atomic: a kill here leaves the old file or the new one


class MetricsLogger:
    """Writes each logged step to every sink; only rank 0 writes (the values are already reduced).

    Args:
        dump_folder: job.dump_folder (metrics.jsonl, tb/, wandb/ go there)
        total_steps: training.steps, for the bar and the ETA
        start_step: the step the run resumed from (the ETA measures this run's own pace)
    """

    def __init__(self, dump_folder: str, *, total_steps: int, start_step: int = 0, rank: int = 0,
                 enable_tensorboard: bool = False, enable_wandb: bool = False, wandb_project: str = "flame",
                 config: dict[str, Any] | None = None):
        self.rank = rank
        self.total_steps = total_steps
        self.start_step = start_step
        self.start_time = time.monotonic()
        self.eta = EtaEstimator(total_steps)
        self.jsonl_path = os.path.join(dump_folder, "metrics.jsonl")
        self.sinks = []
        if rank != 0:
            return
        os.makedirs(dump_folder, exist_ok=True)
        _set_aside_records_after(self.jsonl_path, start_step)
        if enable_tensorboard:
            from torchtitan.components.metrics import TensorBoardLogger
            self.sinks.append(TensorBoardLogger(os.path.join(dump_folder, "tb")))
        if enable_wandb:
            if importlib.util.find_spec("wandb") is None:
                raise ValueError("metrics.enable_wandb needs the wandb package: pip install -e '.[wandb]' "
                                 "(or pass --metrics.enable_wandb false)")
            if "WANDB_MODE" not in os.environ and not _network_reachable():
                os.environ["WANDB_MODE"] = "offline"
                print("[metrics] no network: W&B runs offline (sync later with `wandb sync`)", flush=True)
            os.environ.setdefault("WANDB_PROJECT", wandb_project)
            from torchtitan.components.metrics import WandBLogger
            self.sinks.append(WandBLogger(os.path.join(dump_folder, "wandb"), config_dict=config))

    def step_done(self, step: int) -> None:
        """Every step, for the ETA."""
        self.eta.update(step)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        record = {"step": step, **metrics}
        with open(self.jsonl_path, "a") as f:
            f.write(json.dumps(record, default=float) + "\n")
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for key, value in metrics.items():
            if isinstance(value, dict):  # per-source tokens
                scalars.update({f"{key}/{k}": v for k, v in value.items()})
        for sink in self.sinks:
            sink.log(scalars, step)
        print(self.console_line(step, metrics), flush=True)

    def console_line(self, step: int, m: dict[str, Any]) -> str:
        eta = self.eta.seconds_left()
        parts = [f"step {step:>{len(str(self.total_steps))}d}/{self.total_steps} "
                 f"{progress_bar(step, self.total_steps)}", f"loss {m['loss']:.4f}"]
        if "grad_norm" in m:
            parts.append(f"gnorm {m['grad_norm']:.3f}")
        parts.append(f"lr {m['lr']:.2e}")
        parts.append(f"tok/s/dev {m['tokens_per_second_per_device']:,.0f}")
        if m.get("mfu") is not None:
            parts.append(f"mfu {m['mfu']:.1f}%")
        parts.append(f"mem {m['peak_memory_gib']:.2f}GiB")
        if m.get("skipped_steps"):
            parts.append(f"skipped {m['skipped_steps']}")
        parts.append(f"eta {format_duration(eta)}")
        return " | ".join(parts)

    def log_validation(self, step: int, metrics: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        with open(self.jsonl_path, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        for sink in self.sinks:
            sink.log(metrics, step)
        print(f"step {step} validation | " + " | ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                                                          if isinstance(v, float)), flush=True)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
