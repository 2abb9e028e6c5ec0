"""flame.train end to end on CPU: real `torchrun` with 2 gloo processes, SIGKILL and resume, resume on another world
size, two runs on one folder, a rewind, NaN skipping and a run that cannot recover, planted pickles and flipped bytes,
clear errors for bad input on every rank, every model family through the same loop."""
import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch

from tests.flame.checkpoint_helpers import flip_bytes, plant_metadata, plant_trainer_state, reseal

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.path.join(ROOT, "configs", "models", "transformer_debug.json")
# Small enough for a 2-core CI box; gradient accumulation and a NaN step are part of every run. The model JSON is
# copied once per module (runs["model"]) so that every run of the chain reads the same config.
COMMON = ["--training.steps", "6", "--training.seq_len", "64", "--training.batch_size", "2",
          "--training.gradient_accumulation_steps", "2", "--metrics.log_freq", "1", "--checkpoint.interval", "2",
          "--checkpoint.keep_latest_k", "3", "--lr_scheduler.warmup_steps", "2", "--job.inject_nan_steps", "3",
          "--job.print_config", "false", "--optimizer.lr", "3e-3"]


def env() -> dict:
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # The trainer runs fla's PyTorch paths on CPU; the Triton interpreter is for kernel tests.
    e.pop("TRITON_INTERPRET", None)
    return e


def _command(args: list[str], nproc: int) -> list[str]:
    if nproc == 1:
        return [sys.executable, "-m", "flame.train"] + args
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "flame.train"] + args


def launch(args: list[str], nproc: int) -> subprocess.CompletedProcess:
    return subprocess.run(_command(args, nproc), cwd=ROOT, env=env(), capture_output=True, text=True, timeout=400)


def launch_together(jobs: list[tuple[list[str], int]]) -> list[subprocess.CompletedProcess]:
    """Start every job at once, wait for all."""
    procs = [subprocess.Popen(_command(args, nproc), cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for args, nproc in jobs]
    out = []
    for proc, (args, _) in zip(procs, jobs):
        stdout, stderr = proc.communicate(timeout=400)
        out.append(subprocess.CompletedProcess(args, proc.returncode, stdout, stderr))
    return out


def on_every_rank(stderr: str, message: str, nproc: int = 2) -> bool:
    """flame.train's one error line, with `message` in it, from each of the `nproc` ranks. Every "flame.train: " starts
    a piece, wherever it sits in a line: ranks (and torchrun's own log) share the stderr pipe, and before flame wrote
    each line in one write, CI saw a rank's line start inside another's and two ranks' errors on one line."""
    pieces = [p for line in stderr.splitlines() for p in line.split("flame.train: ")[1:] if message in p]
    return sorted({p.split("(rank ", 1)[1].split(")")[0] for p in pieces if "(rank " in p}) == \
        [str(r) for r in range(nproc)]


def records(dump: str) -> dict[int, dict]:
    """Training records of metrics.jsonl by step. A resume sets aside the records of the steps it repeats (to
    metrics.discarded.jsonl), so every step must appear once."""
    out = {}
    with open(os.path.join(dump, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if "loss" in r:
                assert r["step"] not in out, f"step {r['step']} logged twice in {dump}/metrics.jsonl"
                out[r["step"]] = r
    return out


def committed(dump: str) -> list[str]:
    return sorted(os.listdir(os.path.join(dump, "checkpoint")))


# The chain's runs end at step 6 of 6: resuming them as they are has nothing to do (and loads nothing).
LONGER = ["--training.steps", "8"]


def _result(proc: subprocess.CompletedProcess) -> dict:
    return {"returncode": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """A: 6 steps uninterrupted on 2 ranks, started together with an identical rival run on the same dump folder
    (one of them gets the folder, the other must refuse at once). B: the same job SIGKILLed during step 4's
    checkpoint write, resumed and SIGKILLed right after step 5, resumed again to the end.

    The chain is the expensive part: under pytest-xdist the workers share one copy (a file lock in the session's
    common temp folder), so it runs once whichever worker gets a test of it first."""
    from filelock import FileLock
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by this session's workers
    base = root / "flame_train_chain"
    with FileLock(str(root / "flame_train_chain.lock")):
        done = base / "results.json"
        if done.exists():
            return json.loads(done.read_text())
        base.mkdir(exist_ok=True)
        a, b, model = str(base / "a"), str(base / "b"), str(base / "model.json")
        shutil.copy(MODEL, model)
        common = COMMON + ["--model.config", model]
        out = {"a": a, "b": b, "model": model, "common": common}
        first, second = launch_together([(common + ["--job.dump_folder", a], 2)] * 2)
        winner, rival = (first, second) if first.returncode == 0 else (second, first)
        out["a_run"], out["a_rival"] = _result(winner), _result(rival)
        out["b1"] = _result(launch(common + ["--job.dump_folder", b, "--job.crash_at_step", "4",
                                             "--job.crash_in_checkpoint"], 2))
        out["b1_dirs"] = committed(b)
        out["b2"] = _result(launch(common + ["--job.dump_folder", b, "--job.crash_at_step", "5"], 2))
        out["b2_dirs"] = committed(b)
        out["b3"] = _result(launch(common + ["--job.dump_folder", b], 2))
        done.write_text(json.dumps(out))
        return out


def test_uninterrupted_two_process_run(runs):
    run = runs["a_run"]
    assert run["returncode"] == 0, run["stdout"][-3000:] + run["stderr"][-3000:]
    recs = records(runs["a"])
    assert sorted(recs) == [1, 2, 3, 4, 5, 6]
    for key in ("loss", "tokens", "lr", "grad_norm", "tokens_per_second_per_device", "peak_memory_gib",
                "skipped_steps", "source_tokens"):
        assert key in recs[6], key
    # 2 ranks x 2 microbatches x 2 x 64 tokens per step
    assert recs[6]["tokens"] == 6 * 2 * 2 * 2 * 64
    assert sum(recs[6]["source_tokens"].values()) > 0
    assert committed(runs["a"]) == ["step-2", "step-4", "step-6"]
    step = os.path.join(runs["a"], "checkpoint", "step-6")
    for name in ("COMPLETE", "config.toml", "meta.json", "trainer_state.pt", ".metadata"):
        assert os.path.exists(os.path.join(step, name)), name
    meta = json.load(open(os.path.join(step, "meta.json")))
    assert meta["world_size"] == 2 and "torch" in meta["versions"] and meta["model_config"]["model_type"]
    assert "[training]" in open(os.path.join(step, "config.toml")).read()


def test_a_run_says_what_it_does(runs):
    """The banner (ranks, device, model, data with weights, validation, dump folder, start), a line before the
    first step, and the end summary with the way to Hugging Face; a resume names its checkpoint and its settings."""
    out = runs["a_run"]["stdout"]
    a = runs["a"]
    for line in ["[flame] 2 ranks on cpu (gloo)", "  model       transformer from " + runs["model"],
                 "  data        default (", "documents, weight 1 = 100%)", "  validation  off",
                 "  steps       6 x 512 tokens = 3,072 tokens",
                 f"  dump folder {a} (metrics.jsonl, checkpoints in {a}/checkpoint)",
                 f"  start       fresh start (no checkpoint in {a}/checkpoint)",
                 "[train] step 1: the first step is the slowest",
                 "[flame] done: steps 1-6 of 6 in ", "(3,072 tokens this run, 3,072 in all), 1 skipped",
                 f"  last checkpoint {a}/checkpoint/step-6",
                 f"  to Hugging Face: python -m flame.tools.convert_dcp_to_hf --checkpoint {a}/checkpoint/step-6 "
                 f"--output {a}/hf"]:
        assert line in out, (line, out[-3000:])
    assert "[config] resolved job config" not in out  # behind --job.print_config
    b3 = runs["b3"]["stdout"]
    assert f"  start       resumed from {runs['b']}/checkpoint/step-4 (step 4, saved on 2 ranks, now 2)" in b3
    # step-4 was saved by the run that was to crash after step 5: that testing aid is the one setting changed
    assert f"[resume] 1 setting changed since {runs['b']}/checkpoint/step-4 was saved:\n" \
           f"  job.crash_at_step: 5 -> -1\n" in b3, b3[-3000:]
    assert "[lr]" not in b3  # the schedule's settings are as saved: it is left alone (bit-exact resume)
    assert "[optimizer]" not in b3  # the optimizer groups' settings are as saved, too
    assert "[flame] done: steps 5-6 of 6" in b3
    for run in ("b2", "b3"):
        assert "get_last_lr" not in runs[run]["stderr"], runs[run]["stderr"][-2000:]


def test_a_second_run_on_the_same_dump_folder_is_refused_on_every_rank(runs):
    rival = runs["a_rival"]
    assert rival["returncode"] != 0, rival["stdout"][-2000:]
    assert on_every_rank(rival["stderr"], "is in use by another run"), rival["stderr"][-3000:]
    assert "[model]" not in rival["stdout"]  # refused before any weight was allocated
    records(runs["a"])  # every step logged once: the rival wrote nothing
    assert not os.path.exists(os.path.join(runs["a"], "flame.lock"))  # released at the end of the run


def test_nan_step_is_skipped_counted_and_the_run_goes_on(runs):
    recs = records(runs["a"])
    assert not math.isfinite(recs[3]["grad_norm"]) and recs[3]["skipped_steps"] == 1
    assert recs[2]["skipped_steps"] == 0 and recs[6]["skipped_steps"] == 1
    assert all(math.isfinite(recs[s]["loss"]) for s in (4, 5, 6))
    # The skipped step left the weights alone: the LR schedule did not advance either.
    assert recs[4]["lr"] == recs[3]["lr"]


def test_killed_during_checkpoint_write_resumes_from_the_previous_one(runs):
    assert runs["b1"]["returncode"] != 0
    assert runs["b1_dirs"] == ["step-2", "step-4.tmp"], runs["b1_dirs"]
    assert runs["b2"]["returncode"] != 0
    out = runs["b2"]["stdout"]
    assert "resumed from" in out and "step-2 (step 2" in out, out[-2000:]
    assert "took over the stale lock" in out  # b1 was SIGKILLed holding it
    assert "step-4" in runs["b2_dirs"] and "step-4.tmp" not in runs["b2_dirs"]


def test_sigkill_and_resume_gives_bit_identical_losses(runs):
    run = runs["b3"]
    assert run["returncode"] == 0, run["stdout"][-3000:] + run["stderr"][-3000:]
    assert "step-4 (step 4" in run["stdout"]
    a, b = records(runs["a"]), records(runs["b"])
    for step in range(1, 7):
        # repr: exact, and NaN (the injected step 3) equals NaN
        assert repr(b[step]["loss"]) == repr(a[step]["loss"]), (step, a[step]["loss"], b[step]["loss"])
        assert repr(b[step]["grad_norm"]) == repr(a[step]["grad_norm"])
        assert b[step]["tokens"] == a[step]["tokens"]


def test_resume_two_process_checkpoint_in_one_process_rewinding_past_a_newer_one(runs, tmp_path):
    """--checkpoint.load_step 4 with step-6 present: step-6 is moved aside (kept), the run saves its own step-6."""
    dump = str(tmp_path / "c")
    shutil.copytree(runs["a"], dump)
    args = ["--job.dump_folder", dump, "--training.steps", "8", "--validation.enable", "--validation.freq", "8",
            "--validation.steps", "1", "--metrics.enable_tensorboard", "--checkpoint.load_step", "4"]
    run = _result(launch(runs["common"] + args, 1))
    assert run["returncode"] == 0, run["stdout"][-3000:] + run["stderr"][-3000:]
    assert "saved on 2 ranks, now 1" in run["stdout"]
    assert "rewinding to step 4: moved the newer checkpoints aside" in run["stdout"]
    out = run["stdout"]
    step4 = os.path.join(dump, "checkpoint", "step-4")
    assert f"settings changed since {step4} was saved:" in out, out[-3000:]
    for change in ("  training.steps: 6 -> 8", "  checkpoint.load_step: -1 -> 4", "  validation.enable: false -> true",
                   "  metrics.enable_tensorboard: false -> true", "  job.dump_folder: "):
        assert change in out, change
    assert "[lr] the schedule changed: the LR goes on from 0.00256 at step 5 without a jump" in out, out[-3000:]
    assert "get_last_lr" not in run["stderr"]
    dirs = committed(dump)
    aside = [d for d in dirs if d.startswith("step-6.rewound-")]
    assert len(aside) == 1 and [d for d in dirs if "rewound" not in d] == ["step-4", "step-6", "step-8"], dirs
    assert sorted(os.listdir(os.path.join(dump, "checkpoint", aside[0]))) == \
        sorted(os.listdir(os.path.join(runs["a"], "checkpoint", "step-6")))  # moved whole, nothing deleted
    recs = records(dump)
    # The cosine of 6 steps (warmup 2; the NaN step 3 did not advance it) gave step 5 lr * (1 + cos(pi/4)) / 2.
    # Resumed for 8 steps, step 5 keeps that LR and the decay is spread over the 4 steps left: no jump.
    peak_share = (1 + math.cos(math.pi / 4)) / 2
    assert recs[5]["lr"] == pytest.approx(records(runs["a"])[5]["lr"]) == pytest.approx(3e-3 * peak_share)
    assert recs[5]["lr"] > recs[6]["lr"] > recs[7]["lr"] > recs[8]["lr"]
    assert recs[8]["lr"] == pytest.approx(3e-3 * peak_share * (1 + math.cos(math.pi * 3 / 4)) / 2)
    assert math.isfinite(recs[7]["loss"]) and math.isfinite(recs[8]["loss"])
    assert recs[8]["tokens"] == recs[6]["tokens"] + 2 * 2 * 2 * 64
    assert recs[6]["tokens"] == recs[4]["tokens"] + 2 * 2 * 2 * 64  # steps 5-6 are this run's own
    val = [json.loads(line) for line in open(os.path.join(dump, "metrics.jsonl")) if "val_loss" in line]
    assert val and math.isfinite(val[-1]["val_loss"]) and val[-1]["val_bits_per_byte"] > 0
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(dump, "tb")))


# ------------------------------------------------------------------------------------------- errors, in process
def main_in_process(argv, capsys):
    from flame.train import main
    rc = main(argv)
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--training.stpes", "3"], "did you mean 'training.steps'"),
    (["--training.batch_size", "two"], "training.batch_size expects an integer, got 'two'"),
    (["--model.config", "configs/models/nope.json"], "model.config 'configs/models/nope.json' does not exist"),
    (["--model.config", MODEL, "--data.dataset", "/no/such/dataset"], "/no/such/dataset"),
    (["--training.seq_len", "1"], "training.seq_len must be >= 2 (a sequence needs a next token to predict), got 1"),
    (["--optimizer.lr", "nan"], "optimizer.lr must be a finite number > 0, got nan"),
    (["--optimizer.lr", "inf"], "optimizer.lr must be a finite number > 0, got inf"),
    (["--lr_scheduler.min_lr_factor", "-2"], "lr_scheduler.min_lr_factor must be in [0, 1]"),
    (["--model.config", MODEL, "--model.tokenizer_path", "/no/such/tokenizer"],
     "model.tokenizer_path: tokenizer path '/no/such/tokenizer' does not exist: give an existing tokenizer "
     "directory, a hub name"),
    (["--model.config", MODEL, "--data.data_probs", "nan"], "data.data_probs must be finite numbers > 0"),
])
def test_bad_input_is_one_clear_error(argv, message, capsys, tmp_path):
    rc, err = main_in_process(argv + ["--job.dump_folder", str(tmp_path)], capsys)
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert "hub name while" not in err and "Traceback" not in err
    assert not os.path.exists(tmp_path / "flame.lock")  # released on the way out


def test_fewer_documents_than_ranks_is_one_clear_error_on_every_rank(tmp_path):
    import datasets
    data = tmp_path / "one"  # saved, not a jsonl: two ranks building one jsonl's cache at once wait on its lock
    datasets.Dataset.from_dict({"text": ["the only document"]}).save_to_disk(str(data))
    run = launch(COMMON + ["--model.config", MODEL, "--job.dump_folder", str(tmp_path / "run"), "--data.dataset",
                           str(data)], 2)
    assert run.returncode != 0
    assert on_every_rank(run.stderr, "data.dataset has 1 document in its largest source, fewer than the 2 loader "
                                     "shards (2 data-parallel ranks x 1 workers each)"), run.stderr[-3000:]
    assert "[model]" not in run.stdout  # said before any weight was allocated


def test_a_rank_without_data_stops_every_rank():
    """A stream's length is not known up front: the first step finds the rank without documents, and the flag
    travels with the step's target count, so every rank raises."""
    import types

    import torch.distributed as dist

    from flame.data import DataSourceError
    from flame.train import next_microbatches
    if not dist.is_initialized():
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        world = types.SimpleNamespace(rank=0, world_size=1)
        with pytest.raises(DataSourceError, match=r"data-parallel rank \[0\] of 1 ran out of data at step 1: .*"
                                                  r"Use more data, fewer ranks or a smaller data.num_workers"):
            next_microbatches(iter([]), 2, world, 1, torch.device("cpu"), True)
    finally:
        dist.destroy_process_group()


def test_a_run_whose_steps_are_all_non_finite_stops_and_keeps_its_checkpoints(tmp_path, capsys):
    from fla.ops.utils.dispatch import use_backend
    dump = str(tmp_path)
    with use_backend("torch"):
        rc, err = main_in_process(["--model.config", MODEL, "--job.dump_folder", dump, "--training.steps", "6",
                                   "--training.seq_len", "32", "--training.batch_size", "1",
                                   "--checkpoint.interval", "2", "--job.inject_nan_steps", "3,4,5,6",
                                   "--training.max_consecutive_skipped_steps", "3", "--job.print_config", "false",
                                   "--metrics.log_freq", "1"], capsys)
    assert rc == 3, err
    assert "steps 3-5: 3 steps in a row had a non-finite gradient norm" in err and len(err.strip().splitlines()) == 1
    assert "step-4, is left as it was" in err and "Lower optimizer.lr" in err
    assert committed(dump) == ["step-2", "step-4"]
    from flame.checkpoint import Checkpointer
    ck = Checkpointer(os.path.join(dump, "checkpoint"), interval=2)
    manifests = [json.load(open(os.path.join(ck.step_dir(s), "COMPLETE"))) for s in (2, 4)]
    # Skipped steps change nothing: the shards saved after them are the last good state, byte for byte.
    shard = next(n for n in manifests[0]["crc32"] if n.endswith(".distcp"))
    assert manifests[0]["crc32"][shard] == manifests[1]["crc32"][shard]
    assert sorted(records(dump)) == [1, 2, 3, 4, 5]


def test_a_full_disk_during_a_run_is_one_clear_error(tmp_path, capsys, monkeypatch):
    import errno

    import flame.hashing
    from fla.ops.utils.dispatch import use_backend
    real_write = flame.hashing.HashingStream.write

    def write(self, data):
        if "step-4.tmp" in str(getattr(self.raw, "name", "")):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(flame.hashing.HashingStream, "write", write)
    dump = str(tmp_path)
    with use_backend("torch"):
        rc, err = main_in_process(["--model.config", MODEL, "--job.dump_folder", dump, "--training.steps", "4",
                                   "--training.seq_len", "32", "--training.batch_size", "1",
                                   "--checkpoint.interval", "2", "--job.print_config", "false"], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert f"no space left on {os.path.join(dump, 'checkpoint')}" in err and "removed its partial step-4.tmp" in err
    assert committed(dump) == ["step-2"]


def test_corrupt_or_incompatible_checkpoint_is_a_clear_error_and_nothing_is_deleted(runs, tmp_path, capsys):
    dump = str(tmp_path / "d")
    shutil.copytree(runs["a"], dump)
    step6 = os.path.join(dump, "checkpoint", "step-6")
    shard = sorted(f for f in os.listdir(step6) if f.endswith(".distcp"))[0]
    before = sorted(os.listdir(step6))
    flip_bytes(os.path.join(step6, shard))  # 4096 bytes inverted, the size kept
    rc, err = main_in_process(runs["common"] + ["--job.dump_folder", dump] + LONGER, capsys)
    assert rc == 2 and f"step-6 is corrupt: {shard} does not match the crc32" in err, err
    assert "Intact: step 4 (contents verified" in err and "--checkpoint.load_step 4" in err
    assert sorted(os.listdir(step6)) == before

    with open(os.path.join(step6, shard), "r+b") as f:
        f.truncate(100)
    rc, err = main_in_process(runs["common"] + ["--job.dump_folder", dump] + LONGER, capsys)
    assert rc == 2 and "is corrupt" in err and shard in err, err
    assert sorted(os.listdir(step6)) == before

    os.remove(os.path.join(step6, "COMPLETE"))
    rc, err = main_in_process(runs["common"] + ["--job.dump_folder", dump] + LONGER, capsys)
    assert rc == 2 and "marker is missing" in err and "--checkpoint.load_step" in err, err

    other_model = os.path.join(ROOT, "configs", "models", "gla_debug.json")
    rc, err = main_in_process(runs["common"] + ["--job.dump_folder", dump, "--checkpoint.load_step", "4",
                                                "--model.config", other_model], capsys)
    assert rc == 2 and "written for another model" in err, err

    rc, err = main_in_process(runs["common"] + ["--job.dump_folder", dump, "--checkpoint.load_step", "5"], capsys)
    assert rc == 2 and "no checkpoint for step 5" in err, err
    assert committed(dump) == ["step-2", "step-4", "step-6"]


def test_a_planted_metadata_is_refused_by_resume_and_by_the_converter(runs, tmp_path, capsys):
    from flame.tools import convert_dcp_to_hf
    dump, marker = str(tmp_path / "p"), str(tmp_path / "MARKER")
    shutil.copytree(runs["a"], dump)
    step6 = os.path.join(dump, "checkpoint", "step-6")
    plant_metadata(step6, marker)
    rc, err = main_in_process(runs["common"] + ["--job.dump_folder", dump] + LONGER, capsys)
    assert rc == 2 and ".metadata asks to import io.open" in err and "refusing to unpickle" in err, err
    assert convert_dcp_to_hf.main(["--checkpoint", step6, "--output", str(tmp_path / "hf")]) == 2
    assert ".metadata asks to import io.open" in capsys.readouterr().err
    assert not os.path.exists(marker)

    # A checkpoint from elsewhere names a tokenizer that is not here: one line, and nothing written.
    step4 = os.path.join(dump, "checkpoint", "step-4")
    with open(os.path.join(step4, "config.toml")) as f:
        job = f.read()
    with open(os.path.join(step4, "config.toml"), "w") as f:
        f.write(job.replace("[model]\n", "[model]\ntokenizer_path = \"/no/such/tokenizer\"\n"))
    reseal(step4)
    assert convert_dcp_to_hf.main(["--checkpoint", step4, "--output", str(tmp_path / "hf")]) == 2
    assert "tokenizer path '/no/such/tokenizer' does not exist" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "hf")


def test_a_planted_trainer_state_is_refused_on_every_rank(runs, tmp_path):
    dump, marker = str(tmp_path / "q"), str(tmp_path / "MARKER")
    shutil.copytree(runs["a"], dump)
    plant_trainer_state(os.path.join(dump, "checkpoint", "step-6"), marker)
    run = launch(runs["common"] + ["--job.dump_folder", dump] + LONGER, 2)
    assert run.returncode != 0
    assert on_every_rank(run.stderr, "trainer_state.pt asks to import io.open, which a flame checkpoint never "
                                     "holds: refusing to unpickle it"), run.stderr
    assert not os.path.exists(marker)
    assert committed(dump) == ["step-2", "step-4", "step-6"]


# ------------------------------------------------------------------------------------------- families, in process
FAMILIES = ["transformer_debug", "gla_hybrid_debug", "retnet_debug", "delta_net_debug", "gated_deltanet_debug"]


@pytest.mark.parametrize("family, ac", [(f, "none") for f in FAMILIES] + [("gla_debug", "selective")])
def test_every_family_trains_through_the_same_loop(family, ac, tmp_path, capsys):
    from fla.ops.utils.dispatch import use_backend
    from flame.train import main
    path = os.path.join(ROOT, "configs", "models", f"{family}.json")
    if not os.path.exists(path):
        pytest.skip(f"{path} not written yet")
    dump = str(tmp_path)
    with use_backend("torch"):
        rc = main(["--model.config", path, "--job.dump_folder", dump, "--training.steps", "2", "--training.seq_len",
                   "64", "--training.batch_size", "2", "--metrics.log_freq", "1", "--checkpoint.enable", "false",
                   "--activation_checkpoint.mode", ac, "--job.print_config", "false"])
    out = capsys.readouterr()
    assert rc == 0, out.err[-3000:]
    recs = records(dump)
    assert all(math.isfinite(recs[s]["loss"]) and math.isfinite(recs[s]["grad_norm"]) for s in (1, 2))
    assert torch.isfinite(torch.tensor(recs[2]["loss"]))


def test_activation_checkpointing_and_compile_leave_the_math_alone(tmp_path, capsys):
    """Full and selective AC recompute the same values (bit-identical on CPU); per-block compile matches closely."""
    from fla.ops.utils.dispatch import use_backend
    from flame.train import main
    model = str(tmp_path / "model.json")
    shutil.copy(MODEL, model)
    results = {}
    for name, extra in [("none", []), ("full", ["--activation_checkpoint.mode", "full"]),
                        ("selective", ["--activation_checkpoint.mode", "selective"]),
                        ("compile", ["--training.compile"])]:
        dump = str(tmp_path / name)
        with use_backend("torch"):
            rc = main(["--model.config", model, "--job.dump_folder", dump, "--training.steps", "2",
                       "--training.seq_len", "64", "--training.batch_size", "2", "--metrics.log_freq", "1",
                       "--checkpoint.enable", "false", "--job.print_config", "false"] + extra)
        assert rc == 0, capsys.readouterr().err[-3000:]
        results[name] = records(dump)
    for name in ("full", "selective"):
        for step in (1, 2):
            assert results[name][step]["loss"] == results["none"][step]["loss"], name
            assert results[name][step]["grad_norm"] == results["none"][step]["grad_norm"], name
    for step in (1, 2):
        assert abs(results["compile"][step]["loss"] - results["none"][step]["loss"]) < 1e-4


def test_accumulated_gradient_is_the_token_mean_not_a_mean_of_means():
    """Two packed microbatches of different lengths: the accumulated gradient equals that of one batch holding
    both (documents never interact under cu_seqlens), which a mean of microbatch means would not give."""
    import fla.models  # noqa: F401
    from transformers import AutoConfig, AutoModelForCausalLM

    from fla.ops.utils.dispatch import use_backend
    from flame.train import forward_backward, to_model_inputs

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(MODEL)).float()
    ids = torch.randint(1, 4096, (96,), generator=torch.Generator().manual_seed(1))

    def batch(tokens, cu):
        return {"input_ids": tokens[None], "position_ids": None, "cu_seqlens": torch.tensor(cu, dtype=torch.int32)}

    def grads():
        out = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        return out

    with use_backend("torch"):
        micro = [to_model_inputs(batch(ids[:64], [0, 20, 64]), torch.device("cpu"), True),
                 to_model_inputs(batch(ids[64:], [0, 5, 32]), torch.device("cpu"), True)]
        total = sum(n for _, n in micro)
        assert [n for _, n in micro] == [62, 30]  # 64 - 2 documents, 32 - 2 documents
        loss_sum = forward_backward(model, micro, world_size=1, global_targets=total)
        accumulated = grads()
        whole, n_whole = to_model_inputs(batch(ids, [0, 20, 64, 69, 96]), torch.device("cpu"), True)
        assert n_whole == total
        reference_loss = model(**whole).loss
        reference_loss.backward()
        reference = grads()
        for inp, _ in micro:
            (model(**inp).loss / len(micro)).backward()
        mean_of_means = grads()
    assert abs(loss_sum.item() / total - reference_loss.item()) < 1e-5
    num = sum((a - r).norm() ** 2 for a, r in zip(accumulated, reference)) ** 0.5
    den = sum(r.norm() ** 2 for r in reference) ** 0.5
    wrong = sum((m - r).norm() ** 2 for m, r in zip(mean_of_means, reference)) ** 0.5
    assert num / den < 1e-5 < wrong / den


@pytest.mark.parametrize("schedule", ["constant", "cosine", "linear", "wsd"])
def test_lr_schedules(schedule):
    """Linear warmup to the peak, then: constant; cosine / linear down to lr * min_lr_factor; wsd: stable, then the
    last decay_ratio of the steps decaying."""
    from flame.config import load_config
    from flame.schedule import build_optimizers
    config = load_config(["--training.steps", "20", "--lr_scheduler.warmup_steps", "4", "--optimizer.lr", "1.0",
                          "--lr_scheduler.schedule", schedule, "--lr_scheduler.min_lr_factor", "0.1",
                          "--lr_scheduler.decay_ratio", "0.25"])
    model = torch.nn.Linear(2, 2)
    optimizers, schedulers = build_optimizers(model, config, torch.device("cpu"))
    lrs = []
    for _ in range(20):
        lrs.append(schedulers.schedulers[0].get_last_lr()[0])
        optimizers.step()
        schedulers.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    if schedule == "constant":
        assert lrs[4:] == pytest.approx([1.0] * 16)
    elif schedule == "wsd":
        assert lrs[4:15] == pytest.approx([1.0] * 11)
        assert all(a > b for a, b in zip(lrs[15:], lrs[16:])) and lrs[-1] >= 0.1
    else:
        assert all(a > b for a, b in zip(lrs[4:], lrs[5:])) and 0.1 <= lrs[-1] < 0.2
        # a quarter into the decay: cosine 0.1 + 0.9 * (1 + cos(pi / 4)) / 2, linear 0.1 + 0.9 * 0.75
        assert lrs[8] == pytest.approx(0.868198, abs=1e-4) if schedule == "cosine" else lrs[8] == pytest.approx(0.775)
