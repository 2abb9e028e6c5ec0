"""Optimizer and LR schedule: torchtitan's containers, plus what a resume with changed settings needs.

torchtitan's LR schedule is a pure function of the step (a LambdaLR over warmup / stable / decay), built for one
`training.steps`. A resume saves only the step, so a run resumed with more steps (or another warmup, decay or peak)
would follow the new curve from that step on: the LR jumps (seen: a cosine run resumed at step 20 with its steps
raised went from 3.7e-4 to 8.6e-4). By default (`lr_scheduler.resume_schedule = "continue"`) the decay is
planned again from the LR the run had reached, so the LR moves on smoothly to `lr * min_lr_factor` at the new last
step; "recompute" keeps torchtitan's behaviour (the new settings as if they had held from step 0).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torchtitan.components.optimizer import LRSchedulersContainer, OptimizersContainer, ParamGroupConfig

# Settings that shape the LR curve: a resume that changes one of them re-plans the schedule.
SCHEDULE_KEYS = ("training.steps", "optimizer.lr", "lr_scheduler.warmup_steps", "lr_scheduler.schedule",
                 "lr_scheduler.decay_ratio", "lr_scheduler.decay_type", "lr_scheduler.min_lr_factor")


class LRSchedules(LRSchedulersContainer):
    """torchtitan's container, restoring its step without the per-rank `get_last_lr()` UserWarning.

    torchtitan's `load_state_dict` calls `LambdaLR.get_lr()` outside `step()`, which torch answers with a warning on
    every rank at every resume; the LR of a LambdaLR is `base_lr * lambda(step)`, computed here directly."""

    def __init__(self, optimizers, lr_lambda: Callable[[int], float]):
        super().__init__(optimizers, lr_lambda)
        self.resumed_step: int | None = None

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        last_epoch = int(state_dict["last_epoch"])
        for scheduler in self.schedulers:
            scheduler.last_epoch = last_epoch
            scheduler._step_count = last_epoch + 1
            scheduler._last_lr = _lrs(scheduler, last_epoch)
        self.resumed_step = last_epoch

    def replace_lambda(self, lr_lambda: Callable[[int], float], *, apply_now: bool) -> None:
        """Follow `lr_lambda` from the current step on; `apply_now` also sets the optimizer's LR for the next step
        (otherwise it keeps the LR restored with the optimizer state, as torchtitan does)."""
        for scheduler in self.schedulers:
            scheduler.lr_lambdas = [lr_lambda] * len(scheduler.optimizer.param_groups)
            scheduler._last_lr = _lrs(scheduler, scheduler.last_epoch)
            if apply_now:
                for group, lr in zip(scheduler.optimizer.param_groups, scheduler._last_lr):
                    group["lr"] = lr


def _lrs(scheduler, step: int) -> list[float]:
    return [base * fn(step) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas)]


def build_optimizers(model, config, device: torch.device):
    """AdamW (or Adam) and the configured LR schedule, from torchtitan's containers. Two parameter groups, by
    flame.param_groups.weight_decay_groups: `optimizer.weight_decay` on the decayed one, 0 on the excluded one
    (`optimizer.weight_decay_exclude`); a group with no parameter is left out."""
    from flame.param_groups import Optimizers, exact_pattern, weight_decay_groups
    o = config.optimizer
    implementation = o.implementation
    if implementation == "auto":
        implementation = "fused" if device.type == "cuda" else "foreach"
    groups = weight_decay_groups(model, o.weight_decay_exclude)
    kwargs = {"lr": o.lr, "betas": (o.beta1, o.beta2), "eps": o.eps}
    param_groups = [ParamGroupConfig(pattern=exact_pattern(names), optimizer_name=o.name,
                                     optimizer_kwargs={**kwargs, "weight_decay": weight_decay})
                    for names, weight_decay in ((groups.decay, o.weight_decay), (groups.no_decay, 0.0)) if names]
    optimizers = Optimizers(OptimizersContainer.Config(param_groups=param_groups, implementation=implementation),
                            model_parts=[model], weight_decay_groups=groups)
    built = LRSchedulersContainer.Config(**_titan_schedule(config.lr_scheduler)).build(
        optimizers=optimizers, training_steps=config.training.steps)
    # the same lambda in our container (a LambdaLR built twice on one optimizer only resets its LR to lambda(0))
    return optimizers, LRSchedules(optimizers, built.schedulers[0].lr_lambdas[0])


def _titan_schedule(s) -> dict[str, Any]:
    decay_ratio, decay_type = {"constant": (0.0, "linear"), "cosine": (None, "cosine"), "linear": (None, "linear"),
                               "wsd": (s.decay_ratio, s.decay_type)}[s.schedule]
    return dict(warmup_steps=s.warmup_steps, decay_ratio=decay_ratio, decay_type=decay_type,
                min_lr_factor=s.min_lr_factor)


def _shape(kind: str, progress: float) -> float:
    """1 at progress 0 down to 0 at progress 1."""
    progress = min(max(progress, 0.0), 1.0)
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if kind == "sqrt":
        return 1.0 - math.sqrt(progress)
    return 1.0 - progress


def continued_lambda(config, resume_index: int, factor_now: float, planned: Callable[[int], float],
                     steps_left: int | None = None):
    """The LR multiplier (of optimizer.lr) from `resume_index` on, starting at `factor_now` (where the run was).

    lambda(i) is the LR of the step after the schedule's i-th step; `resume_index` is the schedule's step count at
    the checkpoint (fewer than the training step when steps were skipped) and the decay ends `steps_left` (default
    training.steps - resume_index) schedule steps later. Still in the (new) warmup: ramp linearly from
    `factor_now` to the peak at its end, then the new settings' own lambda `planned`. After it: a decaying schedule
    decays from `factor_now` to `min_lr_factor` (wsd: holds `factor_now` until its decay window, then decays);
    `constant` holds the peak."""
    s, total = config.lr_scheduler, config.training.steps
    end = resume_index + (total - resume_index if steps_left is None else steps_left)
    warmup = min(s.warmup_steps, total)
    floor = s.min_lr_factor
    kind = s.decay_type if s.schedule == "wsd" else s.schedule
    decay_from = max(resume_index, end - round(total * s.decay_ratio)) if s.schedule == "wsd" else resume_index

    def factor(i: int) -> float:
        if resume_index < warmup:
            if i < warmup:
                return factor_now + (1.0 - factor_now) * (i - resume_index) / (warmup - resume_index)
            return planned(i)
        if s.schedule == "constant":
            return 1.0
        if i < decay_from:
            return factor_now
        return floor + (factor_now - floor) * _shape(kind, (i - decay_from) / max(end - decay_from, 1))

    return factor


def replan_after_resume(config, step: int, optimizers, lr_schedulers: LRSchedules) -> str:
    """After loading a checkpoint whose LR settings differ: follow `lr_scheduler.resume_schedule` from training step
    `step` on, and return the line that says what the LR does."""
    schedulers = lr_schedulers.schedulers
    lr_now = float(optimizers.optimizers[0].param_groups[0]["lr"])  # restored with the optimizer: the old curve's
    base = float(schedulers[0].base_lrs[0])
    planned = schedulers[0].lr_lambdas[0]
    index = schedulers[0].last_epoch  # the schedule's own step count: a skipped step did not advance it
    steps_left = config.training.steps - step
    last = index + steps_left - 1  # the index of the last step's LR
    if config.lr_scheduler.resume_schedule == "recompute":
        lr_schedulers.replace_lambda(planned, apply_now=True)
        return (f"[lr] the schedule follows the new settings as if they had held from step 0: "
                f"{base * planned(index):.3g} at step {step + 1} (it was {lr_now:.3g}), "
                f"{base * planned(last):.3g} at step {config.training.steps}")
    fn = continued_lambda(config, index, lr_now / base, planned, steps_left)
    lr_schedulers.replace_lambda(fn, apply_now=True)
    return (f"[lr] the schedule changed: the LR goes on from {lr_now:.3g} at step {step + 1} without a jump "
            f"to {base * fn(last):.3g} at step {config.training.steps} ({config.lr_scheduler.schedule}; "
            f"lr_scheduler.resume_schedule \"recompute\" would follow the new settings as if they had held "
            f"from step 0: {base * planned(index):.3g} at step {step + 1})")
