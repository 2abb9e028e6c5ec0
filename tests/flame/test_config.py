"""flame.config: TOML + `--section.key value` overrides, types, aliases, errors that name the closest key, --help."""
import dataclasses
import re

import pytest

from flame.config import ConfigError, JobConfig, all_keys, help_text, load_config, to_toml


def write(tmp_path, text: str) -> str:
    path = tmp_path / "job.toml"
    path.write_text(text)
    return str(path)


def test_toml_then_overrides_with_types(tmp_path):
    path = write(tmp_path, '[training]\nsteps = 7\nbatch_size = 3\n[optimizer]\nlr = 1e-3\n'
                           '[job]\ninject_nan_steps = [2, 5]\n')
    config = load_config(["--job.config_file", path, "--training.steps", "11", "--optimizer.lr=2e-4",
                          "--training.context_len", "64", "--lr_scheduler.schedule", "wsd"])
    assert config.training.steps == 11 and config.training.batch_size == 3
    assert config.optimizer.lr == 2e-4 and isinstance(config.optimizer.lr, float)
    assert config.training.context_len == 64
    assert config.lr_scheduler.schedule == "wsd"
    assert config.job.inject_nan_steps == [2, 5]
    assert load_config(["--job.inject_nan_steps", "3,4"]).job.inject_nan_steps == [3, 4]


@pytest.mark.parametrize("args, expected", [
    (["--training.compile"], True),
    (["--training.compile", "true"], True),
    (["--training.compile", "false"], False),
    (["--training.compile=0"], False),
    (["--training.no_compile"], False),
    (["--no-training.compile"], False),
])
def test_booleans_switch_both_ways(tmp_path, args, expected):
    on = write(tmp_path, "[training]\ncompile = true\n")
    off_default = load_config(args)
    from_file_on = load_config(["--job.config_file", on] + args)
    assert off_default.training.compile is expected
    assert from_file_on.training.compile is expected


def test_peer_trainer_aliases():
    config = load_config(["--training.dataset", "a,b", "--training.data_probs", "0.3,0.7",
                          "--training.streaming", "--training.num_workers", "2"])
    assert config.data.dataset == "a,b" and config.data.data_probs == "0.3,0.7"
    assert config.data.streaming is True and config.data.num_workers == 2
    config = load_config(["--lr_scheduler.lr_min", "0.1", "--training.data_parallel_shard_degree", "-1"])
    assert config.lr_scheduler.min_lr_factor == 0.1 and config.parallelism.data_parallel_shard_degree == -1


@pytest.mark.parametrize("args, message", [
    (["--training.stpes", "3"], "unknown config key 'training.stpes'; did you mean 'training.steps'"),
    (["--trainig.seq_len", "3"], "did you mean 'training.seq_len'"),
    (["--checkpoint.keep_latest", "3"], "did you mean 'checkpoint.keep_latest_k'"),
    (["--training.steps", "ten"], "training.steps expects an integer, got 'ten'"),
    (["--training.steps", "2.5"], "training.steps expects an integer"),
    (["--optimizer.lr", "fast"], "optimizer.lr expects a number"),
    (["--training.compile", "maybe"], "unexpected argument 'maybe'"),
    (["--lr_scheduler.schedule", "cosin"], "did you mean 'cosine'"),
    (["--training.steps", "0"], "training.steps must be >= 1"),
    (["--training.steps"], "--training.steps needs a value"),
    (["steps=3"], "unexpected argument"),
    (["--activation_checkpoint.selective_ac_option", "every"], "'op' or an integer"),
    # Values a type accepts but a run cannot use (the trainer's own exit-2 cases are in test_train.py).
    (["--training.context_len", "1"], "training.context_len must be >= 2"),
    (["--training.max_norm", "nan"], "training.max_norm must be a finite number >= 0 (0 = no clipping)"),
    (["--optimizer.beta2", "1.0"], "optimizer.beta2 must be in [0, 1), got 1.0"),
    (["--optimizer.eps", "0"], "optimizer.eps must be a finite number > 0"),
    (["--optimizer.weight_decay", "-inf"], "optimizer.weight_decay must be a finite number >= 0"),
    (["--lr_scheduler.min_lr_factor", "1.5"], "lr_scheduler.min_lr_factor must be in [0, 1]"),
    (["--lr_scheduler.decay_ratio", "nan"], "lr_scheduler.decay_ratio must be in [0, 1]"),
    (["--training.max_consecutive_skipped_steps", "-1"], "training.max_consecutive_skipped_steps must be >= 0"),
    (["--metrics.peak_tflops", "inf"], "metrics.peak_tflops must be a finite number > 0"),
    (["--data.num_workers", "-1"], "data.num_workers must be >= 0"),
])
def test_bad_command_line_is_a_clear_error(args, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(args)


def test_bad_toml_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="'training.lr'; did you mean"):
        load_config(["--job.config_file", write(tmp_path, "[training]\nlr = 1.0\n")])
    with pytest.raises(ConfigError, match="training.batch_size expects an integer, got 'big'"):
        load_config(["--job.config_file", write(tmp_path, '[training]\nbatch_size = "big"\n')])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(["--job.config_file", str(tmp_path / "missing.toml")])
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(["--job.config_file", write(tmp_path, "[training\n")])


def test_help_lists_every_option_with_default(capsys):
    text = help_text()
    for key in all_keys():
        assert f"--{key} (" in text, key
    assert "default 'exp/debug'" in text
    with pytest.raises(SystemExit):
        load_config(["--help"])
    assert "--training.steps" in capsys.readouterr().out


def test_resolved_config_round_trips_through_toml(tmp_path):
    config = load_config(["--training.steps", "9", "--model.tokenizer_path", "tok", "--job.inject_nan_steps", "1",
                          "--training.no_varlen", "--data.data_probs", "1,2", "--data.dataset", "a,b"])
    again = load_config(["--job.config_file", write(tmp_path, to_toml(config))])
    again.job.config_file = config.job.config_file
    assert dataclasses.asdict(again) == dataclasses.asdict(config)


def test_every_section_of_the_issue_exists():
    sections = {f.name for f in dataclasses.fields(JobConfig)}
    assert sections == {"job", "model", "data", "training", "optimizer", "lr_scheduler", "checkpoint", "metrics",
                        "validation", "parallelism", "activation_checkpoint", "compile", "profiling"}
    for key in ["job.dump_folder", "model.config", "model.tokenizer_path", "training.steps", "training.batch_size",
                "training.seq_len", "training.context_len", "training.varlen", "training.gradient_accumulation_steps",
                "training.max_norm", "training.seed", "training.compile", "optimizer.lr",
                "lr_scheduler.warmup_steps", "checkpoint.interval", "checkpoint.keep_latest_k",
                "checkpoint.load_step", "metrics.log_freq"]:
        assert key in all_keys(), key


def test_shipped_job_configs_load_and_name_existing_models():
    import glob
    import os
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    files = sorted(glob.glob(os.path.join(root, "configs", "*.toml")))
    assert any(f.endswith("debug.toml") for f in files)
    for path in files:
        config = load_config(["--job.config_file", path])
        model = os.path.join(root, config.model.config)
        assert os.path.exists(model), f"{path}: model.config {config.model.config} is missing"
