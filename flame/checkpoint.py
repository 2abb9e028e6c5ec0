"""Distributed checkpoints (torch.distributed.checkpoint), written atomically, resumable on another world size.

Layout of `<dump_folder>/<checkpoint.folder>/step-N/`:
    .metadata, __*_*.distcp   DCP shards: model, optimizer, lr_scheduler (resharded on load)
    trainer_state.pt          step, tokens seen, skipped steps, every rank's RNG and data-loader state (tensors and
                              plain values only: it loads with torch.load(weights_only=True))
    config.toml               the resolved job config
    meta.json                 step, world size, model config, package versions, git commit, seed flag
    COMPLETE                  written last: the size and crc32 of every file above, hashed as the bytes were written

A save writes into `step-N.tmp/` and renames it to `step-N/` only once every rank's shards, the trainer state and
the COMPLETE manifest are on disk, so a run killed mid-write leaves a `.tmp` folder that is never resumed from. A
save that fails (a full disk) removes its own `.tmp` and says so on every rank. A resume checks every file's size
and crc32 before loading anything, and reads every pickle through an allowlist (flame.safe_pickle).

torchtitan's CheckpointManager works on CPU, but it asserts the same data-parallel size for the data loader on
resume, rejects keep_latest_k == 1 and has no commit marker; those three are the reason for this small module.
"""
from __future__ import annotations

import errno
import io
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
from flame.hashing import HASH_NAME, HashingFileSystemWriter, hash_file, write_file
from flame.safe_pickle import (SafeFileSystemReader, SafeLoadPlanner, UnsafeCheckpointError, load_dcp_metadata,
                               load_trainer_state)

STEP_RE = re.compile(r"^step-(\d+)$")
MARKER = "COMPLETE"
MANIFEST_FORMAT = 2  # 1 (implicit): sizes only; 2: sizes and crc32
TRAINER_STATE_FORMAT = "flame.trainer_state/2"
# Keys of a model config that do not change the weights' layout.
_IGNORED_MODEL_KEYS = {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "architectures", "auto_map",
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


def _manifest(folder: str) -> dict[str, int]:
    return {name: os.path.getsize(os.path.join(folder, name)) for name in sorted(os.listdir(folder))
            if name != MARKER and os.path.isfile(os.path.join(folder, name))}


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gathered(obj) -> list:
    """all_gather_object, or [obj] without a process group (a tool reading a checkpoint in one process)."""
    return all_gather_object(obj) if _rank_world()[1] > 1 else [obj]


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

    def _read_manifest(self, step: int) -> dict[str, Any]:
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
                manifest = json.load(f)
            if not isinstance(manifest.get("files"), dict):
                raise KeyError("files")
            return manifest
        except (ValueError, KeyError, AttributeError) as e:
            raise CheckpointError(f"checkpoint {path} is corrupt: unreadable {MARKER} marker ({e})") from None

    def check(self, step: int) -> None:
        """Raise CheckpointError unless `step-N` is complete: marker present, every listed file of the listed
        size, DCP metadata present. Cheap (no file is read); `verify` also checks the contents."""
        path = self.step_dir(step)
        expected = self._read_manifest(step)["files"]
        actual = _manifest(path)
        for name, size in expected.items():
            if name not in actual:
                raise CheckpointError(f"checkpoint {path} is corrupt: file {name} is missing. Resume from another "
                                      f"step with --checkpoint.load_step (available: {self.committed_steps()})")
            if actual[name] != size:
                raise CheckpointError(f"checkpoint {path} is corrupt: {name} has {actual[name]} bytes, expected "
                                      f"{size}. Resume from another step with --checkpoint.load_step (available: "
                                      f"{self.committed_steps()})")

    def _mismatches(self, step: int) -> list[str] | None:
        """Files of step-N whose crc32 differs from the manifest's (None: a manifest without hashes). Collective:
        the files are hashed in parallel, each rank a share, largest first."""
        manifest = self._read_manifest(step)
        expected = manifest.get(HASH_NAME)
        if not isinstance(expected, dict):
            return None
        rank, world = _rank_world()
        files = manifest["files"]
        names = sorted(expected, key=lambda n: (-int(files.get(n, 0)), n))
        mine = [n for n in names[rank::world] if hash_file(os.path.join(self.step_dir(step), n)) != expected[n]]
        return sorted(n for bad in _gathered(mine) for n in bad)

    def verify(self, step: int) -> bool:
        """`check`, then the crc32 of every file (collective). Returns False for a checkpoint written before
        manifests held hashes (sizes checked only)."""
        self.check(step)
        bad = self._mismatches(step)
        if bad is None:
            return False
        if bad:
            files = ", ".join(bad[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
            raise CheckpointError(f"checkpoint {self.step_dir(step)} is corrupt: {files} "
                                  f"{'does' if len(bad) == 1 else 'do'} not match the {HASH_NAME} recorded when "
                                  f"written (the bytes changed since; the size did not). {self._intact(step)}; "
                                  f"nothing was deleted")
        return True

    def _intact(self, broken: int) -> str:
        """Which other steps are intact: the newest one whose contents verify (collective), and those that pass
        the size check on the way there."""
        by_size = []
        for step in reversed(self.committed_steps()):
            if step == broken:
                continue
            try:
                self.check(step)
                bad = self._mismatches(step)
            except CheckpointError:
                continue
            if bad is None:
                by_size.append(step)  # written before content hashes: sizes are all there is
            elif not bad:
                also = f"; complete by size (contents not checked): {sorted(by_size)}" if by_size else ""
                return (f"Intact: step {step} (contents verified{also}); resume from it with "
                        f"--checkpoint.load_step {step}")
        if by_size:
            return (f"Complete by size (written before content hashes, contents not checked): steps "
                    f"{sorted(by_size)}; resume from one with --checkpoint.load_step")
        return f"No other checkpoint in {self.folder} is intact"

    def read_meta(self, step: int) -> dict[str, Any]:
        with open(os.path.join(self.step_dir(step), "meta.json")) as f:
            return json.load(f)

    # ----------------------------------------------------------------------------------------------- saving
    def should_save(self, step: int, last_step: int) -> bool:
        return self.enable and (step % self.interval == 0 or step == last_step)

    def save(self, step: int, *, model, optimizers=None, lr_schedulers=None, train_state: dict[str, Any],
             dataloader_state: Any = None, config_toml: str = "", model_config=None, seed_checkpoint: bool = False,
             crash_hook=None) -> bool:
        """Collective: every rank calls it. Returns False (and writes nothing) when step-N already exists. A failed
        write (e.g. a full disk) removes step-N.tmp and raises CheckpointError on every rank."""
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
        writer = HashingFileSystemWriter(tmp)
        try:
            dcp.save(state, storage_writer=writer)
        except (Exception, CheckpointException) as e:  # DCP raises on every rank when any rank's write failed
            dist.barrier()
            self._abandon(step, tmp, e, rank)
        # Per-rank RNG states travel in one object written by rank 0: DCP would keep a single copy of a per-rank
        # key. The data-loader state is already global (flame.data gathers every rank's position in state_dict).
        rngs = all_gather_object(train_state.get("rng"))
        written = all_gather_object(writer.hashes)
        if crash_hook is not None:
            crash_hook()
        failure = None
        if rank == 0:
            try:
                self._commit(step, tmp, final, written, rngs, train_state, dataloader_state, config_toml,
                             model_config, seed_checkpoint)
            except Exception as e:  # as text: the other ranks raise it too (the original may not pickle)
                failure = (f"{type(e).__name__}: {e}", getattr(e, "errno", None))
        failure = broadcast_object(failure)
        if failure is not None:
            message, code = failure
            self._abandon(step, tmp, OSError(code, message) if code else RuntimeError(message), rank)
        if rank == 0:
            print(f"[checkpoint] saved {final} in {time.monotonic() - begin:.1f}s", flush=True)
            self._purge()
        dist.barrier()
        return True

    def _commit(self, step, tmp, final, written, rngs, train_state, dataloader_state, config_toml, model_config,
                seed_checkpoint) -> None:
        """Rank 0: the trainer state, config and meta, then the manifest, then the rename that commits."""
        hashes: dict[str, tuple[int, str]] = {}
        for per_rank in written:
            hashes.update(per_rank)
        trainer_state = {k: v for k, v in train_state.items() if k != "rng"}
        trainer_state.update(format=TRAINER_STATE_FORMAT, world_size=dist.get_world_size(), rng=rngs,
                             dataloader=dataloader_state)
        buffer = io.BytesIO()
        torch.save(trainer_state, buffer)
        hashes["trainer_state.pt"] = write_file(os.path.join(tmp, "trainer_state.pt"), buffer.getvalue())
        hashes["config.toml"] = write_file(os.path.join(tmp, "config.toml"), config_toml.encode())
        meta = {"step": step, "world_size": dist.get_world_size(), "seed_checkpoint": seed_checkpoint,
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "model_config": model_config_dict(model_config) if model_config is not None else None,
                "versions": package_versions(), "git_commit": git_commit()}
        hashes["meta.json"] = write_file(os.path.join(tmp, "meta.json"),
                                         json.dumps(meta, indent=2, default=str).encode())
        on_disk = _manifest(tmp)
        # A file DCP wrote past our hashing stream (none with torch 2.13) is hashed from disk, and named.
        from_disk = sorted(n for n, size in on_disk.items() if hashes.get(n, (None,))[0] != size)
        for name in from_disk:
            hashes[name] = (on_disk[name], hash_file(os.path.join(tmp, name)))
        manifest = {"format": MANIFEST_FORMAT, "files": on_disk, HASH_NAME: {n: hashes[n][1] for n in on_disk}}
        if from_disk:
            manifest["hashed_from_disk"] = from_disk
        write_file(os.path.join(tmp, MARKER), json.dumps(manifest).encode())
        os.replace(tmp, final)

    def _abandon(self, step: int, tmp: str, error: BaseException, rank: int) -> None:
        """Every rank, after a failed write: rank 0 removes this save's own .tmp; all raise the same error."""
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        saved = [s for s in self.committed_steps() if s != step]
        kept = (f"the checkpoints already saved are untouched (steps {saved})" if saved else
                "no earlier checkpoint exists")
        if _disk_full(error):
            try:
                free = f"{shutil.disk_usage(self.folder).free / 2**20:,.0f} MiB free"
            except OSError:
                free = "free space unknown"
            raise CheckpointError(f"no space left on {self.folder} ({free}) while writing checkpoint step {step}: "
                                  f"removed its partial {os.path.basename(tmp)}; {kept}. Free space there or point "
                                  f"job.dump_folder / checkpoint.folder to a disk with room") from None
        raise CheckpointError(f"could not write checkpoint step {step} to {tmp} ({_first_failure(error)}): "
                              f"removed its partial {os.path.basename(tmp)}; {kept}") from None

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

    def set_aside_newer(self, step: int) -> list[str]:
        """A rewind: move every committed step after `step` to `step-M.rewound-<UTC time>` (nothing is deleted),
        so that this run saves its own step-M and the newest checkpoint is its own. Collective; rank 0 renames."""
        moved = []
        if dist.get_rank() == 0:
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            for newer in (s for s in self.committed_steps() if s > step):
                source = self.step_dir(newer)
                target, n = f"{source}.rewound-{stamp}", 1
                while os.path.exists(target):
                    n += 1
                    target = f"{source}.rewound-{stamp}-{n}"
                os.rename(source, target)
                moved.append(os.path.basename(target))
            if moved:
                print(f"[checkpoint] rewinding to step {step}: moved the newer checkpoints aside as {moved} "
                      f"(nothing was deleted); this run saves its own from here", flush=True)
        return broadcast_object(moved)

    def load(self, step: int, *, model, optimizers=None, lr_schedulers=None, model_config=None) -> dict[str, Any]:
        """Load step-N into the live objects (resharding as needed); return the trainer state (with this rank's
        RNG state under 'rng' and the global data-loader state under 'dataloader'). Collective.

        Every file's size and crc32 are checked first; no pickle in the folder is read outside an allowlist."""
        hashed = self.verify(step)
        path = self.step_dir(step)
        if not hashed and _rank_world()[0] == 0:
            print(f"[checkpoint] {path} was written before manifests held content hashes: its sizes were checked, "
                  f"its contents cannot be", flush=True)
        meta = self.read_meta(step)
        if model_config is not None and meta.get("model_config") is not None:
            want, have = meta["model_config"], model_config_dict(model_config)
            diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
            if diff:
                details = ", ".join(f"{k}: checkpoint {want.get(k)!r} vs now {have.get(k)!r}" for k in diff[:6])
                raise CheckpointError(f"checkpoint {path} was written for another model ({details}). Use the "
                                      f"matching model.config or another checkpoint.folder")
        seed = meta.get("seed_checkpoint", False)
        trainer_state = None if seed else self._read_trainer_state(path)
        try:
            load_dcp_metadata(os.path.join(path, ".metadata"))  # refused here, before DCP's fallbacks blur it
        except UnsafeCheckpointError as e:
            raise CheckpointError(str(e)) from None
        except (OSError, ValueError) as e:
            raise CheckpointError(f"checkpoint {path} is corrupt: {e}; nothing was deleted") from None
        state: dict[str, Any] = {"model": ModelState(model)}
        if not seed:
            if optimizers is not None:
                state["optimizer"] = optimizers
            if lr_schedulers is not None:
                state["lr_scheduler"] = lr_schedulers
        try:
            dcp.load(state, storage_reader=SafeFileSystemReader(path), planner=SafeLoadPlanner())
        except (Exception, CheckpointException) as e:  # CheckpointException derives from BaseException
            unsafe = next((x for x in _root_errors(e) if isinstance(x, UnsafeCheckpointError)), None)
            if unsafe is not None:
                raise CheckpointError(f"checkpoint {path}: {unsafe}") from None
            raise CheckpointError(f"checkpoint {path} could not be loaded ({_first_failure(e)}). It is corrupt or "
                                  f"was written for another model or optimizer; nothing was deleted") from e
        if seed:
            return {"step": 0, "seed_checkpoint": True, "world_size": meta.get("world_size")}
        rank, world = dist.get_rank(), dist.get_world_size()
        rngs = trainer_state.get("rng") or []
        trainer_state["rng"] = rngs[rank] if trainer_state.get("world_size") == world and rank < len(rngs) else (
            rngs[0] if rngs else None)
        return trainer_state

    def _read_trainer_state(self, path: str) -> dict[str, Any]:
        file = os.path.join(path, "trainer_state.pt")
        try:
            state, legacy = load_trainer_state(file)
        except UnsafeCheckpointError as e:
            raise CheckpointError(str(e)) from None
        except Exception as e:
            raise CheckpointError(f"checkpoint {path}: trainer_state.pt is unreadable ({e})") from e
        if legacy and _rank_world()[0] == 0:
            print(f"[checkpoint] {file} is in the older format (NumPy's RNG state as an ndarray): read with NumPy "
                  f"arrays allowed and nothing else; checkpoints saved from now on hold tensors and plain values",
                  flush=True)
        return state


def _root_errors(e: BaseException):
    """The error and everything inside it: a CheckpointException's per-rank failures, causes and contexts."""
    seen, todo = set(), [e]
    while todo:
        x = todo.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        yield x
        failures = getattr(x, "failures", None)
        if isinstance(failures, dict):
            todo += [f[0] if isinstance(f, tuple) else f for f in failures.values()]
        todo += [x.__cause__, x.__context__]


def _disk_full(e: BaseException) -> bool:
    return any(getattr(x, "errno", None) == errno.ENOSPC or "No space left on device" in str(x)
               for x in _root_errors(e))


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
