"""Distributed checkpoints (torch.distributed.checkpoint), written atomically, resumable on another world size.

Layout of `<dump_folder>/<checkpoint.folder>/step-N/`:
    .metadata, __*_*.distcp   DCP shards: model, optimizer, lr_scheduler (resharded on load)
    trainer_state.pt          step, tokens seen, skipped steps, every rank's RNG and data-loader state
    config.toml               the resolved job config
    meta.json                 step, world size, model config, package versions, git commit, seed flag
    COMPLETE                  written last: the size of every file above

A save writes into `step-N.tmp/` and renames it to `step-N/` only once every rank's shards, the trainer state and
the COMPLETE manifest are on disk, so a run killed mid-write leaves a `.tmp` folder that is never resumed from.

torchtitan's CheckpointManager works on CPU, but it asserts the same data-parallel size for the data loader on
resume, rejects keep_latest_k == 1 and has no commit marker; those three are the reason for this small module.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict
from torch.distributed.checkpoint.stateful import Stateful

from flame.distributed import all_gather_object, broadcast_object

STEP_RE = re.compile(r"^step-(\d+)$")
MARKER = "COMPLETE"
# Keys of a model config that do not change the weights' layout.
_IGNORED_MODEL_KEYS = {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "architectures",
                       "use_cache", "fuse_cross_entropy", "fuse_norm", "fuse_swiglu", "attn_mode",
                       "output_attentions", "output_hidden_states", "return_dict", "id2label", "label2id"}


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt or does not fit the model being trained."""


class ModelState(Stateful):
    """The model's full-FQN state dict (DTensor shards under FSDP2), so DCP can reshard it."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def state_dict(self) -> dict[str, Any]:
        return get_model_state_dict(self.model)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        set_model_state_dict(self.model, state_dict)


def package_versions() -> dict[str, str]:
    import importlib.metadata as md
    out = {}
    for name in ("torch", "triton", "torchtitan", "transformers", "datasets", "tokenizers", "fla-flame"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def git_commit() -> str | None:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def model_config_dict(model_config) -> dict[str, Any]:
    raw = model_config.to_dict() if hasattr(model_config, "to_dict") else dict(model_config)
    # Through JSON once, so a dict read back from meta.json compares equal (int keys become strings).
    return json.loads(json.dumps({k: v for k, v in raw.items() if k not in _IGNORED_MODEL_KEYS}, default=str))


def _fsync_write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _manifest(folder: str) -> dict[str, int]:
    return {name: os.path.getsize(os.path.join(folder, name)) for name in sorted(os.listdir(folder))
            if name != MARKER and os.path.isfile(os.path.join(folder, name))}


class Checkpointer:
    """Save every `interval` steps and at the end; resume from the latest complete checkpoint or a given step.

    Args:
        folder: the checkpoint folder (`<dump_folder>/<checkpoint.folder>`)
        interval: steps between saves
        keep_latest_k: complete checkpoints to keep (0 = all); older ones are removed only after a newer one is
            committed, so the last valid checkpoint is never removed
    """

    def __init__(self, folder: str, *, interval: int, keep_latest_k: int = 0, enable: bool = True):
        self.folder = folder
        self.interval = interval
        self.keep_latest_k = keep_latest_k
        self.enable = enable

    # ----------------------------------------------------------------------------------------------- listing
    def step_dir(self, step: int) -> str:
        return os.path.join(self.folder, f"step-{step}")

    def committed_steps(self) -> list[int]:
        """Steps with a `step-N` folder (committed by name; validity is checked when loading)."""
        if not os.path.isdir(self.folder):
            return []
        return sorted(int(m.group(1)) for m in map(STEP_RE.match, os.listdir(self.folder)) if m)

    def check(self, step: int) -> None:
        """Raise CheckpointError unless `step-N` is complete: marker present, every listed file of the listed
        size, DCP metadata present."""
        path = self.step_dir(step)
        if not os.path.isdir(path):
            have = self.committed_steps()
            raise CheckpointError(f"no checkpoint for step {step} in {self.folder}" +
                                  (f" (available steps: {have})" if have else " (the folder holds none)"))
        marker = os.path.join(path, MARKER)
        if not os.path.isfile(marker):
            raise CheckpointError(f"checkpoint {path} is incomplete or corrupt: its {MARKER} marker is missing. "
                                  f"Resume from another step with --checkpoint.load_step (available: "
                                  f"{self.committed_steps()}); nothing was deleted")
        try:
            with open(marker) as f:
                expected = json.load(f)["files"]
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"checkpoint {path} is corrupt: unreadable {MARKER} marker ({e})") from None
        actual = _manifest(path)
        for name, size in expected.items():
            if name not in actual:
                raise CheckpointError(f"checkpoint {path} is corrupt: file {name} is missing. Resume from another "
                                      f"step with --checkpoint.load_step (available: {self.committed_steps()})")
            if actual[name] != size:
                raise CheckpointError(f"checkpoint {path} is corrupt: {name} has {actual[name]} bytes, expected "
                                      f"{size}. Resume from another step with --checkpoint.load_step (available: "
                                      f"{self.committed_steps()})")

    def read_meta(self, step: int) -> dict[str, Any]:
        with open(os.path.join(self.step_dir(step), "meta.json")) as f:
            return json.load(f)

    # ----------------------------------------------------------------------------------------------- saving
    def should_save(self, step: int, last_step: int) -> bool:
        return self.enable and (step % self.interval == 0 or step == last_step)

    def save(self, step: int, *, model, optimizers=None, lr_schedulers=None, train_state: dict[str, Any],
             dataloader_state: Any = None, config_toml: str = "", model_config=None, seed_checkpoint: bool = False,
             crash_hook=None) -> bool:
        """Collective: every rank calls it. Returns False (and writes nothing) when step-N already exists."""
        final, tmp = self.step_dir(step), self.step_dir(step) + ".tmp"
        rank = dist.get_rank()
        exists = broadcast_object(os.path.exists(final) if rank == 0 else None)
        if exists:
            if rank == 0:
                print(f"[checkpoint] {final} already exists: not overwriting it", flush=True)
            return False
        if rank == 0:
            # A leftover .tmp is a write that never committed (a crash): it was never a checkpoint.
            if os.path.exists(tmp):
                shutil.rmtree(tmp)
            os.makedirs(tmp)
        dist.barrier()
        begin = time.monotonic()
        state: dict[str, Any] = {"model": ModelState(model)}
        if optimizers is not None:
            state["optimizer"] = optimizers
        if lr_schedulers is not None:
            state["lr_scheduler"] = lr_schedulers
        dcp.save(state, checkpoint_id=tmp)
        # Per-rank RNG states travel in one object written by rank 0: DCP would keep a single copy of a per-rank
        # key. The data-loader state is already global (flame.data gathers every rank's position in state_dict).
        rngs = all_gather_object(train_state.get("rng"))
        if crash_hook is not None:
            crash_hook()
        if rank == 0:
            trainer_state = {k: v for k, v in train_state.items() if k != "rng"}
            trainer_state["world_size"] = dist.get_world_size()
            trainer_state["rng"] = rngs
            trainer_state["dataloader"] = dataloader_state
            buffer_path = os.path.join(tmp, "trainer_state.pt")
            torch.save(trainer_state, buffer_path)
            _fsync_write(os.path.join(tmp, "config.toml"), config_toml.encode())
            meta = {"step": step, "world_size": dist.get_world_size(), "seed_checkpoint": seed_checkpoint,
                    "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "model_config": model_config_dict(model_config) if model_config is not None else None,
                    "versions": package_versions(), "git_commit": git_commit()}
            _fsync_write(os.path.join(tmp, "meta.json"), json.dumps(meta, indent=2, default=str).encode())
            _fsync_write(os.path.join(tmp, MARKER), json.dumps({"files": _manifest(tmp)}).encode())
            os.replace(tmp, final)
            print(f"[checkpoint] saved {final} in {time.monotonic() - begin:.1f}s", flush=True)
            self._purge()
        dist.barrier()
        return True

    def _purge(self) -> None:
        if self.keep_latest_k <= 0:
            return
        valid = []
        for step in self.committed_steps():
            try:
                self.check(step)
                valid.append(step)
            except CheckpointError:
                pass  # never delete what we cannot vouch for: someone may want to inspect it
        for step in valid[:-self.keep_latest_k]:
            shutil.rmtree(self.step_dir(step), ignore_errors=True)
            print(f"[checkpoint] removed {self.step_dir(step)} (keep_latest_k={self.keep_latest_k})", flush=True)

    # ----------------------------------------------------------------------------------------------- loading
    def resolve_step(self, load_step: int) -> int | None:
        """The step to resume from: `load_step`, or the latest committed one for -1 (None: start fresh)."""
        if load_step >= 0:
            return load_step
        steps = self.committed_steps()
        return steps[-1] if steps else None

    def load(self, step: int, *, model, optimizers=None, lr_schedulers=None, model_config=None) -> dict[str, Any]:
        """Load step-N into the live objects (resharding as needed); return the trainer state (with this rank's
        RNG state under 'rng' and the global data-loader state under 'dataloader'). Collective."""
        self.check(step)
        path = self.step_dir(step)
        meta = self.read_meta(step)
        if model_config is not None and meta.get("model_config") is not None:
            want, have = meta["model_config"], model_config_dict(model_config)
            diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
            if diff:
                details = ", ".join(f"{k}: checkpoint {want.get(k)!r} vs now {have.get(k)!r}" for k in diff[:6])
                raise CheckpointError(f"checkpoint {path} was written for another model ({details}). Use the "
                                      f"matching model.config or another checkpoint.folder")
        state: dict[str, Any] = {"model": ModelState(model)}
        seed = meta.get("seed_checkpoint", False)
        if not seed:
            if optimizers is not None:
                state["optimizer"] = optimizers
            if lr_schedulers is not None:
                state["lr_scheduler"] = lr_schedulers
        try:
            dcp.load(state, checkpoint_id=path)
        except (Exception, CheckpointException) as e:  # CheckpointException derives from BaseException
            raise CheckpointError(f"checkpoint {path} could not be loaded ({_first_failure(e)}). It is corrupt or "
                                  f"was written for another model or optimizer; nothing was deleted") from e
        if seed:
            return {"step": 0, "seed_checkpoint": True, "world_size": meta.get("world_size")}
        try:
            trainer_state = torch.load(os.path.join(path, "trainer_state.pt"), weights_only=False)
        except Exception as e:
            raise CheckpointError(f"checkpoint {path}: trainer_state.pt is unreadable ({e})") from e
        rank, world = dist.get_rank(), dist.get_world_size()
        rngs = trainer_state.get("rng") or []
        trainer_state["rng"] = rngs[rank] if trainer_state.get("world_size") == world and rank < len(rngs) else (
            rngs[0] if rngs else None)
        return trainer_state


def _first_failure(e: BaseException) -> str:
    """The root error of a DCP failure (a CheckpointException wraps one per rank)."""
    failures = getattr(e, "failures", None)
    if isinstance(failures, dict) and failures:
        inner = next(iter(failures.values()))
        e = inner[0] if isinstance(inner, tuple) else inner
    text = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}"


def crash_now() -> None:
    """Testing aid: die the way a preempted job dies (no cleanup, no flush)."""
    os.kill(os.getpid(), signal.SIGKILL)
