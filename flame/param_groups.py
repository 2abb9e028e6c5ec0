"""Which parameters get weight decay: one rule, two optimizer groups, and a resume that keeps them as configured.

Decoupled weight decay pulls every decayed weight toward 0 at each step. For weight matrices that is the wanted
regularizer; for some parameters it changes what the model computes instead:
- the parameters a layer lists in its `_no_weight_decay` (Mamba-2's A_log, dt_bias and D; the A_log and dt_bias of
  Gated DeltaNet, KDA and Gated DeltaProduct) set each head's decay rate and time step: pulling them toward 0 pulls
  every head toward one and the same rate, undoing their spread-out initialization (the Mamba reference marks
  them so, for the same reason);
- one-dimensional parameters (norm weights, biases, per-channel gains such as RWKV-7's k_k or x_k): decay pulls a
  norm's gain toward 0 instead of its initial 1. Megatron, nanoGPT, the Hugging Face Trainer and RWKV's own trainer
  leave them undecayed;
- embeddings are decayed by most (Megatron, nanoGPT, the Hugging Face Trainer) and not by some (OLMo 2): a choice.

`optimizer.weight_decay_exclude` lists the kinds left undecayed (KINDS); the default is ["marked", "1d"]. An empty
list decays everything: the single group of torchtitan's default and of flame before this option.

The rule reads a module's `_no_weight_decay` names (a class attribute of fla's layers). The per-parameter attribute
`p._no_weight_decay = True` that the layers also set is honoured where present, but it does not survive
`flame.models.materialize` (`to_empty` allocates new Parameter objects), so it cannot be the only signal.

Checkpoints: torchtitan's container saves the optimizer per parameter name (`state.<fqn>.exp_avg`,
`param_groups.<fqn>.weight_decay`, ...), so checkpoints of any grouping have the same keys and load into any other,
the moments by name, exactly. torch's `load_state_dict` then takes every group's settings from the checkpoint (those
of the group's first parameter), so a checkpoint from one decayed group would silently decay A_log again after the
resume. `Optimizers.load_state_dict` puts the configured settings back (all but the LR, which the schedule owns) and
keeps a note of every parameter whose saved setting differed, for the resume log.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch.nn as nn
from torchtitan.components.optimizer import OptimizersContainer

KINDS = ("marked", "1d", "embedding")
KIND_TEXT = {"marked": "marked _no_weight_decay", "1d": "1-D", "embedding": "embedding"}
# group settings a resume compares with the checkpoint and reports (the others are implementation flags)
REPORTED = ("weight_decay", "betas", "eps")


@dataclass
class WeightDecayGroups:
    """Trainable parameter names (as `model.named_parameters()` gives them) split into decayed and excluded;
    `excluded` maps each kind of KINDS to its names (a name under the first kind it matches)."""

    decay: list[str]
    excluded: dict[str, list[str]]
    numel: dict[str, int] = field(repr=False)

    @property
    def no_decay(self) -> list[str]:
        return [name for kind in KINDS for name in self.excluded.get(kind, [])]

    def describe(self, weight_decay: float, exclude: Iterable[str]) -> str:
        """One line: how many parameters are decayed, how many are not and of which kinds (with their names)."""
        def count(names: list[str]) -> str:
            n = sum(self.numel[x] for x in names)
            return f"{n:,} parameters ({len(names)} tensor{'s' if len(names) != 1 else ''})"

        setting = f"optimizer.weight_decay_exclude = [{', '.join(repr(k) for k in exclude)}]"
        if weight_decay == 0:
            return f"weight decay 0 (off) on all {count(self.decay + self.no_decay)}"
        text = f"weight decay {weight_decay:g} on {count(self.decay)}"
        if not self.no_decay:
            return f"{text}, i.e. on every parameter ({setting})"
        kinds = "; ".join(f"{KIND_TEXT[k]}: {len(v)} ({short_names(v)})" for k, v in self.excluded.items() if v)
        return f"{text}; none on {count(self.no_decay)}: {kinds} ({setting})"


def weight_decay_groups(model: nn.Module, exclude: Iterable[str]) -> WeightDecayGroups:
    """Split the trainable parameters of `model` by the rule: a parameter is excluded from weight decay when it
    matches a kind in `exclude`:
        "marked":    a module lists it in `_no_weight_decay` (or the parameter has `_no_weight_decay = True`)
        "1d":        it has fewer than 2 dimensions of size above 1 (norm weights, biases, per-channel gains, also
                     when stored as [1, 1, D] like RWKV-7's token-shift mixes)
        "embedding": it is the weight of an nn.Embedding (with tied weights, the output head's too)
    Everything else is decayed. Works on any model: meta, materialized, wrapped or FSDP2-sharded."""
    exclude = list(exclude)
    unknown = [k for k in exclude if k not in KINDS]
    if unknown:
        raise ValueError(f"optimizer.weight_decay_exclude: unknown kind(s) {unknown}; the kinds are {list(KINDS)}")
    marked, embeddings = set(), set()
    for module in model.modules():
        names = getattr(module, "_no_weight_decay", ())
        for local in (names,) if isinstance(names, str) else names if isinstance(names, (tuple, list, set)) else ():
            param = module._parameters.get(local)
            if param is not None:
                marked.add(id(param))
        if isinstance(module, nn.Embedding):
            embeddings.add(id(module.weight))
    tests = {"marked": lambda p: id(p) in marked or bool(getattr(p, "_no_weight_decay", False)),
             "1d": lambda p: sum(n > 1 for n in p.shape) < 2, "embedding": lambda p: id(p) in embeddings}
    decay, excluded, numel = [], {k: [] for k in KINDS if k in exclude}, {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        numel[name] = param.numel()
        kind = next((k for k in KINDS if k in excluded and tests[k](param)), None)
        (decay if kind is None else excluded[kind]).append(name)
    return WeightDecayGroups(decay=decay, excluded=excluded, numel=numel)


def exact_pattern(names: list[str]) -> str:
    """A regex matching exactly these parameter names (torchtitan assigns parameters to groups by regex)."""
    return "^(?:" + "|".join(re.escape(n) for n in names) + ")$"


def short_names(names: list[str], limit: int = 5) -> str:
    """Distinct names without the block index and wrapper segments: `attn.A_log, attn.dt_bias, model.norm.weight`."""
    seen: list[str] = []
    for name in names:
        short = re.sub(r"(^|\.)(_checkpoint_wrapped_module|_orig_mod|_fsdp_wrapped_module)\.", r"\1", name)
        short = re.sub(r"^(model\.)?layers\.\d+\.", "", short)
        if short not in seen:
            seen.append(short)
    return ", ".join(seen[:limit]) + (f", +{len(seen) - limit} more" if len(seen) > limit else "")


def _plain(value: Any) -> Any:
    """A setting as saved (a list after some round trips) or as configured (a tuple, a tensor LR): comparable."""
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    if hasattr(value, "item"):
        return value.item()
    return value


def _show(value: Any) -> str:
    return "(" + ", ".join(f"{v:g}" for v in value) + ")" if isinstance(value, tuple) else f"{value:g}"


class Optimizers(OptimizersContainer):
    """torchtitan's container whose groups keep their configured settings through a resume.

    `weight_decay_groups` is the split it was built from; after `load_state_dict`, `resume_notes` holds one line
    per setting that the checkpoint had otherwise for some parameters (empty when it matched)."""

    def __init__(self, config: OptimizersContainer.Config, *, model_parts: list[nn.Module],
                 weight_decay_groups: WeightDecayGroups):
        super().__init__(config, model_parts=model_parts)
        self.weight_decay_groups = weight_decay_groups
        self.resume_notes: list[str] = []
        # what each group was built with: the LR is the schedule's (restored with its step), the rest the config's
        self._configured = [[{k: v for k, v in group.items() if k not in ("params", "param_names", "lr")}
                             for group in optim.param_groups] for optim in self.optimizers]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        changed: dict[tuple[str, Any, Any], list[str]] = {}
        for optim, configured in zip(self.optimizers, self._configured):
            for group, settings in zip(optim.param_groups, configured):
                for fqn in group["param_names"]:
                    for key in REPORTED:
                        saved = state_dict.get(f"param_groups.{fqn}.{key}")
                        if key in settings and saved is not None and _plain(saved) != _plain(settings[key]):
                            changed.setdefault((key, _plain(saved), _plain(settings[key])), []).append(fqn)
        super().load_state_dict(state_dict)  # the moments, step counts and LR, by parameter name
        for optim, configured in zip(self.optimizers, self._configured):
            for group, settings in zip(optim.param_groups, configured):
                group.update(settings)
        self.resume_notes = [
            f"[optimizer] {key} as configured, not as saved: {len(names)} parameter tensor"
            f"{'s' if len(names) != 1 else ''} ({short_names(names)}) had {_show(old)} in the checkpoint, now "
            f"{_show(new)}" + (" (optimizer.weight_decay_exclude)" if key == "weight_decay" else "")
            + "; their Adam moments are carried over as saved"
            for (key, old, new), names in changed.items()]
