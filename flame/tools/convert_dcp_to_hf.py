"""A flame checkpoint (DCP, any world size) -> a Hugging Face model directory.

    python -m flame.tools.convert_dcp_to_hf --checkpoint exp/debug/checkpoint/step-200 --output exp/debug/hf
    python -m flame.tools.convert_dcp_to_hf --checkpoint exp/debug/checkpoint --output exp/debug/hf  # latest step

The model config comes from the checkpoint's meta.json (the one it was trained with), the tokenizer from its
config.toml (model.tokenizer_path; the embedded default when unset). The result loads with
`AutoModelForCausalLM.from_pretrained(output)` after `import fla`. Without that import transformers does not know
the model type; the folder's config.json therefore names a two-line `fla_auto.py` in `auto_map`, so the error
transformers gives then points at it and `from_pretrained(output, trust_remote_code=True)` loads the installed fla
classes (nothing is downloaded; with `import fla` the file is never run).
"""
from __future__ import annotations

import argparse
import os
import sys

import torch


def _checkpoint_step(checkpointer, path: str) -> int:
    from flame.checkpoint import STEP_RE, CheckpointError
    match = STEP_RE.match(os.path.basename(os.path.normpath(path)))
    if match:
        return int(match.group(1))
    steps = checkpointer.committed_steps()
    if not steps:
        raise CheckpointError(f"{path} is neither a step-N checkpoint nor a folder holding one")
    return steps[-1]


def model_config_from_meta(meta: dict):
    import fla.models  # noqa: F401  (registers the families)
    from transformers import AutoConfig
    raw = dict(meta["model_config"])
    return AutoConfig.for_model(raw.pop("model_type"), **raw)


def convert(checkpoint: str, output: str, dtype: str = "float32") -> str:
    """Write the HF directory; returns its path. Runs in one process (a one-rank group is created if needed)."""
    from flame import distributed as fdist
    from flame.checkpoint import Checkpointer, CheckpointError
    from flame.models import build_model, materialize
    from flame.config import load_toml
    if os.path.exists(output) and os.listdir(output):
        raise CheckpointError(f"output {output} exists and is not empty: not overwriting it")
    checkpoint = os.path.normpath(checkpoint)
    folder = os.path.dirname(checkpoint) if is_step_dir(checkpoint) else checkpoint
    checkpointer = Checkpointer(folder, interval=1)
    step = _checkpoint_step(checkpointer, checkpoint)
    checkpointer.check(step)
    meta = checkpointer.read_meta(step)
    job = load_toml(os.path.join(checkpointer.step_dir(step), "config.toml"))
    from flame.data import load_tokenizer
    tokenizer = load_tokenizer(job.get("model", {}).get("tokenizer_path"))  # before anything is written
    model_config = model_config_from_meta(meta)
    world = fdist.init_distributed()
    model = materialize(build_model(model_config), torch.device("cpu"), seed=0)
    checkpointer.load(step, model=model, model_config=model_config)
    model = model.to(getattr(torch, dtype))
    os.makedirs(output, exist_ok=True)
    model.save_pretrained(output)
    write_auto_map(model, output)
    tokenizer.save_pretrained(output)
    if world.is_main:
        print(f"wrote {output} from {checkpointer.step_dir(step)} ({meta['model_config'].get('model_type')}, "
              f"{sum(p.numel() for p in model.parameters()):,} parameters, {dtype}); load it with `import fla` "
              f"then AutoModelForCausalLM.from_pretrained({output!r})")
    return output


AUTO_MODULE = "fla_auto"


def write_auto_map(model, output: str) -> None:
    """config.json's `auto_map` -> `fla_auto.py`, which imports the installed fla classes (see the module doc)."""
    import json
    config_cls, model_cls = type(model.config), type(model)
    with open(os.path.join(output, f"{AUTO_MODULE}.py"), "w") as f:
        f.write('"""Lets `AutoModelForCausalLM.from_pretrained(this_folder, trust_remote_code=True)` load this model '
                'without\n`import fla` first. With `import fla`, transformers uses the registered classes and never '
                'runs this file."""\n'
                f"from {config_cls.__module__} import {config_cls.__name__}  # noqa: F401\n"
                f"from {model_cls.__module__} import {model_cls.__name__}  # noqa: F401\n")
    path = os.path.join(output, "config.json")
    with open(path) as f:
        config = json.load(f)
    config["auto_map"] = {"AutoConfig": f"{AUTO_MODULE}.{config_cls.__name__}",
                          "AutoModelForCausalLM": f"{AUTO_MODULE}.{model_cls.__name__}"}
    with open(path, "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")


def is_step_dir(path: str) -> bool:
    from flame.checkpoint import STEP_RE
    return STEP_RE.match(os.path.basename(path)) is not None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a step-N folder, or a checkpoint folder (latest step)")
    parser.add_argument("--output", required=True, help="new Hugging Face model directory")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args(argv)
    from flame.checkpoint import CheckpointError
    from flame.data import TokenizerError
    from flame.distributed import shutdown
    try:
        convert(args.checkpoint, args.output, args.dtype)
    except (CheckpointError, TokenizerError) as e:  # a tokenizer_path in config.toml that is not here
        print(f"convert_dcp_to_hf: {e}", file=sys.stderr)
        return 2
    finally:
        shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
