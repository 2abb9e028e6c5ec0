"""Process group, device mesh and seeds.

torchtitan's `init_distributed` picks NCCL and its `ParallelDims.build_mesh` assumes CUDA, so both fail on a CPU box;
this is the small part we write ourselves: NCCL on CUDA, gloo on CPU, and a one-process group for a plain
`python -m flame.train` (FSDP2, DCP and the loggers then run the same code path as under torchrun).
"""
from __future__ import annotations

import os
import random
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh


@dataclass
class World:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    mesh: DeviceMesh
    cpu_group: Any = None  # gloo group for host-side coordination (None: the default group is gloo already)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(timeout_s: int = 1800) -> World:
    """Join (or create) the default process group and build a 1-D data-parallel mesh over all ranks."""
    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s),
                                    device_id=device if backend == "nccl" else None)
        else:
            # One process: an in-memory store needs no port.
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1,
                                    timeout=timedelta(seconds=timeout_s))
    rank, world_size = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh(device.type, (world_size,), mesh_dim_names=("dp_shard",))
    cpu_group = dist.new_group(backend="gloo") if backend == "nccl" and world_size > 1 else None
    return World(rank=rank, world_size=world_size, local_rank=local_rank, device=device, mesh=mesh,
                 cpu_group=cpu_group)


def wait_for_every_rank(world: World, timeout_s: float = 30.0) -> None:
    """Return once every rank got here, or after `timeout_s` (best effort). Before an error exit: torchrun stops the
    other ranks as soon as one exits, so without this a rank can be killed before it has said what was wrong."""
    if world.world_size == 1 or not dist.is_initialized():
        return
    start = time.monotonic()
    try:
        dist.monitored_barrier(group=world.cpu_group, timeout=timedelta(seconds=timeout_s), wait_all_ranks=True)
    except RuntimeError as e:
        print(f"flame.train: (rank {world.rank}) not every rank reached the error exit: {str(e).splitlines()[0]}",
              file=sys.stderr, flush=True)
        # some rank is elsewhere (its own error, or a hang): exit anyway, but not at once: a barrier that failed
        # early (seen once on a loaded box: one rank's error line missing) would let torchrun stop the others
        # before they print
        time.sleep(max(0.0, min(timeout_s, 5.0) - (time.monotonic() - start)))


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def set_seed(seed: int, deterministic: bool = False) -> None:
    """Seed every RNG the run touches. All ranks use the same seed: weights are initialised identically before
    sharding, and the data loader shards by rank itself (its own seed)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # CPU and every CUDA device
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def rng_state() -> dict:
    """Every RNG's state as tensors and plain Python values, so a checkpoint loads with torch's weights-only
    unpickler (NumPy's own state holds an ndarray)."""
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"python": [version, list(internal), gauss_next],
             "numpy": {"bit_generator": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    """Restore `rng_state()`; also takes the tuple form older checkpoints hold."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        numpy_state = (numpy_state["bit_generator"], np.asarray(numpy_state["keys"], dtype=np.uint32),
                       numpy_state["pos"], numpy_state["has_gauss"], numpy_state["cached_gaussian"])
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def all_gather_object(obj):
    """Every rank's `obj`, in rank order."""
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum across ranks (a copy; the input is left as it was)."""
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def build_fsdp_mesh(world: World, replicate_degree: int = 1, shard_degree: int = -1, cp_degree: int = 1
                    ) -> DeviceMesh:
    """The mesh FSDP2 shards over: `world.mesh` (1-D, all ranks) for plain FSDP, or a 2-D (dp_replicate, dp_shard)
    mesh for HSDP, where each group of `world / replicate_degree` ranks holds one sharded copy and the copies
    average their gradients (fully_shard on a 2-D mesh). The loss scaling is the same: gradients are averaged over
    all ranks. With context parallelism (`cp_degree` consecutive ranks per sample) a copy's shard group is its
    dp_shard x cp ranks flattened (they are consecutive), so `shard_degree` counts data-parallel shards only:
    ranks = replicate x shard x cp."""
    from flame.config import ConfigError
    if not isinstance(replicate_degree, int) or replicate_degree < 1 or world.world_size % replicate_degree:
        raise ConfigError(f"parallelism.data_parallel_replicate_degree={replicate_degree} must be a positive divisor "
                          f"of the {world.world_size} ranks")
    shard = world.world_size // replicate_degree
    if shard % cp_degree:
        raise ConfigError(f"parallelism.data_parallel_replicate_degree={replicate_degree} x context_parallel_degree="
                          f"{cp_degree} must divide the {world.world_size} ranks (ranks = replicate x shard x cp)")
    if shard_degree not in (-1, shard // cp_degree):
        cp_note = f" and context_parallel_degree={cp_degree}" if cp_degree > 1 else ""
        raise ConfigError(f"parallelism.data_parallel_shard_degree={shard_degree}: with "
                          f"data_parallel_replicate_degree={replicate_degree}{cp_note} on {world.world_size} ranks it "
                          f"must be {shard // cp_degree} (or -1)")
    if replicate_degree == 1:
        return world.mesh
    return init_device_mesh(world.device.type, (replicate_degree, shard), mesh_dim_names=("dp_replicate", "dp_shard"))


@dataclass
class ContextParallel:
    """The (dp, cp) layout of context parallelism: `degree` consecutive ranks split every sample (global rank
    = dp_rank * degree + cp rank), each data-parallel group of them reads one batch. FSDP shards over dp x cp
    flattened, which is every rank in order: the world's own 1-D mesh, so checkpoints are laid out as without CP
    (with HSDP: each replica's dp_shard x cp ranks, consecutive, see build_fsdp_mesh)."""
    degree: int = 1
    group: Any = None  # the CP process group (None when degree == 1)
    rank: int = 0  # this rank's piece of the sample
    dp_rank: int = 0
    dp_size: int = 1
    mesh: DeviceMesh | None = None  # (dp, cp)


def build_context_parallel(world: World, degree: int = 1) -> ContextParallel:
    """`parallelism.context_parallel_degree` -> the (dp, cp) mesh and this rank's place in it."""
    from flame.config import ConfigError
    if not isinstance(degree, int) or degree < 1 or world.world_size % degree:
        raise ConfigError(f"parallelism.context_parallel_degree={degree} must be a positive divisor of the "
                          f"{world.world_size} ranks (ranks = data parallel x context parallel)")
    if degree == 1:
        return ContextParallel(dp_rank=world.rank, dp_size=world.world_size)
    mesh = init_device_mesh(world.device.type, (world.world_size // degree, degree), mesh_dim_names=("dp", "cp"))
    return ContextParallel(degree=degree, group=mesh.get_group("cp"), rank=mesh.get_local_rank("cp"),
                           dp_rank=mesh.get_local_rank("dp"), dp_size=world.world_size // degree, mesh=mesh)


def check_model_for_cp(model, cp: ContextParallel) -> None:
    """Before any weight is allocated: a model with a layer that has no context-parallel path is one clear error."""
    from flame.config import ConfigError
    backbone = getattr(model, "model", model)
    if cp.degree == 1 or not hasattr(backbone, "cp_unsupported_layers"):
        return
    unsupported = backbone.cp_unsupported_layers()
    if unsupported:
        raise ConfigError(f"parallelism.context_parallel_degree={cp.degree}: {type(model).__name__} has layers "
                          f"without context parallelism ({', '.join(unsupported)}); use context_parallel_degree = "
                          f"1 for this model (docs/context_parallel.md lists the layers that have it)")


def split_for_cp(inputs: dict, n_targets: int, cp: ContextParallel | None) -> tuple[dict, int]:
    """Model inputs of a whole sample (input_ids / labels [B, T], packed: [1, T] with the global cu_seqlens) ->
    this rank's piece of them with its `cp_context`, and the number of targets the piece scores (the global
    next-token targets in it: the model takes the piece's last target from the next rank). The loss is then the
    piece's sum over `num_items_in_batch` = its own target count (0 targets: loss 0, not NaN), which the trainer
    weights by that count over the global one, as for a microbatch. Unchanged without CP."""
    if cp is None or cp.degree == 1:
        return inputs, n_targets
    from fla.models.modeling_base import shift_labels
    from fla.ops.cp import build_cp_context
    labels, cu_seqlens = inputs["labels"], inputs.get("cu_seqlens")
    T = labels.shape[1]
    piece = slice(cp.rank * (T // cp.degree), (cp.rank + 1) * (T // cp.degree))
    targets = shift_labels(labels, inputs.get("cu_seqlens_cpu"))[:, piece]
    n_local = int((targets != -100).sum())
    context = build_cp_context(cu_seqlens, cp.group, cu_seqlens_cpu=inputs.get("cu_seqlens_cpu"))
    local = {"input_ids": inputs["input_ids"][:, piece].contiguous(), "labels": labels[:, piece].contiguous(),
             "cp_context": context, "num_items_in_batch": max(n_local, 1)}
    return local, n_local
