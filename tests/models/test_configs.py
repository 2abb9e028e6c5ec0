"""Every JSON under configs/models builds its model (on the meta device: no memory) through the Auto classes."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import fla.models  # noqa: F401

CONFIGS = sorted((Path(__file__).parents[2] / "configs" / "models").glob("*.json"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_model_config_builds(path):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    params = sum(p.numel() for p in model.parameters())
    if path.stem.endswith("_debug"):
        assert config.vocab_size == 4096 and params < 5e6
    else:
        target = 340e6 if "340M" in path.stem else 1.3e9
        assert config.vocab_size == 32000 and 0.9 * target < params < 1.25 * target, params
    assert model.flops_per_token(2048) > 6 * (params - model.model.embeddings.weight.numel())


def test_there_is_a_config_per_family_and_size():
    names = {p.stem for p in CONFIGS}
    for family in ("transformer", "gla", "retnet", "delta_net", "gated_deltanet", "mamba2", "forgetting_transformer",
                   "kda"):
        assert {f"{family}_debug", f"{family}_340M", f"{family}_1.3B"} <= names
    assert "gla_hybrid_debug" in names and "kda_hybrid_debug" in names
