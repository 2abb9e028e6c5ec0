"""Reading a checkpoint folder without running code from it.

A checkpoint may come from a colleague or a download, and a pickle can call any function while it is read. Every
pickle in a flame checkpoint is therefore read through an allowlist:

- `trainer_state.pt`: `torch.load(weights_only=True)`, torch's own restricted unpickler (tensors and plain Python
  values). Checkpoints written before the format switch hold NumPy's RNG state as an ndarray: for them, and only
  after torch's scan of the file's imports finds nothing else, NumPy's three array-rebuilding globals are allowed
  as well (torch.serialization.safe_globals, for that one load).
- DCP's `.metadata` is a plain pickle (no torch container, so torch's weights-only loader cannot read it; torch 2.13's
  FileSystemReader reads it with `pickle.load`): `SafeFileSystemReader` reads it with a `pickle.Unpickler` whose
  `find_class` allows only the classes DCP writes there (the standard library's documented way to restrict globals).
- Non-tensor entries in the shards (optimizer hyperparameters, the LR scheduler's counter): torch 2.13's
  DefaultLoadPlanner unpickles them with `weights_only=False`; `SafeLoadPlanner` uses `weights_only=True`.

A refused file raises `UnsafeCheckpointError`, naming the file and the import it asked for; nothing in it ran.
"""
from __future__ import annotations

import io
import pickle
import re
from typing import Any

import torch
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint file that asks to import something a checkpoint never holds."""


def _refusal(path: str, what: str) -> str:
    return (f"{path} asks to import {what}, which a flame checkpoint never holds: refusing to unpickle it (nothing "
            f"in it was run). The file was altered or does not come from flame; use a checkpoint from a source you "
            f"trust, or another step")


def _refused_by_torch(e: Exception) -> str:
    """What torch's weights-only loader refused, in a few words (its own message is a page long)."""
    match = re.search(r"GLOBAL ([\w.]+)", str(e))
    return match.group(1) if match else f"something torch's weights-only loader refuses ({str(e)[:200]})"


# ------------------------------------------------------------------------------------------------ trainer_state.pt
# Written by checkpoints before the trainer state held only tensors and plain values (np.random.get_state()).
_LEGACY_NUMPY_GLOBALS = {"numpy._core.multiarray._reconstruct", "numpy.core.multiarray._reconstruct",
                         "numpy.ndarray", "numpy.dtype"}


def _legacy_numpy_globals() -> list:
    import numpy as np
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def load_trainer_state(path: str) -> tuple[dict[str, Any], bool]:
    """The trainer state, and whether it is in the legacy (NumPy ndarray) format. Raises UnsafeCheckpointError for
    a file that asks for anything else; other errors (unreadable, truncated) pass through."""
    unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    extra = sorted(unsafe - _LEGACY_NUMPY_GLOBALS)
    if extra:
        raise UnsafeCheckpointError(_refusal(path, ", ".join(extra)))
    try:
        if unsafe:
            with torch.serialization.safe_globals(_legacy_numpy_globals()):
                state = torch.load(path, weights_only=True, map_location="cpu")
        else:
            state = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:  # the scan sees imports; the loader also refuses calls and builds
        raise UnsafeCheckpointError(_refusal(path, _refused_by_torch(e))) from None
    if not isinstance(state, dict):
        raise UnsafeCheckpointError(f"{path} holds a {type(state).__name__}, not a flame trainer state")
    return state, bool(unsafe)


# ------------------------------------------------------------------------------------------------ DCP .metadata
_DCP_METADATA_GLOBALS = {
    ("torch.distributed.checkpoint.metadata", name) for name in (
        "Metadata", "MetadataIndex", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
        "TensorProperties", "StorageMeta", "_MEM_FORMAT_ENCODING")
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"), ("torch.serialization", "_get_layout"),  # tensor shapes and layouts
    ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "PurePosixPath"),  # StorageMeta's id
    ("pathlib", "PureWindowsPath"), ("collections", "OrderedDict"),
}


class _MetadataUnpickler(pickle.Unpickler):
    def __init__(self, file, path: str):
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) in _DCP_METADATA_GLOBALS or (
                module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        raise UnsafeCheckpointError(_refusal(self.path, f"{module}.{name}"))


def load_dcp_metadata(path: str) -> Metadata:
    """A DCP `.metadata` file through the allowlist; UnsafeCheckpointError for anything else."""
    with open(path, "rb") as f:
        try:
            metadata = _MetadataUnpickler(f, path).load()
        except UnsafeCheckpointError:
            raise
        except Exception as e:  # truncated or not a pickle: a corrupt file, said so by the caller
            raise ValueError(f"{path} is not readable DCP metadata ({type(e).__name__}: {e})") from None
    if not isinstance(metadata, Metadata):
        raise UnsafeCheckpointError(f"{path} holds a {type(metadata).__name__}, not DCP metadata")
    return metadata


class SafeFileSystemReader(FileSystemReader):
    """torch's FileSystemReader, reading `.metadata` through the allowlist instead of `pickle.load`."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        metadata = load_dcp_metadata(str(self._get_metadata_path(kwargs.get("rank"))))
        if getattr(metadata, "storage_meta", None) is None:  # as torch's read_metadata does
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """DefaultLoadPlanner whose non-tensor entries are read with `weights_only=True`."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        fqn = read_item.dest_index.fqn
        try:
            obj = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as e:
            raise UnsafeCheckpointError(_refusal(f"the shard entry {fqn!r}", _refused_by_torch(e))) from None
        if self.flatten_state_dict:
            from torch.distributed.checkpoint._traverse import set_element  # what DefaultLoadPlanner uses
            set_element(self.original_state_dict, self.mappings[fqn], obj)
        else:
            self.state_dict[fqn] = obj
