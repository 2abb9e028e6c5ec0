"""What a run says on the console (rank 0): the start banner, a resume's changed settings, the nothing-to-do
message and the end summary. Plain functions returning text, so tests read them without running a job."""
from __future__ import annotations

import os
from typing import Any

from flame.config import JobConfig


def flat(sections: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """{"training": {"steps": 6}} -> {"training.steps": 6}."""
    return {f"{section}.{key}": value for section, values in sections.items() if isinstance(values, dict)
            for key, value in values.items()}


def config_changes(saved: dict[str, dict[str, Any]], now: JobConfig) -> list[tuple[str, Any, Any]]:
    """(key, saved value, value now) for every setting that differs from the checkpoint's config.toml; a key the
    saved file lacks counts as its default's 'unset' (None). Keys this version no longer has are left out."""
    old, new = flat(saved), flat(now.to_dict())
    return [(k, old.get(k), new[k]) for k in sorted(new) if old.get(k) != new[k]
            and not (old.get(k) is None and k not in old and new[k] is None)]


def _show(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, str) else str(value)


def describe_changes(step_dir: str, changes: list[tuple[str, Any, Any]]) -> str:
    if not changes:
        return f"[resume] settings as saved with {step_dir}"
    lines = [f"[resume] {len(changes)} setting{'s' if len(changes) != 1 else ''} changed since {step_dir} was saved:"]
    lines += [f"  {key}: {_show(old)} -> {_show(new)}" for key, old, new in changes]
    return "\n".join(lines)


def convert_command(step_dir: str, dump_folder: str) -> str:
    return (f"python -m flame.tools.convert_dcp_to_hf --checkpoint {step_dir} --output "
            f"{os.path.join(dump_folder, 'hf')}")


def nothing_to_do(step: int, total: int, step_dir: str, dump_folder: str) -> str:
    where = "already at" if step == total else "already past the end:"
    return "\n".join([
        f"[flame] {where} step {step} of {total} ({step_dir}): nothing to train.",
        f"  to train longer: pass --training.steps N with N > {step} (the LR goes on from where it was, see "
        f"lr_scheduler.resume_schedule)",
        f"  to start over: remove {dump_folder} or pass another --job.dump_folder",
        f"  to Hugging Face: {convert_command(step_dir, dump_folder)}"])


def banner(*, world_size: int, device: str, backend: str, model_type: str, model_path: str, params: int,
           train_sources: list[tuple[str, float, int | None]], validation: str, dump_folder: str,
           checkpoint_folder: str | None, start: str, steps: int, tokens_per_step: int, compile: bool,
           optimizer: str | None = None) -> str:
    """The start banner. `train_sources`: (label, weight, documents or None for a stream); `optimizer`: what is
    decayed and what is not (flame.param_groups.WeightDecayGroups.describe)."""
    total_weight = sum(w for _, w, _ in train_sources) or 1.0
    data = "; ".join(f"{label} ({'streamed' if n is None else f'{n:,} documents'}, weight {w:g} = "
                     f"{100 * w / total_weight:.0f}%)" for label, w, n in train_sources)
    lines = [f"[flame] {world_size} rank{'s' if world_size != 1 else ''} on {device} ({backend})",
             f"  model       {model_type} from {model_path}: {params:,} parameters"
             + (" (torch.compile per block)" if compile else ""),
             *([f"  optimizer   {optimizer}"] if optimizer else []),
             f"  data        {data}",
             f"  validation  {validation}",
             f"  steps       {steps} x {tokens_per_step:,} tokens = {steps * tokens_per_step:,} tokens",
             f"  dump folder {dump_folder} (metrics.jsonl"
             + (f", checkpoints in {checkpoint_folder})" if checkpoint_folder else "; checkpoints off)"),
             f"  start       {start}"]
    return "\n".join(lines)


def summary(*, first_step: int, last_step: int, total: int, seconds: float, tokens_this_run: int,
            tokens_seen: int, train_loss: float, validation: dict[str, float] | None,
            best: tuple[int, float, str | None] | None, last_checkpoint: str | None, dump_folder: str,
            skipped_steps: int, source_tokens: dict[str, int] | None = None) -> str:
    from flame.metrics import format_duration
    ran = f"steps {first_step}-{last_step}" if last_step > first_step else f"step {last_step}"
    lines = [f"[flame] done: {ran} of {total} in {format_duration(seconds)} ({tokens_this_run:,} tokens this run, "
             f"{tokens_seen:,} in all)" + (f", {skipped_steps} skipped" if skipped_steps else ""),
             f"  final train loss {train_loss:.4f}"
             + (f", validation loss {validation['val_loss']:.4f} ({validation['val_bits_per_byte']:.3f} bits per "
                f"byte)" if validation else "")]
    total_read = sum((source_tokens or {}).values())
    if total_read:
        lines.append("  data read   " + "; ".join(f"{label} {n:,} tokens ({100 * n / total_read:.0f}%)"
                                                  for label, n in source_tokens.items()))
    if best is not None:
        lines.append(f"  best validation loss {best[1]:.4f} at step {best[0]}"
                     + (f" (checkpoint {best[2]})" if best[2] else " (not checkpointed)"))
    if last_checkpoint:
        lines.append(f"  last checkpoint {last_checkpoint}")
        lines.append(f"  to Hugging Face: {convert_command(last_checkpoint, dump_folder)} (load it with `import fla` "
                     f"first)")
    else:
        lines.append("  no checkpoint saved (checkpoint.enable is false)")
    return "\n".join(lines)
