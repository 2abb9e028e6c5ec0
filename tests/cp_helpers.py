"""Multi-rank launch for the context-parallel tests: spawn gloo ranks on this machine, run one check on each, and
fail the calling test with what every rank collected.

Each rank appends a line per mismatch to its `failures` list instead of asserting, and an exception is caught and
recorded the same way, so that every rank reaches the last collective and none hangs waiting for a failed one.
"""
from __future__ import annotations

import datetime
import os
import socket
import tempfile
import traceback
from typing import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, out_dir: str, check: Callable, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120))
    torch.set_num_threads(1)
    failures: list[str] = []
    try:
        check(rank, world, failures, *args)
    except Exception:
        failures.append(traceback.format_exc())
    with open(os.path.join(out_dir, f"rank{rank}.txt"), "w") as f:
        f.write("\n".join(failures))
    dist.destroy_process_group()


def run_on_ranks(check: Callable, world: int, *args) -> None:
    """Run `check(rank, world, failures, *args)` on `world` spawned gloo processes (one thread each) and assert that
    no rank recorded a failure. `check` must be a module-level function (the spawned processes import it)."""
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_rank_main, args=(world, _free_port(), out_dir, check, args), nprocs=world, join=True)
        failures = [open(os.path.join(out_dir, f"rank{r}.txt")).read() for r in range(world)]
    failures = [f for f in failures if f]
    assert not failures, "\n".join(failures)
