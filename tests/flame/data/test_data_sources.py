"""Sources and their errors, the default corpus and tokenizer, the pre-tokenizing tool."""
from __future__ import annotations

import pytest
import torch

from flame.data import DataSourceError, SourceConfig, build_dataloader, default_corpus, load_source

from tests.flame.data.data_helpers import real_tokens, write_jsonl


def build(sources, tok, **kw):
    return build_dataloader(sources=sources, tokenizer=tok, seq_len=32, batch_size=2, **kw)


@pytest.mark.parametrize("streaming", [False, True])
def test_bad_sources_name_themselves(tmp_path, tok, monkeypatch, streaming):
    write_jsonl(tmp_path / "ok.jsonl", ["some text", "more text"])
    (tmp_path / "empty.jsonl").write_text("")
    write_jsonl(tmp_path / "other.jsonl", ["x"], column="content")
    cases = [
        (SourceConfig(str(tmp_path / "missing.jsonl")), r"missing\.jsonl.*no such file"),
        (SourceConfig(str(tmp_path / "*.parquet")), r"no file matches"),
        (SourceConfig(str(tmp_path / "empty.jsonl")), r"empty\.jsonl.* is empty"),
        (SourceConfig(str(tmp_path / "other.jsonl")), r"other\.jsonl.*no column 'text'.*content"),
        (SourceConfig(str(tmp_path / "ok.jsonl"), weight=0.0), r"ok\.jsonl.*weight must be > 0"),
        (SourceConfig("default", split="test"), r"'default'.*splits"),
    ]
    for cfg, match in cases:
        cfg.streaming = streaming
        with pytest.raises(DataSourceError, match=match):
            build([cfg], tok)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataSourceError, match=r"'nobody/no-such-dataset'.*offline"):
        build([SourceConfig("nobody/no-such-dataset", streaming=streaming)], tok)
    with pytest.raises(DataSourceError, match="no data source"):
        build([], tok)
    with pytest.raises(ValueError, match="'nobody/no-such-tokenizer' as a hub name while offline"):
        build([SourceConfig(str(tmp_path / "ok.jsonl"))], "nobody/no-such-tokenizer")
    with pytest.raises(ValueError, match="as a local directory"):
        build([SourceConfig(str(tmp_path / "ok.jsonl"))], str(tmp_path))


def test_tokenizer_without_eos(tmp_path, tok):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1, "b": 2}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    no_eos = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    path = write_jsonl(tmp_path / "ab.jsonl", ["a b a", "b b"])
    with pytest.raises(ValueError, match="no EOS token"):
        build([SourceConfig(path)], no_eos)
    loader = build([SourceConfig(path)], no_eos, eos_token_id=0, epochs=1)
    (batch,) = list(loader)
    assert real_tokens(batch).tolist() in ([1, 2, 1, 0, 2, 2, 0], [2, 2, 0, 1, 2, 1, 0])
    with pytest.raises(ValueError, match="outside the tokenizer's vocabulary"):
        build([SourceConfig(path)], no_eos, eos_token_id=99)


def test_default_corpus_and_tokenizer(tok):
    import datasets

    train, valid = datasets.load_from_disk(default_corpus("train")), datasets.load_from_disk(default_corpus("validation"))
    assert len(train) > 1000 and len(valid) > 20
    assert sum(len(t) for t in train["text"]) > 1_000_000, "a few MB of text"
    assert not set(train["id"]) & set(valid["id"]), "validation is held out"
    assert len(tok) == 4096 and tok.eos_token_id is not None
    text = valid[0]["text"]
    assert tok.decode(tok(text)["input_ids"]) == text, "byte-level BPE round-trips"
    assert len(tok(text)["input_ids"]) < len(text.encode()) / 2.5, "the BPE compresses the corpus it was trained on"
    loader = build_dataloader(sources=[SourceConfig("default", split="validation")], tokenizer=None, seq_len=256,
                              batch_size=4, epochs=1)
    batches = list(loader)
    assert batches and sum(real_tokens(b).numel() for b in batches) > 10_000
    assert all(b["input_ids"].max() < 4096 for b in batches)


def test_prepare_data_matches_online(tmp_path, tok):
    from flame.tools.prepare_data import main

    texts = [f"{i} " + "lorem ipsum dolor sit amet " * (i % 5) for i in range(25)]
    src = write_jsonl(tmp_path / "t.jsonl", texts)
    main(["--source", src, "--out", str(tmp_path / "tok"), "--tokenizer", "default"])
    assert load_source(SourceConfig(str(tmp_path / "tok"))).pretokenized
    online = list(build([SourceConfig(src)], tok, epochs=1, seed=2))
    offline = list(build([SourceConfig(str(tmp_path / "tok"))], tok, epochs=1, seed=2))
    assert len(online) == len(offline)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["cu_seqlens"], b["cu_seqlens"])
               for a, b in zip(online, offline))


def test_prepare_data_takes_several_sources_and_a_quoted_glob(tmp_path, tok):
    """`--source a b` (what an unquoted shell glob expands to) and `--source "dir/*.jsonl"` give one output with
    every document, in order."""
    from flame.tools.prepare_data import main

    data = tmp_path / "data"
    data.mkdir()
    a = write_jsonl(data / "a.jsonl", ["first file, one", "first file, two"])
    b = write_jsonl(data / "b.jsonl", ["second file"])
    want = ["first file, one", "first file, two", "second file"]
    for name, sources in [("listed", [a, b]), ("glob", [str(data / "*.jsonl")])]:
        main(["--source", *sources, "--out", str(tmp_path / name)])
        src = load_source(SourceConfig(str(tmp_path / name)))
        assert src.pretokenized and [tok.decode(r["input_ids"]) for r in src.dataset] == want, name


def test_default_data_is_learnable(tok):
    """A bigram model trained for a few dozen steps on the default corpus lowers the held-out loss by > 1 nat:
    the embedded data and tokenizer carry signal a tiny model can pick up."""
    torch.manual_seed(0)
    train = iter(build_dataloader(sources=[SourceConfig("default")], tokenizer=None, seq_len=128, batch_size=4))
    valid = next(iter(build_dataloader(sources=[SourceConfig("default", split="validation")], tokenizer=None,
                                       seq_len=512, batch_size=4, epochs=1)))
    model = torch.nn.Sequential(torch.nn.Embedding(len(tok), 32), torch.nn.Linear(32, len(tok)))
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)

    def loss_on(batch):
        ids = batch["input_ids"]
        return torch.nn.functional.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())

    with torch.no_grad():
        before = loss_on(valid).item()
    for _ in range(40):
        opt.zero_grad()
        loss_on(next(train)).backward()
        opt.step()
    with torch.no_grad():
        after = loss_on(valid).item()
    print(f"held-out loss {before:.2f} -> {after:.2f}")
    assert before > 7.5 and after < before - 1.0
