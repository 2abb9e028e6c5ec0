"""Build an `fla.models` causal LM from its JSON config and parallelize it: activation checkpointing, per-block
`torch.compile`, FSDP2 `fully_shard` per block and at the root.

torchtitan's `apply_fsdp_to_decoder` / `apply_ac` expect its own model layout (`model.layers` as a ModuleDict,
`tok_embeddings`, ...); fla's models follow the Hugging Face layout (`model.model.layers` as a ModuleList,
`model.model.embeddings`, `model.lm_head`), so the few lines that walk the model are written here against that
layout, with the same torch.distributed primitives underneath.
"""
from __future__ import annotations

import json
import os

import torch
import torch.nn as nn


class ModelConfigError(ValueError):
    """A model JSON that is missing or cannot be built."""


def load_model_config(path: str):
    """The Hugging Face config of an `fla.models` model from its JSON file."""
    if not os.path.isfile(path):
        folder = os.path.dirname(path) or "."
        known = sorted(f for f in os.listdir(folder) if f.endswith(".json")) if os.path.isdir(folder) else []
        raise ModelConfigError(f"model.config {path!r} does not exist" +
                               (f"; files in {folder}: {', '.join(known)}" if known else ""))
    try:
        with open(path) as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise ModelConfigError(f"model.config {path!r} is not valid JSON: {e}") from None
    import fla.models  # noqa: F401  (registers every family with the Auto classes)
    from transformers import AutoConfig
    if "model_type" not in raw:
        raise ModelConfigError(f"model.config {path!r} has no 'model_type' (e.g. \"gla\", \"transformer\")")
    try:
        return AutoConfig.from_pretrained(path)
    except (ValueError, KeyError) as e:
        raise ModelConfigError(f"model.config {path!r} (model_type {raw['model_type']!r}) cannot be loaded: "
                               f"{e}") from None


def build_model(model_config) -> nn.Module:
    """The causal LM on the meta device: no memory is used until it is materialized."""
    from transformers import AutoModelForCausalLM
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(model_config)


def blocks(model: nn.Module) -> nn.ModuleList:
    return model.model.layers


@torch.no_grad()
def materialize(model: nn.Module, device: torch.device, seed: int) -> nn.Module:
    """Allocate the weights on `device` and initialise them under `seed`.

    This runs before sharding, so every rank holds the same full weights for a moment and the initial model is the
    same for any world size (torchtitan initialises shards instead, which ties the weights to the layout; for a
    model too large to hold once per device, write a seed checkpoint instead)."""
    model.to_empty(device=device)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model.reset_parameters()
    torch.random.set_rng_state(state)
    return model


def apply_activation_checkpointing(model: nn.Module, mode: str, selective_option: str = "op") -> None:
    """`full`: recompute every block in backward. `selective`, option N: every Nth block; option 'op': keep the
    matmul (and attention) outputs of every block and recompute the cheap element-wise ops."""
    if mode == "none":
        return
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
    layers = blocks(model)
    if mode == "full":
        chosen, context_fn = range(len(layers)), None
    elif selective_option == "op":
        chosen, context_fn = range(len(layers)), _op_level_policy_context
    else:
        every = int(selective_option)
        chosen, context_fn = [i for i in range(len(layers)) if (i + 1) % every == 0], None
    for i in chosen:
        kwargs = {"preserve_rng_state": False}
        if context_fn is not None:
            kwargs["context_fn"] = context_fn
        layers[i] = checkpoint_wrapper(layers[i], **kwargs)


def _op_level_policy_context():
    from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts
    aten = torch.ops.aten
    keep = {aten.mm.default, aten.addmm.default, aten.bmm.default, aten._scaled_mm.default}
    for name in ("_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
                 "_scaled_dot_product_cudnn_attention"):
        if hasattr(aten, name):
            keep.add(getattr(aten, name).default)

    def policy(ctx, op, *args, **kwargs):
        return CheckpointPolicy.MUST_SAVE if op in keep else CheckpointPolicy.PREFER_RECOMPUTE

    return create_selective_checkpoint_contexts(policy)


def apply_compile(model: nn.Module, backend: str = "inductor", fullgraph: bool = False,
                  dynamic: bool | None = None) -> None:
    """Compile each block in place: parameter names stay as they are (no `_orig_mod.`), so checkpoints do not
    depend on whether compile was on."""
    for block in blocks(model):
        block.compile(backend=backend, fullgraph=fullgraph, dynamic=dynamic)


def apply_fsdp(model: nn.Module, mesh, *, param_dtype: torch.dtype | None, reduce_dtype: torch.dtype | None,
               reshard_after_forward: str = "default") -> None:
    """FSDP2: one `fully_shard` group per block, the root group holds the embeddings, final norm and head."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    layers = blocks(model)
    for i, block in enumerate(layers):
        if reshard_after_forward == "default":
            # The last block's weights are needed again at once by backward: keep them gathered.
            reshard = i < len(layers) - 1
        else:
            reshard = reshard_after_forward == "always"
        fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard)
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward == "always")


def num_params(model: nn.Module, exclude_embeddings: bool = False) -> int:
    total = sum(p.numel() for p in model.parameters())
    if exclude_embeddings:
        total -= sum(p.numel() for p in model.model.embeddings.parameters())
    return total


def flops_per_token(model: nn.Module, seq_len: int) -> float:
    """Training FLOPs per token from the model's own count (forward + backward)."""
    fn = getattr(model, "flops_per_token", None)
    if fn is not None:
        return float(fn(seq_len))
    # Fallback for a model without its own count: 6 N (dense matmuls only).
    return 6.0 * num_params(model, exclude_embeddings=True)


DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}


def parallelize(model: nn.Module, mesh, *, device: torch.device, ac_mode: str = "none", ac_option: str = "op",
                compile: bool = False, compile_backend: str = "inductor", compile_fullgraph: bool = False,
                compile_dynamic: bool | None = None, param_dtype: str = "bfloat16", reduce_dtype: str = "float32",
                reshard_after_forward: str = "default") -> nn.Module:
    """AC, then compile, then FSDP2, in torchtitan's order. Mixed precision only on GPU: CPU trains in float32."""
    apply_activation_checkpointing(model, ac_mode, ac_option)
    if compile:
        apply_compile(model, compile_backend, compile_fullgraph, compile_dynamic)
    on_gpu = device.type == "cuda"
    apply_fsdp(model, mesh, param_dtype=DTYPES[param_dtype] if on_gpu else None,
               reduce_dtype=DTYPES[reduce_dtype] if on_gpu else None, reshard_after_forward=reshard_after_forward)
    return model


__all__ = ["ModelConfigError", "load_model_config", "build_model", "materialize", "parallelize", "blocks",
           "apply_activation_checkpointing", "apply_compile", "apply_fsdp", "flops_per_token", "num_params"]
