"""flame: a torchtitan-derived trainer for `fla` models (FSDP2, resumable distributed checkpoints).

Entry point: `python -m flame.train --job.config_file configs/debug.toml` (or under torchrun).
"""
