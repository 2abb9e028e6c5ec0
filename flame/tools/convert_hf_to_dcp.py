"""A Hugging Face `fla.models` directory -> a flame seed checkpoint (DCP `step-0`) to start training from.

    python -m flame.tools.convert_hf_to_dcp --hf exp/debug/hf --output exp/finetune/checkpoint

Training with `--job.dump_folder exp/finetune` (and a model.config matching the HF config) then starts from these
weights with a fresh optimizer, on any world size.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch


def convert(hf_dir: str, output: str, dtype: str = "float32") -> str:
    """Write `<output>/step-0`; returns its path. Runs in one process."""
    import fla.models  # noqa: F401
    from transformers import AutoModelForCausalLM
    from flame import distributed as fdist
    from flame.checkpoint import Checkpointer, CheckpointError
    from flame.config import JobConfig, to_toml
    if not os.path.isfile(os.path.join(hf_dir, "config.json")):
        raise CheckpointError(f"{hf_dir} is not a Hugging Face model directory (no config.json)")
    world = fdist.init_distributed()
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=getattr(torch, dtype))
    checkpointer = Checkpointer(output, interval=1)
    if checkpointer.committed_steps():
        raise CheckpointError(f"{output} already holds checkpoints {checkpointer.committed_steps()}: a converted "
                              f"model goes into an empty folder")
    job = JobConfig()
    job.model.config = os.path.join(hf_dir, "config.json")
    if os.path.isfile(os.path.join(hf_dir, "tokenizer.json")):
        job.model.tokenizer_path = hf_dir
    checkpointer.save(0, model=model, train_state={"step": 0}, config_toml=to_toml(job), model_config=model.config,
                      seed_checkpoint=True)
    if world.is_main:
        print(f"wrote {checkpointer.step_dir(0)} from {hf_dir}")
    return checkpointer.step_dir(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hf", required=True, help="Hugging Face model directory (config.json + weights)")
    parser.add_argument("--output", required=True, help="checkpoint folder to create step-0 in")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args(argv)
    from flame.checkpoint import CheckpointError
    from flame.distributed import shutdown
    try:
        convert(args.hf, args.output, args.dtype)
    except CheckpointError as e:
        print(f"convert_hf_to_dcp: {e}", file=sys.stderr)
        return 2
    finally:
        shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
