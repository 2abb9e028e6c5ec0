"""flame.tools: a trained DCP checkpoint -> Hugging Face directory -> DCP -> Hugging Face, identical logits."""
import os

import pytest
import torch

from tests.helpers import transformers_log

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("family", ["gla_hybrid_debug"])
def test_dcp_hf_round_trip_gives_identical_logits(family, tmp_path, capsys):
    with transformers_log() as log:
        round_trip(family, tmp_path, capsys)
    # a normal train, convert and generate run prints no deprecation notice of transformers (e.g. the cache name)
    assert "deprecat" not in log.getvalue().lower(), log.getvalue()


def round_trip(family, tmp_path, capsys):
    import fla.models  # noqa: F401
    from transformers import AutoModelForCausalLM

    from fla.ops.utils.dispatch import use_backend
    from flame.checkpoint import CheckpointError
    from flame.tools import convert_dcp_to_hf, convert_hf_to_dcp
    from flame.train import main

    model_json = str(tmp_path / "model.json")
    with open(os.path.join(ROOT, "configs", "models", f"{family}.json")) as src, open(model_json, "w") as dst:
        dst.write(src.read())
    dump = str(tmp_path / "run")
    with use_backend("torch"):
        rc = main(["--model.config", model_json, "--job.dump_folder", dump, "--training.steps", "2",
                   "--training.seq_len", "64", "--training.batch_size", "2", "--checkpoint.interval", "2",
                   "--job.print_config", "false"])
    assert rc == 0, capsys.readouterr().err[-2000:]

    hf1, dcp2, hf2 = str(tmp_path / "hf1"), str(tmp_path / "dcp2"), str(tmp_path / "hf2")
    assert convert_dcp_to_hf.main(["--checkpoint", os.path.join(dump, "checkpoint"), "--output", hf1]) == 0
    assert convert_hf_to_dcp.main(["--hf", hf1, "--output", dcp2]) == 0
    assert convert_dcp_to_hf.main(["--checkpoint", os.path.join(dcp2, "step-0"), "--output", hf2]) == 0
    assert os.path.exists(os.path.join(hf1, "tokenizer.json"))

    x = torch.randint(0, 4096, (2, 48), generator=torch.Generator().manual_seed(0))
    with use_backend("torch"), torch.no_grad():
        a = AutoModelForCausalLM.from_pretrained(hf1).eval()(x).logits
        b = AutoModelForCausalLM.from_pretrained(hf2).eval()(x).logits
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)
    # Without `import fla` transformers knows the folder only through auto_map: fla_auto.py imports fla's classes,
    # so the error it gives points there and trust_remote_code=True loads the installed fla model
    import json
    with open(os.path.join(hf1, "config.json")) as f:
        assert json.load(f)["auto_map"]["AutoModelForCausalLM"] == "fla_auto.GLAForCausalLM"
    with use_backend("torch"), torch.no_grad():
        remote = AutoModelForCausalLM.from_pretrained(hf1, trust_remote_code=True).eval()
        assert type(remote) is fla.models.GLAForCausalLM and torch.equal(remote(x).logits, a)
    with use_backend("torch"):
        AutoModelForCausalLM.from_pretrained(hf1).eval().generate(x[:, :8], max_new_tokens=4, do_sample=False)

    # The converted step-0 is a seed checkpoint: training starts from it (same weights, fresh optimizer).
    with use_backend("torch"):
        rc = main(["--model.config", model_json, "--job.dump_folder", str(tmp_path), "--checkpoint.folder", "dcp2",
                   "--training.steps", "1", "--training.seq_len", "64", "--training.batch_size", "2",
                   "--job.print_config", "false"])
    out = capsys.readouterr()
    assert rc == 0, out.err[-2000:]
    assert "resumed from" in out.out and "step-0 (step 0" in out.out

    # Never overwrite: a second conversion into a non-empty directory is refused.
    assert convert_dcp_to_hf.main(["--checkpoint", os.path.join(dcp2, "step-0"), "--output", hf2]) == 2
    assert "not overwriting" in capsys.readouterr().err
    with pytest.raises(CheckpointError):
        convert_hf_to_dcp.convert(str(tmp_path), str(tmp_path / "x"))


def test_a_peer_checkpoint_seeds_training(tmp_path, capsys):
    """A checkpoint saved by the peer library (flash-linear-attention 0.6.0, tests/fixtures/peer) converts with
    convert_hf_to_dcp into a step-0 that training resumes from; converted back, its tensors are the peer's."""
    import shutil

    from safetensors.torch import load_file
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from fla.ops.utils.dispatch import use_backend
    from flame.tools import convert_dcp_to_hf, convert_hf_to_dcp
    from flame.train import main

    peer = os.path.join(ROOT, "tests", "fixtures", "peer", "gated_deltanet")
    hf = str(tmp_path / "hf")
    shutil.copytree(peer, hf)
    # the fixture's vocabulary is 32 tokens: a character tokenizer of that size to train it on
    letters = " etaoinshrdlucmfwygpbvkxj"
    vocab = {"<|endoftext|>": 0, "<|pad|>": 1, "<unk>": 2, **{c: i + 3 for i, c in enumerate(letters)}}
    assert len(vocab) <= 32
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                            pad_token="<|pad|>", unk_token="<unk>").save_pretrained(hf)

    assert convert_hf_to_dcp.main(["--hf", hf, "--output", str(tmp_path / "checkpoint")]) == 0
    back = str(tmp_path / "back")
    assert convert_dcp_to_hf.main(["--checkpoint", str(tmp_path / "checkpoint" / "step-0"), "--output", back]) == 0
    want, got = load_file(os.path.join(peer, "model.safetensors")), load_file(os.path.join(back, "model.safetensors"))
    assert sorted(got) == sorted(want) and all(torch.equal(got[k], want[k]) for k in want)
    with use_backend("torch"):
        rc = main(["--model.config", os.path.join(hf, "config.json"), "--model.tokenizer_path", hf,
                   "--job.dump_folder", str(tmp_path), "--training.steps", "1", "--training.seq_len", "32",
                   "--training.batch_size", "2", "--job.print_config", "false"])
    out = capsys.readouterr()
    assert rc == 0, out.err[-2000:]
    assert "resumed from" in out.out and "step-0 (step 0" in out.out
