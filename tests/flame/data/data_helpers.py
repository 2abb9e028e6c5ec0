"""Tiny synthetic sources and batch checks for the data-loader tests.

Pre-tokenized documents carry their identity in every token: token j of document d is `1 + d * STRIDE + j` (0 is
the EOS of the default tokenizer), so a test can tell which document piece every batch position came from."""
from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
import torch

STRIDE = 10_000
EOS = 0


def doc_lengths(n: int, max_len: int, seed: int = 0) -> list[int]:
    """Varied lengths, including an empty and a one-token document."""
    lengths = np.random.default_rng(seed).integers(2, max_len, n).tolist()
    lengths[1], lengths[2] = 0, 1
    return lengths


def write_pretokenized(path: Path, lengths: list[int], first_doc: int = 0) -> str:
    import datasets

    ids = [[1 + (first_doc + d) * STRIDE + j for j in range(n)] for d, n in enumerate(lengths)]
    datasets.Dataset.from_dict({"input_ids": ids}).save_to_disk(str(path))
    return str(path)


def expected_tokens(lengths: list[int], first_doc: int = 0, epochs: int = 1) -> collections.Counter:
    c = collections.Counter()
    for d, n in enumerate(lengths):
        for j in range(n):
            c[1 + (first_doc + d) * STRIDE + j] += epochs
    return c


def write_jsonl(path: Path, texts: list[str], column: str = "text") -> str:
    with open(path, "w") as f:
        for t in texts:
            f.write(json.dumps({column: t}) + "\n")
    return str(path)


def real_tokens(batch: dict) -> torch.Tensor:
    """The flattened batch without its trailing padding."""
    flat = batch["input_ids"].reshape(-1)
    return flat[: flat.numel() - batch["padding"]]


def check_batch(batch: dict, batch_size: int, seq_len: int, context_len: int | None) -> list[list[int]]:
    """Every structural promise of a varlen batch; returns the real segments' tokens."""
    ids, pos, cu = batch["input_ids"], batch["position_ids"], batch["cu_seqlens"]
    assert ids.shape == pos.shape == (batch_size, seq_len) and ids.dtype == pos.dtype == torch.int64
    assert cu.dtype == torch.int32 and cu[0] == 0 and cu[-1] == batch_size * seq_len
    bounds = cu.tolist()
    assert all(a < b for a, b in zip(bounds, bounds[1:])), f"cu_seqlens not increasing: {bounds}"
    assert set(range(0, batch_size * seq_len, seq_len)) <= set(bounds), "a sample boundary is missing"
    flat, flat_pos = ids.reshape(-1).tolist(), pos.reshape(-1).tolist()
    n_real = len(flat) - batch["padding"]
    assert n_real in bounds, "padding must be its own segment"
    segments = []
    for a, b in zip(bounds, bounds[1:]):
        assert flat_pos[a:b] == list(range(b - a)), "position_ids must restart at every segment"
        if a >= n_real:
            continue
        seg = flat[a:b]
        assert b - a <= (context_len or seq_len)
        assert EOS not in seg[:-1], "an EOS inside a segment: a document crosses a boundary"
        body = [t for t in seg if t != EOS]
        if body:  # one document, consecutive positions inside it
            doc = (body[0] - 1) // STRIDE
            assert body == list(range(body[0], body[0] + len(body))) and (body[-1] - 1) // STRIDE == doc
        segments.append(seg)
    eos_at = [i for i, t in enumerate(flat[:n_real]) if t == EOS]
    assert all(i + 1 in bounds for i in eos_at), "every EOS must close a segment"
    assert sum(batch["source_tokens"].values()) == n_real
    return segments
