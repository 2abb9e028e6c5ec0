"""What an attacker or a bad disk does to a checkpoint folder, for the checkpoint tests."""
from __future__ import annotations

import json
import os
import pickle

import torch

from flame.hashing import hash_file


class Payload:
    """Unpickling it creates `marker` (and does nothing else): if the marker appears, code from the file ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


def reseal(step_dir: str) -> None:
    """Rewrite COMPLETE to match the folder as it is now (sizes and crc32), as a forger would: then only the
    loader's own checks stand between the planted file and the run."""
    path = os.path.join(step_dir, "COMPLETE")
    with open(path) as f:
        manifest = json.load(f)
    names = sorted(n for n in os.listdir(step_dir) if n != "COMPLETE" and os.path.isfile(os.path.join(step_dir, n)))
    manifest["files"] = {n: os.path.getsize(os.path.join(step_dir, n)) for n in names}
    if "crc32" in manifest:
        manifest["crc32"] = {n: hash_file(os.path.join(step_dir, n)) for n in names}
    with open(path, "w") as f:
        json.dump(manifest, f)


def plant_trainer_state(step_dir: str, marker: str) -> None:
    """A trainer_state.pt in torch's own format whose unpickling would run code."""
    torch.save({"step": 1, "rng": Payload(marker)}, os.path.join(step_dir, "trainer_state.pt"))
    reseal(step_dir)


def plant_metadata(step_dir: str, marker: str) -> None:
    """A DCP .metadata whose unpickling would run code."""
    with open(os.path.join(step_dir, ".metadata"), "wb") as f:
        pickle.dump(Payload(marker), f)
    reseal(step_dir)


def flip_bytes(path: str, count: int = 4096) -> None:
    """Invert `count` bytes in the middle of a file (at most half of it); its size stays the same."""
    size = os.path.getsize(path)
    count = min(count, size // 2)
    with open(path, "r+b") as f:
        f.seek((size - count) // 2)
        data = f.read(count)
        f.seek((size - count) // 2)
        f.write(bytes(b ^ 0xFF for b in data))


def plant_shard_entry(step_dir: str, fqn: str, marker: str) -> None:
    """Point a non-tensor DCP entry (e.g. 'lr_scheduler.last_epoch') at a payload appended to its shard file."""
    import dataclasses
    import io

    from flame.safe_pickle import load_dcp_metadata
    metadata_path = os.path.join(step_dir, ".metadata")
    metadata = load_dcp_metadata(metadata_path)
    index = next(i for i in metadata.storage_data if i.fqn == fqn)
    info = metadata.storage_data[index]
    buffer = io.BytesIO()
    torch.save(Payload(marker), buffer)
    shard = os.path.join(step_dir, info.relative_path)
    offset = os.path.getsize(shard)
    with open(shard, "ab") as f:
        f.write(buffer.getvalue())
    metadata.storage_data[index] = dataclasses.replace(info, offset=offset, length=len(buffer.getvalue()))
    with open(metadata_path, "wb") as f:
        pickle.dump(metadata, f)
    reseal(step_dir)
