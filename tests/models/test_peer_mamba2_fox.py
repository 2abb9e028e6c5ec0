"""Mamba-2 and Forgetting Transformer checkpoints saved by the peer library (flash-linear-attention 0.6.0) load here
with no missing or unexpected keys (Mamba-2's `backbone.*` names through its registered key renames) and give the
peer's logits and cache states; ours save in its format; our config defaults are its defaults. The fixtures were
written by the peer itself (`tests/fixtures/peer_mamba2_fox/generate.py`)."""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch

import fla.models  # noqa: F401  (registers the families)
from fla.ops.utils.dispatch import use_backend
from tests.helpers import assert_close

FIXTURES = Path(__file__).parents[1] / "fixtures" / "peer_mamba2_fox"
CASES = sorted(p.name for p in FIXTURES.iterdir() if (p / "config.json").is_file())


@pytest.fixture(scope="module")
def peer_outputs() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(FIXTURES / "outputs.safetensors")


@pytest.fixture(autouse=True)
def torch_backend():
    with use_backend("torch"):
        yield


def load(path: Path):
    from transformers import AutoModelForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)
    return model.eval(), info


def flat(value, prefix: str, out: dict) -> dict:
    if isinstance(value, torch.Tensor):
        out[prefix] = value
    elif isinstance(value, (tuple, list)):
        for j, item in enumerate(value):
            flat(item, f"{prefix}.{j}", out)
    return out


def test_cases_cover_both_families():
    assert {json.loads((FIXTURES / c / "config.json").read_text())["model_type"] for c in CASES} == {
        "mamba2", "forgetting_transformer"}


@pytest.mark.parametrize("case", CASES)
def test_peer_checkpoint_gives_the_peer_logits_and_cache(case, peer_outputs):
    model, info = load(FIXTURES / case)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    with torch.no_grad():
        out = model(peer_outputs[f"{case}.input_ids"], use_cache=True)
    assert_close("logits", out.logits, peer_outputs[f"{case}.logits"], 1e-5)
    prefix = f"{case}.cache."
    want = {k[len(prefix):]: v for k, v in peer_outputs.items() if k.startswith(prefix)}
    got = {}
    for i, states in enumerate(out.past_key_values):
        for name, value in states.items():
            flat(value, f"{i}.{name}", got)
    assert sorted(got) == sorted(want), "the cache holds other states than the peer's"
    for name, value in want.items():
        assert_close(name, got[name].float(), value, 1e-5)


@pytest.mark.parametrize("case", CASES)
def test_round_trip_writes_the_peer_format(case, peer_outputs, tmp_path):
    from safetensors.torch import load_file

    model, _ = load(FIXTURES / case)
    model.save_pretrained(tmp_path)
    saved, peer = load_file(tmp_path / "model.safetensors"), load_file(FIXTURES / case / "model.safetensors")
    assert sorted(saved) == sorted(peer)
    for name in peer:
        assert torch.equal(saved[name], peer[name]), name
    config, peer_config = (json.loads((d / "config.json").read_text()) for d in (tmp_path, FIXTURES / case))
    for field in set(peer_config) - {"transformers_version", "dtype", "torch_dtype", "architectures"}:
        assert config.get(field) == peer_config[field], field
    reloaded, info = load(tmp_path)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    x = peer_outputs[f"{case}.input_ids"]
    with torch.no_grad():
        assert torch.equal(reloaded(x).logits, model(x).logits)


def test_our_defaults_are_the_peers():
    from transformers import AutoConfig

    for model_type, peer in json.loads((FIXTURES / "defaults.json").read_text()).items():
        ours = AutoConfig.for_model(model_type)
        for name, default in peer.items():
            assert hasattr(ours, name), f"{model_type}: the peer's field {name} is missing"
            value = getattr(ours, name)
            if isinstance(value, tuple):
                value = list(value)
            assert value == default, f"{model_type}.{name}: ours {value!r}, the peer's {default!r}"
    assert AutoConfig.for_model("mamba2").dt_limit == (0.0, math.inf)
