"""flame.checkpoint in one process: atomic commit, keep_latest_k, no overwrite, corruption and mismatch detection,
model + optimizer + LR schedule restored exactly."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn

from flame.checkpoint import Checkpointer, CheckpointError


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
    config = default_adamw(lr=1e-2)
    config.implementation = "foreach"
    opt = config.build(model_parts=[model])
    sched = LRSchedulersContainer.Config(warmup_steps=2, decay_type="cosine").build(optimizers=opt,
                                                                                    training_steps=10)
    return opt, sched


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
