"""The training entry point; reads top to bottom as the story of a run.

    torchrun --nproc_per_node=N -m flame.train --job.config_file configs/X.toml [--section.key value ...]
    python -m flame.train --job.config_file configs/debug.toml            (one process)

config -> distributed init -> dump-folder lock -> tokenizer and data -> model (meta, materialize, AC, compile,
FSDP2) -> optimizer and LR schedule -> resume (or rewind) -> loop (accumulate, clip, step or skip, log, validate,
checkpoint). Exit codes: 0 done, 2 bad input (config, data, checkpoint, a dump folder in use; one line on every
rank), 3 the run stopped itself (training.max_consecutive_skipped_steps).
The structure follows torchtitan's Trainer; its components are used where they work as a library on CPU and GPU.

Rank 0 says what the run does: a banner (ranks, device, model, data with weights, validation data, dump folder,
fresh start or resume point), a line before each slow phase, progress lines with an ETA, the settings a resume
changed, and a summary at the end. Only the standard library and flame.config are imported at module level, so
`--help` and config errors come before torch, DCP, datasets, transformers and torchtitan are loaded (seconds).
"""
from __future__ import annotations

import contextlib
import gc
import math
import os
import sys
import time
import traceback
from typing import TYPE_CHECKING, Any, Iterator

from flame.config import ConfigError, JobConfig, load_config, load_toml, to_toml

if TYPE_CHECKING:
    import torch


# ---------------------------------------------------------------------------------------------------- building
def data_sources(section, *, split_override: str | None = None) -> list:
    """The [data] (or [validation]) keys -> a list of flame.data.SourceConfig; comma-separated lists pair up."""
    from flame.data import SourceConfig

    def split(value, what, n):
        items = [v.strip() for v in str(value).split(",")] if value is not None else [None]
        if len(items) == 1:
            return items * n
        if len(items) != n:
            raise ConfigError(f"{what} lists {len(items)} values for {n} datasets; give one, or one per dataset")
        return items

    paths = [p.strip() for p in section.dataset.split(",") if p.strip()]
    if not paths:
        raise ConfigError("data.dataset is empty: give a dataset path, a hub name or 'default'")
    n = len(paths)
    names = split(section.dataset_name, "dataset_name", n)
    splits = split(split_override or section.dataset_split, "dataset_split", n)
    files = split(section.data_files, "data_files", n)
    probs = split(getattr(section, "data_probs", None), "data.data_probs", n)
    try:
        weights = [1.0 if p is None else float(p) for p in probs]
    except ValueError:
        raise ConfigError(f"data.data_probs must be numbers, got {section.data_probs!r}") from None
    if not all(math.isfinite(w) and w > 0 for w in weights):
        raise ConfigError(f"data.data_probs must be finite numbers > 0 (relative weights), got "
                          f"{section.data_probs!r}")
    return [SourceConfig(path=p, name=nm, split=sp, weight=w, text_column=getattr(section, "text_column", "text"),
                         streaming=getattr(section, "streaming", False), data_files=f)
            for p, nm, sp, w, f in zip(paths, names, splits, weights, files)]


def validation_sources(config: JobConfig) -> tuple[list, str]:
    """The held-out sources and what the banner says about them. Unset `validation.dataset` follows the training
    data: the same sources (subsets, data_files, weights) with `validation.dataset_split`."""
    v = config.validation
    if v.dataset is not None:
        return data_sources(v, split_override=v.dataset_split), f"{v.dataset} split {v.dataset_split!r}"
    sources = data_sources(config.data, split_override=v.dataset_split)
    from flame.data.sources import has_splits
    note = "" if all(has_splits(s) for s in sources) else (
        " (local files have no splits: this reads the training files; name held-out data with validation.dataset)")
    return sources, f"{config.data.dataset} split {v.dataset_split!r}, following data.dataset{note}"


def token_byte_lengths(tokenizer, vocab_size: int) -> torch.Tensor:
    """UTF-8 bytes of each token id, decoding each id once (special tokens count 0): for bits per byte."""
    import torch
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    lengths = torch.zeros(vocab_size, dtype=torch.float64)
    for i in range(min(vocab_size, len(tokenizer))):
        if i not in special:
            lengths[i] = len(tokenizer.decode([i]).encode("utf-8"))
    return lengths


def to_model_inputs(batch: dict[str, Any], device: torch.device, varlen: bool) -> tuple[dict[str, Any], int]:
    """Loader batch -> model kwargs (labels included) and the number of scored targets in it.

    The model shifts labels inside (token t predicts labels[t + 1]) and, under cu_seqlens, scores no prediction
    across a document boundary. The labels given here already carry -100 at those places (every document start
    but the first, and the loader's end padding), so the count `labels[..., 1:] != -100` is exact in either layout
    ([B, L], or [1, B*L] for varlen) and the loss can be weighted by tokens."""
    input_ids = batch["input_ids"].to(device, non_blocking=True)
    position_ids = batch.get("position_ids")
    position_ids = position_ids.to(device, non_blocking=True) if position_ids is not None else None
    cu_seqlens = cu_seqlens_cpu = batch.get("cu_seqlens")  # the loader's host tensor
    if varlen and cu_seqlens is not None:
        input_ids = input_ids.reshape(1, -1)
        position_ids = position_ids.reshape(1, -1) if position_ids is not None else None
        cu_seqlens = cu_seqlens.to(device, non_blocking=True)
    else:
        cu_seqlens = None
    labels = input_ids.clone()
    if cu_seqlens is not None:
        labels[:, cu_seqlens[1:-1].long()] = -100
    padding = int(batch.get("padding") or 0)
    if padding:
        labels.view(-1)[-padding:] = -100
    inputs = {"input_ids": input_ids, "labels": labels}
    if position_ids is not None:
        inputs["position_ids"] = position_ids
    if cu_seqlens is not None:
        # with the host copy the model builds its varlen index without reading the device: no sync in any layer
        inputs["cu_seqlens"], inputs["cu_seqlens_cpu"] = cu_seqlens, cu_seqlens_cpu
    n_targets = int((labels[..., 1:] != -100).sum())
    return inputs, n_targets


def forward_backward(model, microbatches: list[tuple[dict[str, Any], int]], *, world_size: int,
                     global_targets: float, inject_nan: bool = False) -> torch.Tensor:
    """Accumulate the gradient of the token-mean loss over all microbatches of all ranks; return this rank's sum
    of per-token losses (float64).

    Each microbatch's mean loss is weighted by its share of the step's targets (n / N_global), so the result is
    the mean over tokens, not a mean of microbatch means. FSDP averages gradients over ranks, hence * world_size."""
    loss_sum = None
    for i, (inputs, n_targets) in enumerate(microbatches):
        loss = model(**inputs).loss
        if inject_nan and i == 0:
            loss = loss * float("nan")
        (loss * (n_targets * world_size / global_targets)).backward()
        term = loss.detach().double() * n_targets
        loss_sum = term if loss_sum is None else loss_sum + term
    return loss_sum


def check_every_shard_has_documents(dataloader, *, world_size: int, num_workers: int) -> None:
    """Shard j of the ranks x workers shards reads documents j, j + S, ...: with fewer documents than shards in
    every source, some shard (and so some rank) owns none. Known up front for random-access sources; a stream's
    length is not, and the loop's data check says it at the first step instead."""
    from flame.data import DataSourceError
    sources = dataloader.sources
    if any(src.streaming for src in sources):
        return
    most = max(len(src.dataset) for src in sources)
    if most < dataloader.num_shards:
        raise DataSourceError(
            f"data.dataset has {most} document{'s' if most != 1 else ''} in its largest source, fewer than the "
            f"{dataloader.num_shards} loader shards ({world_size} data-parallel ranks x {max(1, num_workers)} "
            f"workers each): a shard without documents has no data to train on. Use more data, fewer ranks or "
            f"a smaller data.num_workers")


def next_microbatches(data_iter: Iterator, n: int, world, step: int, device: torch.device, varlen: bool, cp=None):
    """This step's `n` loader batches, their model inputs with target counts, and the number of targets on all
    ranks together. Collective: a rank without data makes every rank raise DataSourceError (one all-reduce carries
    the targets and every rank's flag)."""
    import torch

    from flame import distributed as fdist
    batches, empty = [], False
    for _ in range(n):
        try:
            batches.append(next(data_iter))
        except StopIteration:
            empty = True
            break
    microbatches = [] if empty else [fdist.split_for_cp(*to_model_inputs(b, device, varlen), cp) for b in batches]
    counts = torch.zeros(1 + world.world_size, dtype=torch.float64)
    counts[0] = float(sum(k for _, k in microbatches))
    counts[1 + world.rank] = float(empty)
    counts = fdist.all_reduce_sum(counts.to(device)).cpu()  # NCCL reduces device tensors only
    out = [r for r in range(world.world_size) if counts[1 + r] > 0]
    if out:
        from flame.data import DataSourceError
        raise DataSourceError(
            f"data-parallel rank{'s' if len(out) > 1 else ''} {out} of {world.world_size} ran out of data at step "
            f"{step}: every loader shard repeats its documents forever, so that shard owns none (data.dataset has "
            f"fewer documents than ranks x data.num_workers). Use more data, fewer ranks or a smaller "
            f"data.num_workers")
    return batches, microbatches, max(float(counts[0]), 1.0)


class TrainingStopped(RuntimeError):
    """The run stopped itself: it cannot recover (exit code 3)."""


@contextlib.contextmanager
def dump_folder_lock(folder: str, world) -> Iterator[None]:
    """Hold `<dump_folder>/flame.lock` (rank 0) for the run; every rank raises DumpFolderInUse while another run
    holds it. Released on the way out, also on an exception; a SIGKILLed run's lock is stale and taken over."""
    from flame import distributed as fdist
    from flame.run_lock import DumpFolderInUse, RunLock
    lock = RunLock(folder)
    outcome = None
    if world.is_main:
        try:
            outcome = ("ok", lock.acquire())
        except DumpFolderInUse as e:
            outcome = ("busy", str(e))
    kind, text = fdist.broadcast_object(outcome)
    if kind == "busy":
        raise DumpFolderInUse(text)
    if text:
        _log(world, text)
    try:
        yield
    finally:
        lock.release()


# ---------------------------------------------------------------------------------------------------- the run
class TrainState:
    """What the loop counts; saved with each checkpoint."""

    def __init__(self):
        self.step = 0
        self.tokens_seen = 0
        self.skipped_steps = 0
        self.source_tokens: dict[str, int] = {}

    def state_dict(self) -> dict[str, Any]:
        from flame import distributed as fdist
        return {"step": self.step, "tokens_seen": self.tokens_seen, "skipped_steps": self.skipped_steps,
                "source_tokens": dict(self.source_tokens), "rng": fdist.rng_state()}

    def load(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.tokens_seen = int(state.get("tokens_seen", 0))
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.source_tokens = dict(state.get("source_tokens", {}))
        if state.get("rng") is not None:
            from flame import distributed as fdist
            fdist.set_rng_state(state["rng"])


def _log(world, message: str) -> None:
    if world.is_main:
        print(message, flush=True)


def create_seed_checkpoint(config: JobConfig, world) -> None:
    """Initial weights as step-0, written by one process: later runs of any world size load the same weights."""
    from flame.checkpoint import Checkpointer, CheckpointError
    from flame.models import build_model, load_model_config, materialize
    if world.world_size != 1:
        raise ConfigError("checkpoint.create_seed_checkpoint runs in one process (python -m flame.train ...)")
    model_config = load_model_config(config.model.config)
    model = materialize(build_model(model_config), world.device, config.training.seed)
    folder = os.path.join(config.job.dump_folder, config.checkpoint.folder)
    checkpointer = Checkpointer(folder, interval=1, keep_latest_k=0)
    if checkpointer.committed_steps():
        raise CheckpointError(f"{folder} already holds checkpoints {checkpointer.committed_steps()}; a seed "
                              f"checkpoint goes into an empty folder")
    checkpointer.save(0, model=model, train_state={"step": 0}, config_toml=to_toml(config),
                      model_config=model_config, seed_checkpoint=True)


def train(config: JobConfig, world) -> dict[str, Any]:
    import torch
    import torch.distributed as dist

    from flame import distributed as fdist
    from flame import report
    from flame.checkpoint import Checkpointer, crash_now
    from flame.metrics import MetricsLogger, peak_flops, peak_memory_gib
    from flame.models import (ModelConfigError, build_model, flops_per_token, load_model_config, materialize,
                              num_params, parallelize)
    from flame.schedule import build_optimizers

    t = config.training
    dump = config.job.dump_folder
    if world.is_main:
        os.makedirs(dump, exist_ok=True)
    fdist.set_seed(t.seed, t.deterministic)
    if config.job.print_config:
        _log(world, f"[config] resolved job config:\n{to_toml(config)}")

    # --- where this run starts: known from the folder names alone, before anything is built
    checkpointer = Checkpointer(os.path.join(dump, config.checkpoint.folder), interval=config.checkpoint.interval,
                                keep_latest_k=config.checkpoint.keep_latest_k, enable=config.checkpoint.enable)
    resume_step = checkpointer.resolve_step(config.checkpoint.load_step) if config.checkpoint.enable else None
    if resume_step is not None and resume_step >= t.steps:
        checkpointer.check(resume_step)  # marker and sizes (nothing read): a broken last checkpoint is still said
        _log(world, report.nothing_to_do(resume_step, t.steps, checkpointer.step_dir(resume_step), dump))
        return {"step": resume_step, "loss": float("nan"), "skipped_steps": 0, "nothing_to_do": True}

    # --- tokenizer, model config and data (all checked before any weights are allocated)
    from flame.data import TokenizerError, build_dataloader, load_tokenizer
    _log(world, f"[tokenizer] loading {config.model.tokenizer_path or 'the embedded default tokenizer'}")
    try:
        tokenizer = load_tokenizer(config.model.tokenizer_path)
    except TokenizerError as e:
        raise ConfigError(f"model.tokenizer_path: {e}") from None
    model_config = load_model_config(config.model.config)
    if getattr(model_config, "vocab_size", len(tokenizer)) < len(tokenizer):
        raise ModelConfigError(f"model.config {config.model.config!r} has vocab_size {model_config.vocab_size} but "
                               f"the tokenizer has {len(tokenizer)} tokens")
    context_len = t.context_len or t.seq_len
    # context parallelism: the ranks of one CP group read the same batch and split each sample between them
    cp = fdist.build_context_parallel(world, config.parallelism.context_parallel_degree)
    _log(world, f"[data] opening {config.data.dataset}")
    dataloader = build_dataloader(
        sources=data_sources(config.data), tokenizer=tokenizer, seq_len=t.seq_len, batch_size=t.batch_size,
        context_len=context_len, varlen=t.varlen, num_workers=config.data.num_workers, seed=t.seed,
        dp_rank=cp.dp_rank, dp_world_size=cp.dp_size, prefetch_factor=config.data.prefetch_factor)
    check_every_shard_has_documents(dataloader, world_size=cp.dp_size, num_workers=config.data.num_workers)
    token_bytes, validation_text = None, "off (validation.enable = false)"
    if config.validation.enable:
        from flame.data import load_sources
        from flame.data import DataSourceError
        held_out, where = validation_sources(config)
        try:
            load_sources(held_out)  # fail early
        except DataSourceError as e:
            if config.validation.dataset is not None:
                raise
            raise DataSourceError(f"validation follows data.dataset, and {e}. Name held-out data with "
                                  f"validation.dataset (and validation.dataset_split), or pass "
                                  f"--validation.enable false") from None
        v = config.validation
        validation_text = f"{where}; every {v.freq} steps and at the end, {v.steps} batch{'es' if v.steps != 1 else ''}"
        token_bytes = token_byte_lengths(tokenizer, model_config.vocab_size)

    # --- model: meta -> weights under the seed -> activation checkpointing -> compile -> FSDP2
    fsdp_mesh = fdist.build_fsdp_mesh(world, config.parallelism.data_parallel_replicate_degree,
                                      config.parallelism.data_parallel_shard_degree, cp.degree)
    model = build_model(model_config)
    fdist.check_model_for_cp(model, cp)
    flops = flops_per_token(model, context_len)
    model = materialize(model, world.device, t.seed)
    n_params = num_params(model)
    _log(world, f"[model] {type(model).__name__} ({model_config.model_type}) from {config.model.config}: "
                f"{n_params:,} parameters, {flops / 1e9:.3f} GFLOPs per token (training)")
    parallelize(model, fsdp_mesh, device=world.device, ac_mode=config.activation_checkpoint.mode,
                ac_option=config.activation_checkpoint.selective_ac_option, compile=t.compile,
                compile_backend=config.compile.backend, compile_fullgraph=config.compile.fullgraph,
                compile_dynamic=config.compile.dynamic, param_dtype=t.mixed_precision_param,
                reduce_dtype=t.mixed_precision_reduce,
                reshard_after_forward=config.parallelism.fsdp_reshard_after_forward)
    model.train()
    optimizers, lr_schedulers = build_optimizers(model, config, world.device)

    # --- resume
    state = TrainState()
    start = "fresh start" + (" (checkpoints off)" if not config.checkpoint.enable else
                             f" (no checkpoint in {checkpointer.folder})")
    if resume_step is not None:
        _log(world, f"[checkpoint] checking every file of {checkpointer.step_dir(resume_step)} and loading it")
        saved = checkpointer.load(resume_step, model=model, optimizers=optimizers, lr_schedulers=lr_schedulers,
                                  model_config=model_config)
        if not saved.get("seed_checkpoint"):
            state.load(saved)
            if saved.get("dataloader") is not None:
                # flame.data's state holds every rank's position and re-splits it for another world size.
                dataloader.load_state_dict(saved["dataloader"])
        start = (f"resumed from {checkpointer.step_dir(resume_step)} (step {state.step}, saved on "
                 f"{saved.get('world_size', '?')} ranks, now {world.world_size})")
        _log(world, f"[checkpoint] {start}")
        for note in optimizers.resume_notes:  # group settings the checkpoint had otherwise (e.g. weight decay)
            _log(world, note)
        if not saved.get("seed_checkpoint"):
            resumed_schedule(config, world, checkpointer.step_dir(resume_step), state.step, optimizers,
                             lr_schedulers)
        checkpointer.set_aside_newer(resume_step)  # a rewind: this run's checkpoints replace the newer ones
    if world.is_main:
        tokens_per_step = t.batch_size * t.seq_len * t.gradient_accumulation_steps * cp.dp_size
        sources = [(src.label, src.config.weight, None if src.streaming else len(src.dataset))
                   for src in dataloader.sources]
        print(report.banner(world_size=world.world_size, device=str(world.device),
                            backend=dist.get_backend(), model_type=model_config.model_type,
                            model_path=config.model.config, params=n_params, train_sources=sources,
                            validation=validation_text, dump_folder=dump,
                            checkpoint_folder=checkpointer.folder if checkpointer.enable else None, start=start,
                            steps=t.steps, tokens_per_step=tokens_per_step, compile=t.compile,
                            optimizer=f"{config.optimizer.name}, "
                                      + optimizers.weight_decay_groups.describe(config.optimizer.weight_decay,
                                                                                config.optimizer.weight_decay_exclude)),
                     flush=True)

    # --- observability
    from torchtitan.distributed.utils import clip_grad_norm_, dist_max, dist_mean
    from torchtitan.tools.profiler import Profiler
    from torchtitan.tools.utils import GarbageCollection
    metrics = MetricsLogger(dump, total_steps=t.steps, start_step=state.step, rank=world.rank,
                            enable_tensorboard=config.metrics.enable_tensorboard,
                            enable_wandb=config.metrics.enable_wandb, wandb_project=config.metrics.wandb_project,
                            config=config.to_dict())
    device_peak = peak_flops(world.device, config.metrics.peak_tflops)
    gc_handler = GarbageCollection(gc_freq=t.gc_freq)
    prof_cfg = config.profiling
    profiler = Profiler(Profiler.Config(enable_profiling=prof_cfg.enable_profiling,
                                        save_traces_folder=prof_cfg.save_traces_folder,
                                        profile_freq=prof_cfg.profile_freq, profiler_warmup=prof_cfg.profiler_warmup,
                                        profiler_active=prof_cfg.profiler_active,
                                        enable_memory_snapshot=prof_cfg.enable_memory_snapshot),
                        global_step=state.step, base_folder=dump)

    def save(step: int) -> None:
        hook = None
        if config.job.crash_in_checkpoint and step == config.job.crash_at_step:
            hook = (lambda: crash_now()) if world.is_main else None
        sync_source_tokens()
        checkpointer.save(step, model=model, optimizers=optimizers, lr_schedulers=lr_schedulers,
                          train_state=state.state_dict(), dataloader_state=dataloader.state_dict(),
                          config_toml=to_toml(config), model_config=model_config, crash_hook=hook)

    local_source_tokens: dict[str, int] = {}

    def sync_source_tokens() -> None:
        for counts in fdist.all_gather_object(dict(local_source_tokens)):
            for name, n in counts.items():
                state.source_tokens[name] = state.source_tokens.get(name, 0) + int(n)
        local_source_tokens.clear()

    # --- the loop
    data_iter: Iterator = iter(dataloader)
    first_step, run_start, tokens_at_start = state.step + 1, time.perf_counter(), state.tokens_seen
    window_tokens, window_start = 0, time.perf_counter()
    last_loss = float("nan")
    validations: dict[int, dict[str, float]] = {}
    streak = 0  # steps skipped in a row
    if world.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(world.device)
    _log(world, f"[train] step {first_step}: the first step "
                + ("compiles every block (torch.compile) and may take minutes, on a CPU many"
                   if t.compile else "is the slowest (first batch, allocator warm-up)")
                + f"; progress every {config.metrics.log_freq} steps")
    with profiler as prof:
        while state.step < t.steps:
            state.step += 1
            step = state.step
            gc_handler.run(step)

            # Weight every microbatch by its share of the step's targets on all ranks, so the gradient is the
            # mean over tokens (not a mean of microbatch means). FSDP averages gradients over ranks: hence * W.
            batches, microbatches, global_targets = next_microbatches(
                data_iter, t.gradient_accumulation_steps, world, step, world.device, t.varlen, cp)
            for batch in batches if cp.rank == 0 else []:  # a CP group's ranks share each batch: count it once
                for name, n in (batch.get("source_tokens") or {}).items():
                    local_source_tokens[name] = local_source_tokens.get(name, 0) + int(n)
            loss_sum = forward_backward(model, microbatches, world_size=world.world_size,
                                        global_targets=global_targets,
                                        inject_nan=step in config.job.inject_nan_steps)
            last_loss = float(fdist.all_reduce_sum(loss_sum.reshape(1)).item()) / global_targets

            grad_norm = clip_grad_norm_(list(model.parameters()), t.max_norm if t.max_norm > 0 else math.inf,
                                        foreach=True)
            grad_norm = float(grad_norm.item())
            lr = lr_schedulers.schedulers[0].get_last_lr()[0]  # the LR this step uses
            if math.isfinite(grad_norm):
                optimizers.step()
                lr_schedulers.step()
                streak = 0
            else:
                state.skipped_steps += 1
                streak += 1
                _log(world, f"[train] step {step}: gradient norm is {grad_norm}; optimizer and LR steps skipped "
                            f"({state.skipped_steps} so far)")
            optimizers.zero_grad()
            step_tokens = sum(int(inp["input_ids"].numel()) for inp, _ in microbatches)
            state.tokens_seen += step_tokens * world.world_size
            window_tokens += step_tokens
            metrics.step_done(step)  # for the ETA (a step's validation and checkpoint count in the next interval)

            # the first step of a run is always shown: it says the run is alive (it may have taken minutes)
            if step % config.metrics.log_freq == 0 or step == t.steps or step == first_step:
                elapsed = time.perf_counter() - window_start
                # Ranks differ a little: report the mean throughput and the largest memory peak.
                tps = dist_mean(torch.tensor(window_tokens / max(elapsed, 1e-9), device=world.device), world.mesh)
                peak_mem = dist_max(torch.tensor(peak_memory_gib(world.device), device=world.device), world.mesh)
                sync_source_tokens()
                record = {"loss": last_loss, "tokens": state.tokens_seen, "lr": lr, "grad_norm": grad_norm,
                          "tokens_per_second_per_device": tps,
                          "mfu": (100.0 * flops * tps / device_peak) if device_peak else None,
                          "peak_memory_gib": peak_mem,
                          "skipped_steps": state.skipped_steps, "source_tokens": dict(state.source_tokens),
                          "elapsed_s": elapsed}
                metrics.log(step, record)
                window_tokens, window_start = 0, time.perf_counter()

            if streak and streak == t.max_consecutive_skipped_steps:
                # A skipped step leaves weights, optimizer and LR schedule alone, so what is saved is the last good
                # state: stop before this step is checkpointed.
                saved = checkpointer.committed_steps() if checkpointer.enable else []
                metrics.close()
                raise TrainingStopped(
                    f"steps {step - streak + 1}-{step}: {streak} steps in a row had a non-finite gradient norm "
                    f"(training.max_consecutive_skipped_steps={t.max_consecutive_skipped_steps}); stopping. "
                    + (f"The last checkpoint, {checkpointer.step_dir(saved[-1])}, is left as it was. "
                       if saved else "No checkpoint was saved. ")
                    + "Lower optimizer.lr (or raise lr_scheduler.warmup_steps), check the data, or raise "
                      "training.max_consecutive_skipped_steps")

            if config.validation.enable and (step % config.validation.freq == 0 or step == t.steps):
                validations[step] = validate(model, config, world, tokenizer, token_bytes, cp)
                metrics.log_validation(step, validations[step])

            if checkpointer.should_save(step, t.steps):
                save(step)
            if step == config.job.crash_at_step and world.is_main:
                crash_now()
            prof.step()
    metrics.close()
    dist.barrier()
    if world.is_main:
        kept = checkpointer.committed_steps() if checkpointer.enable else []
        best = None
        if len(validations) > 1:
            step_best = min(validations, key=lambda s: validations[s]["val_loss"])
            best = (step_best, validations[step_best]["val_loss"],
                    checkpointer.step_dir(step_best) if step_best in kept else None)
        print(report.summary(first_step=first_step, last_step=state.step, total=t.steps,
                             seconds=time.perf_counter() - run_start,
                             tokens_this_run=state.tokens_seen - tokens_at_start, tokens_seen=state.tokens_seen,
                             train_loss=last_loss, validation=validations.get(state.step), best=best,
                             last_checkpoint=checkpointer.step_dir(kept[-1]) if kept else None, dump_folder=dump,
                             skipped_steps=state.skipped_steps, source_tokens=state.source_tokens), flush=True)
    return {"step": state.step, "loss": last_loss, "skipped_steps": state.skipped_steps}


def resumed_schedule(config: JobConfig, world, step_dir: str, step: int, optimizers, lr_schedulers) -> None:
    """Compare the checkpoint's config with this one; print what changed. When the LR curve's settings changed,
    plan it from the LR the run reached (or recompute it, per lr_scheduler.resume_schedule) and say so."""
    from flame import report
    from flame.schedule import SCHEDULE_KEYS, replan_after_resume
    path = os.path.join(step_dir, "config.toml")
    if not os.path.isfile(path):
        return
    try:
        saved = load_toml(path)
    except ConfigError:
        return  # an older or hand-edited file: nothing to compare against
    changes = report.config_changes(saved, config)
    _log(world, report.describe_changes(step_dir, changes))
    if not any(key in SCHEDULE_KEYS for key, _, _ in changes):
        return
    _log(world, replan_after_resume(config, step, optimizers, lr_schedulers))


def validate(model, config: JobConfig, world, tokenizer, token_bytes: torch.Tensor, cp=None) -> dict[str, float]:
    """Loss and bits per byte on the held-out sources: the same first `validation.steps` batches every time."""
    import torch

    from flame import distributed as fdist
    from flame.data import build_dataloader
    t, v = config.training, config.validation
    loader = build_dataloader(sources=validation_sources(config)[0], tokenizer=tokenizer,
                              seq_len=t.seq_len, batch_size=v.batch_size or t.batch_size,
                              context_len=t.context_len or t.seq_len, varlen=t.varlen, num_workers=0, seed=t.seed,
                              dp_rank=cp.dp_rank if cp else world.rank,
                              dp_world_size=cp.dp_size if cp else world.world_size)
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64)  # nats, targets, bytes
    token_bytes = token_bytes.to(world.device)
    with torch.no_grad():
        for i, batch in enumerate(loader):
            if i == v.steps:
                break
            inputs, n_targets = to_model_inputs(batch, world.device, t.varlen)
            targets = inputs["labels"][..., 1:]
            n_bytes = token_bytes[targets[targets != -100]].sum() * float(cp is None or cp.rank == 0)  # once a batch
            inputs, n_targets = fdist.split_for_cp(inputs, n_targets, cp)
            loss = model(**inputs).loss.double()
            totals += torch.stack([loss.cpu() * n_targets, torch.tensor(float(n_targets)), n_bytes.cpu()])
    model.train()
    totals = fdist.all_reduce_sum(totals.to(world.device)).cpu()
    nats, n, n_bytes = totals.tolist()
    return {"val_loss": nats / max(n, 1), "val_bits_per_byte": nats / math.log(2) / max(n_bytes, 1)}


def main(argv: list[str] | None = None) -> int:
    try:
        config, config_error = load_config(argv), None
    except ConfigError as e:
        config, config_error = None, e
    if config_error is not None and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # one process: no rank to wait for, so say it before torch is even imported
        _say(f"flame.train: config error (rank 0): {config_error}")
        return 2
    if config is not None and os.environ.get("RANK", "0") == "0":
        _log_start(config)
    from flame import distributed as fdist
    from flame.checkpoint import CheckpointError
    from flame.models import ModelConfigError
    from flame.run_lock import DumpFolderInUse
    # The process group first, even for a bad config: every rank then says what is wrong before any exits.
    world = fdist.init_distributed()
    try:
        if config_error is not None:
            raise config_error
        with dump_folder_lock(config.job.dump_folder, world):
            if config.checkpoint.create_seed_checkpoint:
                create_seed_checkpoint(config, world)
            else:
                train(config, world)
        return 0
    except (ConfigError, ModelConfigError, CheckpointError, DumpFolderInUse, _data_errors()) as e:
        _say(f"flame.train: {_kind(e)} error (rank {world.rank}): {e}")
        fdist.wait_for_every_rank(world)
        return 2
    except TrainingStopped as e:
        _say(f"flame.train: training stopped (rank {world.rank}): {e}")
        fdist.wait_for_every_rank(world)
        return 3
    except Exception:
        # printed here, before the process group is torn down: torchrun stops this rank as soon as another exits,
        # and a traceback Python would print after `finally` is then lost
        _say(f"flame.train: unexpected error (rank {world.rank}):\n{traceback.format_exc()}")
        raise
    finally:
        # torchtitan's GarbageCollection disables automatic collection for the run; give it back to the caller.
        gc.enable()
        with contextlib.suppress(Exception):
            fdist.shutdown()


def _say(line: str) -> None:
    """One line to stderr in one write: every rank shares torchrun's stderr pipe, and print() writes the text and its
    newline separately, so another rank's line could land between them (seen in CI: two ranks' errors on one line).
    A pipe write under PIPE_BUF bytes is atomic; a longer one (a traceback) still arrives whole on most systems."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a captured stream (pytest's capsys) has no descriptor
        sys.stderr.write(line + "\n")
        return
    sys.stderr.flush()
    os.write(fd, (line + "\n").encode(errors="replace"))


def _log_start(config: JobConfig) -> None:
    """The first line, before the heavy imports and the process group (seconds on a busy machine)."""
    source = config.job.config_file or "defaults"
    what = "writing a seed checkpoint" if config.checkpoint.create_seed_checkpoint else \
        f"{config.training.steps} steps"
    print(f"[flame] {source}: {what} into {config.job.dump_folder}; loading torch and the trainer", flush=True)


def _data_errors() -> type:
    try:
        from flame.data import DataSourceError
        return DataSourceError
    except ImportError:  # pragma: no cover
        return ValueError


def _kind(e: Exception) -> str:
    return {"ConfigError": "config", "ModelConfigError": "model config", "CheckpointError": "checkpoint",
            "DataSourceError": "data", "DumpFolderInUse": "dump folder"}.get(type(e).__name__, type(e).__name__)


if __name__ == "__main__":
    sys.exit(main())
