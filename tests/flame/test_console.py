"""What a run says: --help and config errors before the heavy imports, the nothing-to-do message, validation that
follows the training data, the ETA estimator, a resume's changed settings and its LR schedule. The banner and end
summary of real 2-process runs are checked in test_train.py (on the runs it already makes)."""
import json
import math
import os
import random
import subprocess
import sys

import pytest
import torch

from tests.flame.test_train import COMMON, MODEL, ROOT, env

HEAVY = ("torch", "torch.distributed.checkpoint", "datasets", "transformers", "torchtitan", "fla")


def test_help_and_config_errors_come_before_any_heavy_import():
    """Speed as a property: `--help` and a config error in one process import none of torch, DCP, datasets,
    transformers, torchtitan or fla (those take seconds to tens of seconds on a loaded box)."""
    code = ("import sys, contextlib, io\n"
            "from flame.train import main\n"
            "out = io.StringIO()\n"
            "with contextlib.redirect_stdout(out):\n"
            "    try:\n        main(['--help'])\n    except SystemExit as e:\n        assert e.code == 0\n"
            "assert '--training.steps' in out.getvalue()\n"
            "assert main(['--training.stpes', '3']) == 2\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout[-2000:]
    assert "did you mean 'training.steps'" in proc.stderr


def test_a_finished_run_says_it_has_nothing_to_do(tmp_path, capsys):
    """At step 6 of 6: one message with the way to train longer; nothing is built (no [model] line) and nothing is
    read but the checkpoint's manifest (its marker and sizes), so a broken last checkpoint is still said."""
    from flame.checkpoint import Checkpointer
    from flame.train import main
    step = tmp_path / "checkpoint" / "step-6"
    step.mkdir(parents=True)
    rc = main(COMMON + ["--model.config", MODEL, "--job.dump_folder", str(tmp_path)])
    captured = capsys.readouterr()
    assert rc == 2 and "step-6 is incomplete or corrupt: its COMPLETE marker is missing" in captured.err
    (step / "COMPLETE").write_text(json.dumps({"files": {}}))  # a manifest listing no files: complete by size
    rc = main(COMMON + ["--model.config", MODEL, "--job.dump_folder", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0
    assert f"already at step 6 of 6 ({step}): nothing to train" in out, out
    assert "--training.steps N with N > 6" in out and "convert_dcp_to_hf --checkpoint" in out
    assert "[model]" not in out and "[tokenizer]" not in out
    assert Checkpointer(str(tmp_path / "checkpoint"), interval=1).committed_steps() == [6]


def test_validation_follows_the_training_data_unless_named(tmp_path, capsys):
    from fla.ops.utils.dispatch import use_backend
    from flame.config import load_config
    from flame.train import main, validation_sources
    data = tmp_path / "mine.jsonl"
    data.write_text("".join(json.dumps({"text": f"document {i} " + "words and more words " * (i % 7 + 1)}) + "\n"
                            for i in range(40)))
    follows = load_config(["--data.dataset", str(data), "--validation.enable"])
    sources, where = validation_sources(follows)
    assert [s.path for s in sources] == [str(data)] and sources[0].split == "validation"
    assert "following data.dataset (local files have no splits: this reads the training files" in where
    named = load_config(["--data.dataset", str(data), "--validation.dataset", "default"])
    sources, where = validation_sources(named)
    assert [s.path for s in sources] == ["default"] and where == "default split 'validation'"
    default = load_config(["--job.config_file", os.path.join(ROOT, "configs", "debug.toml")])
    sources, where = validation_sources(default)
    assert [(s.path, s.split) for s in sources] == [("default", "validation")]
    assert where == "default split 'validation', following data.dataset"  # the embedded held-out split

    with use_backend("torch"):
        rc = main(["--model.config", MODEL, "--job.dump_folder", str(tmp_path / "run"), "--data.dataset",
                   str(data), "--validation.enable", "--validation.steps", "1", "--training.steps", "2",
                   "--training.seq_len", "32", "--training.batch_size", "1", "--checkpoint.enable", "false",
                   "--metrics.log_freq", "1"])
    out = capsys.readouterr().out
    assert rc == 0
    assert f"  validation  {data} split 'validation', following data.dataset (local files" in out, out
    assert "  data        mine.jsonl (40 documents, weight 1 = 100%)" in out
    assert "start       fresh start (checkpoints off)" in out
    assert "[flame] done: steps 1-2 of 2" in out and "validation loss" in out
    assert "  data read   mine.jsonl 64 tokens (100%)" in out  # 2 steps x 1 x 32, all from the one source
    assert "no checkpoint saved" in out


def test_eta_is_within_20_percent_after_the_first_tenth():
    """Synthetic step times: a first step 100x the others (compile), +-30% noise, a validation every 100 steps
    and a checkpoint every 250: after 10% of the steps, the ETA stays within 20% of the time really left (while at
    least 10% of the steps are left; near the end a single checkpoint is a large share of what is left)."""
    from flame.metrics import EtaEstimator
    rng = random.Random(0)
    total = 1000
    durations = [100.0] + [rng.uniform(0.7, 1.3) + (5.0 if s % 100 == 0 else 0) + (10.0 if s % 250 == 0 else 0)
                           for s in range(2, total + 1)]
    ends = [sum(durations[:s]) for s in range(1, total + 1)]
    eta = EtaEstimator(total)
    worst = 0.0
    for step in range(1, total + 1):
        eta.update(step, ends[step - 1])
        if total // 10 <= step <= total - total // 10:
            left = ends[-1] - ends[step - 1]
            worst = max(worst, abs(eta.seconds_left() - left) / left)
    assert worst < 0.2, worst
    # the mean since the start (what the ETA used to be) is off by > 40% at 10% of the steps
    assert ends[99] / 100 * 900 > 1.4 * (ends[-1] - ends[99])
    assert math.isnan(EtaEstimator(10).seconds_left())


def test_config_changes_list_every_changed_key():
    from flame.config import load_config, to_toml
    from flame.report import config_changes, describe_changes
    import tomllib
    saved = tomllib.loads(to_toml(load_config(["--training.steps", "6"])))
    now = load_config(["--training.steps", "8", "--optimizer.lr", "1e-3", "--validation.dataset", "default"])
    changes = config_changes(saved, now)
    assert changes == [("optimizer.lr", 3e-4, 1e-3), ("training.steps", 6, 8),
                       ("validation.dataset", None, "default")]
    text = describe_changes("x/step-6", changes)
    assert text.splitlines()[0] == "[resume] 3 settings changed since x/step-6 was saved:"
    assert "  training.steps: 6 -> 8" in text and "  validation.dataset: unset -> 'default'" in text
    assert config_changes(saved, load_config(["--training.steps", "6"])) == []


@pytest.mark.parametrize("schedule", ["cosine", "linear", "wsd", "constant"])
def test_a_resume_with_more_steps_continues_the_lr_without_a_jump(schedule):
    """A 20-step schedule saved at step 12, resumed with 40 steps: the LR of step 13 is the one the first run
    would have used, then it falls (wsd: holds, then falls) to lr * min_lr_factor at step 40; 'recompute' is
    torchtitan's curve for 40 steps. Restoring the step warns nothing (torch's get_last_lr() UserWarning)."""
    import warnings

    from flame.config import load_config
    from flame.schedule import build_optimizers, continued_lambda
    args = ["--lr_scheduler.warmup_steps", "4", "--optimizer.lr", "1.0", "--lr_scheduler.schedule", schedule,
            "--lr_scheduler.min_lr_factor", "0.1", "--lr_scheduler.decay_ratio", "0.25"]
    model = torch.nn.Linear(2, 2)
    first = load_config(args + ["--training.steps", "20"])
    optimizers, schedulers = build_optimizers(model, first, torch.device("cpu"))
    lrs = []
    for _ in range(12):
        optimizers.step()
        schedulers.step()
    lr_then = optimizers.optimizers[0].param_groups[0]["lr"]  # what step 13 uses in the first run
    state = schedulers.state_dict()

    longer = load_config(args + ["--training.steps", "40"])
    optimizers, schedulers = build_optimizers(model, longer, torch.device("cpu"))
    optimizers.optimizers[0].param_groups[0]["lr"] = lr_then  # as the optimizer state restores it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        schedulers.load_state_dict(state)
    planned = schedulers.schedulers[0].lr_lambdas[0]
    schedulers.replace_lambda(continued_lambda(longer, 12, lr_then, planned), apply_now=True)
    for _ in range(12, 40):
        lrs.append(schedulers.schedulers[0].get_last_lr()[0])
        optimizers.step()
        schedulers.step()
    assert lrs[0] == pytest.approx(lr_then)
    if schedule == "constant":
        assert lrs == pytest.approx([1.0] * 28)
        return
    assert all(a >= b - 1e-12 for a, b in zip(lrs, lrs[1:])) and 0.1 <= lrs[-1] < 0.2
    if schedule == "wsd":  # stable at the LR reached until the last 10 steps (decay_ratio 0.25 of 40)
        assert lrs[:19] == pytest.approx([lr_then] * 19) and lrs[19] < lr_then
    assert abs(planned(12) - lr_then) > 0.05 or schedule == "wsd"  # recomputing would have jumped


@pytest.mark.parametrize("mode", ["continue", "recompute"])
def test_resumed_schedule_compares_the_saved_config_and_says_what_the_lr_does(mode, tmp_path, capsys):
    """flame.train's resume step on its own: the saved config.toml against this one, one line per change, and the
    LR of the next step (a skipped step left the schedule one behind the training step)."""
    import types

    from flame.config import load_config, to_toml
    from flame.schedule import build_optimizers
    from flame.train import resumed_schedule
    args = ["--lr_scheduler.warmup_steps", "2", "--optimizer.lr", "1.0", "--lr_scheduler.min_lr_factor", "0.0"]
    first = load_config(args + ["--training.steps", "10"])
    (tmp_path / "config.toml").write_text(to_toml(first))
    model = torch.nn.Linear(2, 2)
    optimizers, schedulers = build_optimizers(model, first, torch.device("cpu"))
    for _ in range(5):  # 6 training steps, one of them skipped: the schedule stepped 5 times
        optimizers.step()
        schedulers.step()
    lr_then, state = optimizers.optimizers[0].param_groups[0]["lr"], schedulers.state_dict()

    longer = load_config(args + ["--training.steps", "20", "--lr_scheduler.resume_schedule", mode])
    optimizers, schedulers = build_optimizers(model, longer, torch.device("cpu"))
    optimizers.optimizers[0].param_groups[0]["lr"] = lr_then
    schedulers.load_state_dict(state)
    resumed_schedule(longer, types.SimpleNamespace(is_main=True), str(tmp_path), 6, optimizers, schedulers)
    out = capsys.readouterr().out
    changed = ["  training.steps: 10 -> 20"] + (["  lr_scheduler.resume_schedule: 'continue' -> 'recompute'"]
                                                 if mode == "recompute" else [])
    assert f"[resume] {len(changed)} setting{'s' if len(changed) > 1 else ''} changed since {tmp_path} was " \
           f"saved:" in out, out
    assert all(line in out for line in changed), out
    lrs = []
    for _ in range(14):  # steps 7..20
        lrs.append(schedulers.schedulers[0].get_last_lr()[0])
        optimizers.step()
        schedulers.step()
    if mode == "continue":
        assert f"the LR goes on from {lr_then:.3g} at step 7 without a jump" in out, out
        assert lrs[0] == pytest.approx(lr_then) and all(a > b for a, b in zip(lrs, lrs[1:]))
        assert lrs[-1] == pytest.approx(lr_then * (1 + math.cos(math.pi * 13 / 14)) / 2)
    else:
        assert "as if they had held from step 0" in out
        planned = schedulers.schedulers[0].lr_lambdas[0]
        assert lrs[0] == pytest.approx(planned(5)) and abs(lrs[0] - lr_then) > 0.1  # recomputed: it jumps
