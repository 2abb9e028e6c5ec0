"""flame.checkpoint in one process: atomic commit, keep_latest_k, no overwrite, corruption and mismatch detection,
content hashes, planted pickles, a full disk, rewinding, older checkpoints; model + optimizer + LR schedule restored
exactly."""
import errno
import json
import os
import random

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn as nn

from flame.checkpoint import Checkpointer, CheckpointError
from flame.hashing import hash_file
from tests.flame.checkpoint_helpers import (flip_bytes, plant_metadata, plant_shard_entry, plant_trainer_state,
                                            reseal)


@pytest.fixture
def group():
    if not dist.is_initialized():
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


class Tiny(nn.Module):
    def __init__(self, width=8):
        super().__init__()
        self.a = nn.Linear(4, width)
        self.b = nn.Linear(width, 2)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def optimizers_for(model):
    from torchtitan.components.optimizer import LRSchedulersContainer, default_adamw

    from flame.schedule import LRSchedules
    config = default_adamw(lr=1e-2)
    config.implementation = "foreach"
    opt = config.build(model_parts=[model])
    built = LRSchedulersContainer.Config(warmup_steps=2, decay_type="cosine").build(optimizers=opt,
                                                                                    training_steps=10)
    # flame's container: torchtitan's restores its step through get_lr(), which warns (UserWarning) every time
    return opt, LRSchedules(opt, built.schedulers[0].lr_lambdas[0])


def train_steps(model, opt, sched, n, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        loss = model(torch.randn(3, 4, generator=g)).square().mean()
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()


def save(ck, step, model, opt=None, sched=None, **kw):
    return ck.save(step, model=model, optimizers=opt, lr_schedulers=sched, train_state={"step": step, "rng": None},
                   dataloader_state={"pos": step}, config_toml="[training]\n", **kw)


def test_save_load_restores_model_optimizer_schedule_exactly(group, tmp_path):
    torch.manual_seed(0)
    model = Tiny()
    opt, sched = optimizers_for(model)
    train_steps(model, opt, sched, 3, seed=1)
    ck = Checkpointer(str(tmp_path), interval=1)
    assert save(ck, 3, model, opt, sched)
    train_steps(model, opt, sched, 2, seed=2)
    want = [p.detach().clone() for p in model.parameters()]

    torch.manual_seed(123)
    other = Tiny()
    opt2, sched2 = optimizers_for(other)
    state = ck.load(3, model=other, optimizers=opt2, lr_schedulers=sched2)
    assert state["step"] == 3 and state["dataloader"] == {"pos": 3} and state["world_size"] == 1
    train_steps(other, opt2, sched2, 2, seed=2)
    for got, exp in zip(other.parameters(), want):
        assert torch.equal(got, exp)
    assert sched2.schedulers[0].last_epoch == sched.schedulers[0].last_epoch


def test_crash_mid_write_leaves_no_checkpoint_and_a_later_save_commits(group, tmp_path):
    model = Tiny()
    ck = Checkpointer(str(tmp_path), interval=1)
    save(ck, 2, model)

    def crash():
        raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        save(ck, 4, model, crash_hook=crash)
    assert sorted(os.listdir(tmp_path)) == ["step-2", "step-4.tmp"]
    assert ck.resolve_step(-1) == 2
    save(ck, 4, model)  # the stale .tmp is replaced, then committed
    assert sorted(os.listdir(tmp_path)) == ["step-2", "step-4"]
    ck.check(4)


def test_keep_latest_k_and_never_overwrite(group, tmp_path):
    model = Tiny()
    ck = Checkpointer(str(tmp_path), interval=1, keep_latest_k=1)
    for step in (1, 2, 3):
        assert save(ck, step, model)
    assert ck.committed_steps() == [3]
    before = os.path.getmtime(os.path.join(ck.step_dir(3), "COMPLETE"))
    assert not save(ck, 3, model)
    assert os.path.getmtime(os.path.join(ck.step_dir(3), "COMPLETE")) == before


def test_damaged_checkpoints_are_clear_errors(group, tmp_path):
    model = Tiny()
    ck = Checkpointer(str(tmp_path), interval=1)
    save(ck, 1, model)
    save(ck, 2, model)
    with pytest.raises(CheckpointError, match=r"no checkpoint for step 7 .*available steps: \[1, 2\]"):
        ck.load(7, model=model)
    shard = next(f for f in os.listdir(ck.step_dir(2)) if f.endswith(".distcp"))
    with open(os.path.join(ck.step_dir(2), shard), "ab") as f:
        f.write(b"junk")
    with pytest.raises(CheckpointError, match=f"{shard} has .* bytes, expected"):
        ck.load(2, model=model)
    os.remove(os.path.join(ck.step_dir(1), ".metadata"))
    with pytest.raises(CheckpointError, match=r"\.metadata is missing"):
        ck.load(1, model=model)
    assert ck.committed_steps() == [1, 2]


def test_model_mismatch_is_a_clear_error(group, tmp_path):
    ck = Checkpointer(str(tmp_path), interval=1)
    save(ck, 1, Tiny(width=8), model_config={"model_type": "tiny", "width": 8})
    with pytest.raises(CheckpointError, match="written for another model .*width: checkpoint 8 vs now 16"):
        ck.load(1, model=Tiny(width=16), model_config={"model_type": "tiny", "width": 16})
    with pytest.raises(CheckpointError, match="could not be loaded"):
        ck.load(1, model=Tiny(width=16))


def test_manifest_holds_a_crc32_of_every_file_hashed_as_written(group, tmp_path):
    model = Tiny()
    opt, sched = optimizers_for(model)
    ck = Checkpointer(str(tmp_path), interval=1)
    save(ck, 1, model, opt, sched)
    manifest = json.load(open(os.path.join(ck.step_dir(1), "COMPLETE")))
    names = sorted(n for n in os.listdir(ck.step_dir(1)) if n != "COMPLETE")
    assert sorted(manifest["files"]) == names and sorted(manifest["crc32"]) == names
    assert "hashed_from_disk" not in manifest  # every file, DCP's shards and .metadata included, hashed on write
    for name in names:
        assert manifest["crc32"][name] == hash_file(os.path.join(ck.step_dir(1), name)), name
    assert ck.verify(1) is True


def test_flipped_bytes_of_the_same_size_are_refused_naming_the_file_and_the_intact_step(group, tmp_path):
    model = Tiny(width=64)
    opt, sched = optimizers_for(model)
    ck = Checkpointer(str(tmp_path), interval=1)
    for step in (1, 2, 3):
        save(ck, step, model, opt, sched)
    shard = next(f for f in os.listdir(ck.step_dir(3)) if f.endswith(".distcp"))
    size = os.path.getsize(os.path.join(ck.step_dir(3), shard))
    flip_bytes(os.path.join(ck.step_dir(3), shard))
    flip_bytes(os.path.join(ck.step_dir(2), "trainer_state.pt"))
    assert os.path.getsize(os.path.join(ck.step_dir(3), shard)) == size
    ck.check(3)  # sizes alone cannot tell
    with pytest.raises(CheckpointError, match=rf"step-3 is corrupt: {shard} does not match the crc32 .*Intact: "
                                              rf"step 1 \(contents verified\).*--checkpoint.load_step 1"):
        ck.load(3, model=model, optimizers=opt, lr_schedulers=sched)
    with pytest.raises(CheckpointError, match="step-2 is corrupt: trainer_state.pt does not match"):
        ck.load(2, model=model, optimizers=opt, lr_schedulers=sched)
    assert ck.load(1, model=model, optimizers=opt, lr_schedulers=sched)["step"] == 1
    assert ck.committed_steps() == [1, 2, 3]


@pytest.mark.parametrize("plant", ["trainer_state.pt", ".metadata", "lr_scheduler.last_epoch"])
def test_a_planted_pickle_is_refused_and_never_runs(group, tmp_path, plant):
    """The manifest is resealed, as a forger would: only the allowlisted unpickling stands in the way."""
    model = Tiny()
    opt, sched = optimizers_for(model)
    ck = Checkpointer(str(tmp_path / "ck"), interval=1)
    save(ck, 1, model, opt, sched)
    marker = str(tmp_path / "MARKER")
    if plant == "trainer_state.pt":
        plant_trainer_state(ck.step_dir(1), marker)
        where = "trainer_state.pt asks to import io.open"
    elif plant == ".metadata":
        plant_metadata(ck.step_dir(1), marker)
        where = r"\.metadata asks to import io.open"
    else:
        plant_shard_entry(ck.step_dir(1), plant, marker)
        where = "'lr_scheduler.last_epoch' asks to import"
    ck.verify(1)  # the forgery passes the content check
    with pytest.raises(CheckpointError, match=rf"{where}.*refusing to unpickle it \(nothing in it was run\)"):
        ck.load(1, model=model, optimizers=opt, lr_schedulers=sched)
    assert not os.path.exists(marker)


def test_a_checkpoint_of_the_older_format_still_loads(group, tmp_path, capsys):
    """Before content hashes: COMPLETE holds sizes only, trainer_state.pt holds NumPy's RNG state as an ndarray."""
    from flame.distributed import set_rng_state
    model = Tiny()
    ck = Checkpointer(str(tmp_path), interval=1)
    save(ck, 1, model)
    random.seed(3), np.random.seed(4), torch.manual_seed(5)
    old_rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    want = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    torch.save({"step": 1, "tokens_seen": 7, "world_size": 1, "rng": [old_rng], "dataloader": {"pos": 1}},
               os.path.join(ck.step_dir(1), "trainer_state.pt"))
    with open(os.path.join(ck.step_dir(1), "COMPLETE"), "w") as f:
        json.dump({"files": {}}, f)
    reseal(ck.step_dir(1))
    assert "crc32" not in json.load(open(os.path.join(ck.step_dir(1), "COMPLETE")))
    state = ck.load(1, model=model)
    out = capsys.readouterr().out
    assert state["tokens_seen"] == 7 and "older format" in out and "before manifests held content hashes" in out
    set_rng_state(state["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == want


@pytest.mark.parametrize("where", ["a DCP shard", "the trainer state"])
def test_a_full_disk_removes_its_own_tmp_and_says_so(group, tmp_path, monkeypatch, where):
    import flame.checkpoint
    import flame.hashing
    model = Tiny()
    opt, sched = optimizers_for(model)
    ck = Checkpointer(str(tmp_path), interval=1)
    save(ck, 1, model, opt, sched)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    if where == "a DCP shard":
        monkeypatch.setattr(flame.hashing.HashingStream, "write", full)
    else:
        monkeypatch.setattr(flame.checkpoint, "write_file", full)
    with pytest.raises(CheckpointError, match=rf"no space left on {tmp_path} .*removed its partial step-2.tmp; "
                                              rf"the checkpoints already saved are untouched \(steps \[1\]\)"):
        save(ck, 2, model, opt, sched)
    assert sorted(os.listdir(tmp_path)) == ["step-1"]
    ck.verify(1)
    monkeypatch.undo()
    assert save(ck, 2, model, opt, sched)
    ck.verify(2)


def test_rewind_moves_newer_checkpoints_aside_and_saves_its_own(group, tmp_path):
    model = Tiny()
    ck = Checkpointer(str(tmp_path), interval=1, keep_latest_k=2)
    for step in (1, 2, 3):
        save(ck, step, model)
    assert ck.committed_steps() == [2, 3]
    ck.load(2, model=model)
    moved = ck.set_aside_newer(2)
    assert [m.split(".rewound-")[0] for m in moved] == ["step-3"]
    assert ck.committed_steps() == [2]
    assert save(ck, 3, model)  # not "already exists": the rewound run writes its own step-3
    assert save(ck, 4, model)  # keep_latest_k counts committed steps only: the moved one is never purged
    assert ck.committed_steps() == [3, 4]
    for name in moved:  # nothing deleted: the moved checkpoints are whole
        assert os.path.isfile(tmp_path / name / "COMPLETE")
