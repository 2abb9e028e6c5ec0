"""Packing, mixing, exact resume and resharding of flame.data's loader (CPU, tiny synthetic sources)."""
from __future__ import annotations

import collections
import gzip
import json

import pytest
import torch

from flame.data import SourceConfig, build_dataloader, merge_states
from tests.flame.data.data_helpers import (EOS, STRIDE, check_batch, doc_lengths, expected_tokens, real_tokens,
                                           write_jsonl, write_pretokenized)


def drain(loader) -> list[dict]:
    return list(iter(loader))


def take(loader, n: int) -> list[dict]:
    it = iter(loader)
    return [next(it) for _ in range(n)]


def roundtrip(state: dict) -> dict:
    """Through JSON: the state must be plain values that any checkpoint format can hold."""
    return json.loads(json.dumps(state))


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("batch_size,seq_len,context_len", [(1, 64, None), (3, 32, None), (2, 64, 24)])
def test_packing_epoch_is_exact(tmp_path, tok, streaming, batch_size, seq_len, context_len):
    lengths = doc_lengths(40, 150)
    path = write_pretokenized(tmp_path / "docs", lengths)
    loader = build_dataloader(sources=[SourceConfig(path, streaming=streaming)], tokenizer=tok, seq_len=seq_len,
                              batch_size=batch_size, context_len=context_len, epochs=1, seed=3)
    seen, eos = collections.Counter(), 0
    batches = drain(loader)
    for batch in batches:
        for seg in check_batch(batch, batch_size, seq_len, context_len):
            seen.update(t for t in seg if t != EOS)
            eos += seg.count(EOS)
    assert all(b["padding"] == 0 for b in batches[:-1]) and batches[-1]["padding"] < batch_size * seq_len
    assert seen == expected_tokens(lengths), "tokens dropped or duplicated over the epoch"
    assert eos == len(lengths), "one EOS per document"
    assert loader.tokens_per_source() == {"docs": sum(lengths) + len(lengths)}


def test_workers_epoch_is_exact(tmp_path, tok):
    """Two worker processes over one epoch: every token once; a restore after the end yields nothing more."""
    lengths = doc_lengths(50, 120, seed=5)
    path = write_pretokenized(tmp_path / "docs", lengths)
    loader = build_dataloader(sources=[SourceConfig(path)], tokenizer=tok, seq_len=48, batch_size=2, num_workers=2,
                              epochs=1)
    batches = drain(loader)
    for batch in batches:
        check_batch(batch, 2, 48, None)
    tokens = [t for b in batches for t in real_tokens(b).tolist()]
    assert collections.Counter(t for t in tokens if t != EOS) == expected_tokens(lengths)
    assert tokens.count(EOS) == len(lengths)
    again = build_dataloader(sources=[SourceConfig(path)], tokenizer=tok, seq_len=48, batch_size=2, num_workers=2,
                             epochs=1)
    again.load_state_dict(roundtrip(loader.state_dict()))
    assert drain(again) == []


def test_text_sources_count_tokens(tmp_path, tok):
    """Online tokenization of jsonl, gzip'd jsonl, parquet and txt: the epoch holds every token + one EOS per doc."""
    import datasets

    texts = [f"Document number {i}. " + "The quick brown fox jumps over the lazy dog. " * (i % 7) for i in range(30)]
    write_jsonl(tmp_path / "a.jsonl", texts[:10])
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as f:
        f.writelines(json.dumps({"body": t}) + "\n" for t in texts[10:20])
    datasets.Dataset.from_dict({"text": texts[20:25]}).to_parquet(str(tmp_path / "c.parquet"))
    (tmp_path / "d.txt").write_text("\n".join(t.replace("\n", " ") for t in texts[25:]) + "\n")
    sources = [SourceConfig(str(tmp_path / "a.jsonl")), SourceConfig(str(tmp_path / "b.jsonl.gz"), text_column="body"),
               SourceConfig(str(tmp_path / "c.parquet"), streaming=True), SourceConfig(str(tmp_path / "d.txt"))]
    loader = build_dataloader(sources=sources, tokenizer=tok, seq_len=48, batch_size=2, epochs=1)
    batches = drain(loader)
    want = sum(len(tok(t, add_special_tokens=False)["input_ids"]) + 1 for t in texts)
    assert sum(real_tokens(b).numel() for b in batches) == want
    assert sum(int((real_tokens(b) == tok.eos_token_id).sum()) for b in batches) == len(texts)
    first = tok.decode(batches[0]["input_ids"][0, : batches[0]["cu_seqlens"][1] - 1])
    assert first.startswith("Document number"), first
    assert set(loader.tokens_per_source()) == {"a.jsonl", "b.jsonl.gz", "c.parquet", "d.txt"}


def test_non_varlen_windows(tmp_path, tok):
    lengths = doc_lengths(20, 100)
    path = write_pretokenized(tmp_path / "docs", lengths)
    loader = build_dataloader(sources=[SourceConfig(path)], tokenizer=tok, seq_len=32, batch_size=2, varlen=False,
                              epochs=1)
    batches = drain(loader)
    assert all(b["cu_seqlens"] is None for b in batches)
    assert all(torch.equal(b["position_ids"], torch.arange(32).repeat(2, 1)) for b in batches)
    tokens = torch.cat([real_tokens(b) for b in batches]).tolist()
    assert collections.Counter(t for t in tokens if t != EOS) == expected_tokens(lengths)
    assert tokens.count(EOS) == len(lengths)


def test_mixing_ratios_and_determinism(tmp_path, tok):
    a = write_pretokenized(tmp_path / "a", doc_lengths(60, 80, seed=1))
    b = write_pretokenized(tmp_path / "b", doc_lengths(60, 80, seed=2), first_doc=100)
    sources = [SourceConfig(a, weight=3.0), SourceConfig(b, weight=1.0)]

    def run(seed):
        loader = build_dataloader(sources=sources, tokenizer=tok, seq_len=64, batch_size=2, seed=seed)
        return take(loader, 150), loader.tokens_per_source()

    batches, counts = run(seed=0)
    # Mixing is by tokens, a whole document at a time: off by at most a document or two (<= 81 tokens each).
    assert abs(counts["a"] - 3 * counts["b"]) <= 3 * 2 * 81, counts
    assert counts["a"] / counts["b"] == pytest.approx(3.0, rel=0.05), counts
    for batch in batches:
        from_a = int(((real_tokens(batch) - 1) // STRIDE < 100).logical_and(real_tokens(batch) != EOS).sum())
        assert from_a <= batch["source_tokens"]["a"] <= from_a + 64  # a's EOS tokens are counted as a's too
    again, _ = run(seed=0)
    other, _ = run(seed=1)
    assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(batches, again))
    assert not all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(batches, other))


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("num_workers", [0, 2])
def test_exact_resume_twice(tmp_path, tok, num_workers, streaming):
    """Save, restore, save, restore: the batches equal an uninterrupted run's, counters included; the run wraps
    into a second epoch of the smaller source."""
    a = write_pretokenized(tmp_path / "a", doc_lengths(30, 120, seed=1))
    b = str(tmp_path / "b.jsonl")
    write_jsonl(tmp_path / "b.jsonl", [f"text {i} " * (1 + i % 9) for i in range(15)])
    sources = [SourceConfig(a, streaming=streaming), SourceConfig(b, weight=0.5, streaming=streaming)]

    def make():
        return build_dataloader(sources=sources, tokenizer=tok, seq_len=40, batch_size=2, context_len=24,
                                num_workers=num_workers, seed=7)

    phases = [5, 7, 9]
    reference = make()
    want = take(reference, sum(phases))
    got, state, loader = [], None, None
    for n in phases:
        loader = make()
        if state is not None:
            loader.load_state_dict(state)
        got += take(loader, n)
        state = roundtrip(loader.state_dict())
    for i, (g, w) in enumerate(zip(got, want)):
        for key in ("input_ids", "position_ids", "cu_seqlens"):
            assert torch.equal(g[key], w[key]), f"batch {i}: {key} differs after a restore"
        assert g["source_tokens"] == w["source_tokens"]
    assert loader.tokens_per_source() == reference.tokens_per_source()


def _run_layout(paths, tok, world: int, workers: int, state: dict | None, steps, streaming: bool, epochs: int):
    """Every rank of a layout: load `state`, take `steps[rank]` batches (None = to the end); the tokens they gave,
    and the merged state."""
    tokens, states = [], []
    for rank in range(world):
        loader = build_dataloader(sources=[SourceConfig(p, streaming=streaming) for p in paths], tokenizer=tok,
                                  seq_len=32, batch_size=2, context_len=20, num_workers=workers, seed=5,
                                  dp_rank=rank, dp_world_size=world, epochs=epochs)
        if state is not None:
            loader.load_state_dict(state)
        batches = drain(loader) if steps[rank] is None else take(loader, steps[rank])
        tokens += [t for b in batches for t in real_tokens(b).tolist()]
        states.append(roundtrip(loader.state_dict()))
    return tokens, merge_states(states)


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("layouts", [
    [(2, 0, [3, 5]), (1, 0, [None])],            # world 2 -> 1
    [(1, 0, [6]), (2, 0, [None, None])],         # world 1 -> 2
    [(2, 0, [4, 2]), (3, 0, [3, 1, 2]), (1, 0, [None])],  # two reshards in a row
    [(1, 2, [5]), (2, 0, [None, None])],         # 2 workers -> 2 ranks: same shard count, another layout
    [(1, 2, [7]), (3, 0, [None, None, None])],   # workers -> ranks with a reshard
])
def test_reshard_reads_every_piece_once(tmp_path, tok, layouts, streaming):
    la, lb = doc_lengths(40, 90, seed=3), doc_lengths(25, 90, seed=4)
    paths = [write_pretokenized(tmp_path / "a", la), write_pretokenized(tmp_path / "b", lb, first_doc=100)]
    epochs = 2
    tokens, state = [], None
    for world, workers, steps in layouts:
        got, state = _run_layout(paths, tok, world, workers, state, steps, streaming, epochs)
        tokens += got
    want = expected_tokens(la, epochs=epochs) + expected_tokens(lb, first_doc=100, epochs=epochs)
    seen = collections.Counter(t for t in tokens if t != EOS)
    assert seen - want == collections.Counter(), "a document piece was read twice"
    assert want - seen == collections.Counter(), "a document piece was skipped"
    assert tokens.count(EOS) == epochs * (len(la) + len(lb))


def test_more_shards_than_documents_ends(tmp_path, tok):
    path = write_pretokenized(tmp_path / "tiny", [5, 7, 9])
    tokens = []
    for rank in range(4):
        loader = build_dataloader(sources=[SourceConfig(path)], tokenizer=tok, seq_len=8, batch_size=1,
                                  dp_rank=rank, dp_world_size=4, epochs=2)
        tokens += [t for b in drain(loader) for t in real_tokens(b).tolist()]
    assert collections.Counter(t for t in tokens if t != EOS) == expected_tokens([5, 7, 9], epochs=2)


def test_state_errors(tmp_path, tok):
    a = write_pretokenized(tmp_path / "a", doc_lengths(10, 50))
    b = write_pretokenized(tmp_path / "b", doc_lengths(10, 50))
    one = build_dataloader(sources=[SourceConfig(a)], tokenizer=tok, seq_len=16, batch_size=1, dp_world_size=2)
    take(one, 2)
    state = one.state_dict()
    other = build_dataloader(sources=[SourceConfig(b)], tokenizer=tok, seq_len=16, batch_size=1, dp_world_size=2)
    with pytest.raises(ValueError, match="same sources"):
        other.load_state_dict(state)
    single = build_dataloader(sources=[SourceConfig(a)], tokenizer=tok, seq_len=16, batch_size=1)
    with pytest.raises(ValueError, match="needs all"):
        single.load_state_dict(state)  # rank 0's state alone cannot be resharded
    stream = build_dataloader(sources=[SourceConfig(a, streaming=True)], tokenizer=tok, seq_len=16, batch_size=1,
                              dp_world_size=2)
    with pytest.raises(ValueError, match="streaming"):
        stream.load_state_dict(state)
    write_pretokenized(tmp_path / "a", doc_lengths(12, 50))  # the data changed under the run
    grown = build_dataloader(sources=[SourceConfig(a)], tokenizer=tok, seq_len=16, batch_size=1, dp_world_size=2)
    with pytest.raises(ValueError, match="12 documents but the saved state was taken with 10"):
        grown.load_state_dict(state)


def test_local_directory_of_files(tmp_path, tok):
    (tmp_path / "dir").mkdir()
    write_jsonl(tmp_path / "dir" / "x.jsonl", ["alpha beta", "gamma"])
    with gzip.open(tmp_path / "dir" / "y.jsonl.gz", "wt") as f:
        f.write(json.dumps({"text": "delta epsilon zeta"}) + "\n")
    (batch,) = list(build_dataloader(sources=[SourceConfig(str(tmp_path / "dir"))], tokenizer=tok, seq_len=64,
                                     batch_size=1, epochs=1))
    assert int((real_tokens(batch) == EOS).sum()) == 3
    assert sorted(tok.decode(real_tokens(batch)).split("<|endoftext|>")) == ["", "alpha beta", "delta epsilon zeta",
                                                                             "gamma"]


@pytest.mark.parametrize("n", [1, 2, 3, 5, 64, 1000, 4097])
def test_permutation_is_a_bijection(n):
    import numpy as np

    from flame.data.stream import Permutation

    orders = [Permutation(n, seed, 0, epoch)(np.arange(n)).tolist() for seed, epoch in ((0, 0), (0, 1), (1, 0))]
    assert all(sorted(o) == list(range(n)) for o in orders)
    if n >= 64:
        assert orders[0] != orders[1] and orders[0] != orders[2], "epochs and seeds must reorder"
        assert orders[0] != list(range(n))


def _rank_main(rank: int, init_file: str, path: str, out: str) -> None:
    import torch.distributed as dist

    from flame.data import load_tokenizer

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        loader = build_dataloader(sources=[SourceConfig(path)], tokenizer=load_tokenizer(None), seq_len=32,
                                  batch_size=2, dp_rank=rank, dp_world_size=2, epochs=1, seed=1)
        tokens = [t for b in take(loader, 2 + 3 * rank) for t in real_tokens(b).tolist()]
        state = loader.state_dict()  # a collective: every rank gets every rank's shards
        with open(f"{out}.{rank}", "w") as f:
            json.dump({"tokens": tokens, "state": state}, f)
    finally:
        dist.destroy_process_group()


def test_distributed_state_gathers_all_ranks(tmp_path, tok):
    """Under torch.distributed (2 gloo processes) state_dict() is the same on every rank and holds every rank's
    shards, so one rank's copy resumes the whole run under another world size."""
    import multiprocessing

    lengths = doc_lengths(30, 70)
    path = write_pretokenized(tmp_path / "docs", lengths)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_rank_main, args=(r, str(tmp_path / "init"), path, str(tmp_path / "out")))
             for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    saved = [json.loads((tmp_path / f"out.{r}").read_text()) for r in range(2)]
    assert saved[0]["state"] == saved[1]["state"] and sorted(saved[0]["state"]["shards"]) == ["0", "1"]
    resumed = build_dataloader(sources=[SourceConfig(path)], tokenizer=tok, seq_len=32, batch_size=2, epochs=1,
                               seed=1)
    resumed.load_state_dict(saved[1]["state"])
    tokens = saved[0]["tokens"] + saved[1]["tokens"] + [t for b in drain(resumed) for t in real_tokens(b).tolist()]
    assert collections.Counter(t for t in tokens if t != EOS) == expected_tokens(lengths)
    assert tokens.count(EOS) == len(lengths)
    assert sum(resumed.tokens_per_source().values()) == len(tokens)
