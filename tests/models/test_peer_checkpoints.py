"""Checkpoints saved by the peer library (flash-linear-attention 0.6.0) load here with no missing or unexpected keys
and give the peer's logits and cache states; ours save in its format. The fixtures in tests/fixtures/peer were
written by the peer itself (`tests/fixtures/peer/generate.py`): every family and every option of its configs."""
from __future__ import annotations

import inspect
import json
import warnings
from pathlib import Path

import pytest
import torch

import fla.models  # noqa: F401  (registers the families)
from fla.ops.utils.dispatch import use_backend
from tests.helpers import assert_close

FIXTURES = Path(__file__).parents[1] / "fixtures" / "peer"
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
        warnings.simplefilter("ignore")  # a peer option that its model ignores (e.g. use_gk) warns by design
        model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)
    return model.eval(), info


def cache_states(case: str, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    prefix = f"{case}.cache."
    return {k[len(prefix):]: v for k, v in outputs.items() if k.startswith(prefix)}


def flat(value, prefix: str, out: dict) -> dict:
    if isinstance(value, torch.Tensor):
        out[prefix] = value
    elif isinstance(value, (tuple, list)):
        for j, item in enumerate(value):
            flat(item, f"{prefix}.{j}", out)
    return out


def test_there_is_a_fixture_per_family():
    families = {json.loads((FIXTURES / c / "config.json").read_text())["model_type"] for c in CASES}
    assert families == {"gla", "retnet", "linear_attn", "delta_net", "gated_deltanet", "transformer"}


@pytest.mark.parametrize("case", CASES)
def test_peer_checkpoint_gives_the_peer_logits_and_cache(case, peer_outputs):
    model, info = load(FIXTURES / case)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    with torch.no_grad():
        out = model(peer_outputs[f"{case}.input_ids"], use_cache=True)
    assert_close("logits", out.logits, peer_outputs[f"{case}.logits"], 1e-5)
    want = cache_states(case, peer_outputs)
    got = {}
    for i, states in enumerate(out.past_key_values):
        for name, value in states.items():
            flat(value, f"{i}.{name}", got)
    assert sorted(got) == sorted(want), "the cache holds other states than the peer's"
    for name, value in want.items():
        assert_close(name, got[name].float(), value, 1e-5)


@pytest.mark.parametrize("case", CASES)
def test_round_trip_writes_the_peer_format(case, peer_outputs, tmp_path):
    """ours -> peer format -> ours: the same tensors under the peer's names, the peer's config fields, and the
    same logits bit for bit."""
    from safetensors.torch import load_file

    model, _ = load(FIXTURES / case)
    model.save_pretrained(tmp_path)
    saved, peer = load_file(tmp_path / "model.safetensors"), load_file(FIXTURES / case / "model.safetensors")
    assert sorted(saved) == sorted(peer)
    for name in peer:
        assert torch.equal(saved[name], peer[name]), name
    config, peer_config = (json.loads((d / "config.json").read_text()) for d in (tmp_path, FIXTURES / case))
    for field in set(peer_config) - {"transformers_version", "dtype", "torch_dtype"}:
        assert config.get(field) == peer_config[field], field
    x = peer_outputs[f"{case}.input_ids"]
    reloaded, info = load(tmp_path)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        assert torch.equal(reloaded(x).logits, model(x).logits)


def test_our_defaults_are_the_peers():
    """Every argument of the peer's config classes exists in ours with the same default."""
    from transformers import AutoConfig

    recorded = json.loads((FIXTURES / "defaults.json").read_text())["defaults"]
    for model_type, peer in recorded.items():
        ours = AutoConfig.for_model(model_type)
        params = inspect.signature(type(ours).__init__).parameters
        for name, default in peer.items():
            assert hasattr(ours, name), f"{model_type}: the peer's field {name} is missing"
            value = getattr(ours, name)
            assert value == default, f"{model_type}.{name}: ours {value!r}, the peer's {default!r}"
            assert name in params or any(name in inspect.signature(c.__init__).parameters
                                         for c in type(ours).__mro__ if "__init__" in vars(c)), name


@pytest.mark.parametrize("model_type, fields, match", [
    ("gla", dict(attnres_block_size=2), "attnres_block_size"),
    ("gla", dict(hidden_act="powlu"), "hidden_act='powlu'"),
    ("gla", dict(feature_map="cosine"), "feature_map='cosine'"),
    ("gla", dict(attn_mode="parallel"), "attn_mode='parallel'"),
    ("retnet", dict(feature_map="hedgehog"), "feature_map='hedgehog'"),
    ("linear_attn", dict(feature_map="taylor"), "feature_map='taylor'"),
    ("delta_net", dict(qk_norm="rms"), "qk_norm='rms'"),
    ("delta_net", dict(qk_activation="gelu"), "qk_activation='gelu'"),
    ("delta_net", dict(attn_mode="fused_chunk"), "attn_mode='fused_chunk'"),
    ("gated_deltanet", dict(output_gate_activation="relu"), "output_gate_activation='relu'"),
    ("gated_deltanet", dict(num_heads=4, num_v_heads=6), "num_v_heads=6"),
    ("gla", dict(num_hidden_layers=2, attn=[{"layers": [0], "num_heads": 2}, {"layers": [0], "num_heads": 4}]),
     "repeats layer 0"),
])
def test_unsupported_peer_values_are_refused_by_name(model_type, fields, match):
    from transformers import AutoConfig

    with pytest.raises(ValueError, match=match.replace("(", r"\(")):
        AutoConfig.for_model(model_type, **fields)


@pytest.mark.parametrize("model_type, fields", [
    ("gla", dict(use_gk=False)), ("gla", dict(use_gv=True)), ("retnet", dict(use_short_conv=True)),
    ("delta_net", dict(use_output_norm=False)), ("transformer", dict(elementwise_affine=False)),
])
def test_peer_fields_its_model_ignores_warn(model_type, fields):
    from transformers import AutoConfig

    with pytest.warns(UserWarning, match=f"{next(iter(fields))}=.* has no effect"):
        AutoConfig.for_model(model_type, **fields)


@pytest.mark.parametrize("model_type, fields, match", [
    ("gla", dict(gate_logit_normalizer=8), "gate_logit_normalizer=8"),
    ("gla", dict(gate_fn="sigmoid"), "gate_fn='sigmoid'"),
    ("retnet", dict(rope_theta=500.0), "rope_theta=500.0"),
    ("linear_attn", dict(output_norm="identity"), "output_norm='identity'"),
    ("linear_attn", dict(feature_map="silu"), "feature_map='silu'"),
])
def test_saving_what_the_peer_cannot_read_warns(model_type, fields, match, tmp_path):
    from transformers import AutoConfig

    config = AutoConfig.for_model(model_type, **fields)
    with pytest.warns(UserWarning, match=match):
        config.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        AutoConfig.for_model(model_type).save_pretrained(tmp_path)  # the defaults: nothing to say


def test_both_fused_losses_are_stored_as_the_peer_accepts():
    """The peer refuses fuse_cross_entropy and fuse_linear_cross_entropy both True; here the linear one wins, and
    the config says so, so that the saved config loads there."""
    from transformers import AutoConfig

    config = AutoConfig.for_model("gla", fuse_cross_entropy=True, fuse_linear_cross_entropy=True)
    assert config.fuse_linear_cross_entropy and not config.fuse_cross_entropy
