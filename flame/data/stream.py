"""One loader shard: read its documents from every source, tokenize them in batches, mix by weight, pack into
batches. Everything it has consumed is described by `ShardStream.state()`, taken after every batch."""
from __future__ import annotations

import copy
from collections import deque

import numpy as np
import torch

from flame.data.cursor import Cursor
from flame.data.sources import Source

READ_BLOCK = 256  # documents read and tokenized together


class Tokenize:
    """Batched tokenization with the Rust backend (no special tokens, no truncation) + one EOS per document."""

    def __init__(self, tokenizer, eos_token_id: int):
        from tokenizers import Tokenizer

        self.backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())  # our own copy: settings are ours
        self.backend.no_truncation()
        self.backend.no_padding()
        self.fast = hasattr(self.backend, "encode_batch_fast")
        self.eos = np.array([eos_token_id], dtype=np.int32)

    def __call__(self, docs: list, pretokenized: bool) -> list[np.ndarray]:
        if pretokenized:
            ids = docs
        else:
            encode = self.backend.encode_batch_fast if self.fast else self.backend.encode_batch
            ids = [e.ids for e in encode([d or "" for d in docs], add_special_tokens=False)]
        return [np.concatenate([np.asarray(x, dtype=np.int32), self.eos]) for x in ids]


class Permutation:
    """A pseudo-random permutation of range(n) evaluated per index, in O(1) memory whatever n (a numpy permutation
    of 100M documents would cost every worker 800 MB): a 4-round Feistel network on the smallest even-bit domain
    >= n, with cycle walking (values outside range(n) are encrypted again; the domain is < 4n, so few repeats).
    The keys come from (seed, source, epoch): the same order on every rank and worker."""

    ROUNDS = 4

    def __init__(self, n: int, seed: int, source: int, epoch: int):
        bits = max(2, (n - 1).bit_length())
        self.n, self.half = n, np.uint64((bits + 1) // 2)
        self.mask = np.uint64((1 << int(self.half)) - 1)
        rng = np.random.default_rng([seed, source, epoch])
        self.keys = [np.uint64(k) for k in rng.integers(0, 2**63, self.ROUNDS, dtype=np.int64)]

    def _round(self, x: np.ndarray, key: np.uint64) -> np.ndarray:
        h = (x ^ key) * np.uint64(0x9E3779B97F4A7C15)  # multiply-xorshift mixing, wrapping in uint64
        h ^= h >> np.uint64(29)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        return (h ^ (h >> np.uint64(32))) & self.mask

    def _encrypt(self, x: np.ndarray) -> np.ndarray:
        left, right = x >> self.half, x & self.mask
        for key in self.keys:
            left, right = right, left ^ self._round(right, key)
        return (left << self.half) | right

    def __call__(self, index) -> np.ndarray:
        out = self._encrypt(np.asarray(index, dtype=np.uint64))
        outside = out >= np.uint64(self.n)
        while outside.any():
            out[outside] = self._encrypt(out[outside])
            outside = out >= np.uint64(self.n)
        return out.astype(np.int64)


class IndexedReader:
    """A random-access source (`datasets.Dataset`): our keys looked up through the epoch's permutation."""

    def __init__(self, source: Source, cursor: Cursor, tokenize: Tokenize, seed: int, source_index: int):
        self.source, self.cursor, self.tokenize = source, cursor, tokenize
        cursor.length = len(source.dataset)
        self.seed, self.source_index = seed, source_index
        self.perms: dict[int, Permutation] = {}
        self.ahead = (cursor.epoch, cursor.index)
        self.queue: deque = deque()

    def _fill(self) -> None:
        keys = []
        e, i = self.ahead
        while len(keys) < READ_BLOCK:
            key = self.cursor.next_key(e, i)
            if key is None:
                break
            keys.append(key)
            e, i = key[0], key[1] + 1
        self.ahead = (e, i)
        if keys:
            rows = []
            for e in sorted({e for e, _ in keys}):
                if e not in self.perms:
                    self.perms = {e: Permutation(self.cursor.length, self.seed, self.source_index, e)}
                rows += self.perms[e]([i for k, i in keys if k == e]).tolist()
            docs = self.source.dataset[rows][self.source.column]
            self.queue.extend(zip(keys, self.tokenize(docs, self.source.pretokenized)))

    def peek(self) -> bool:
        """True when a document is available (reading ahead if needed)."""
        if not self.queue:
            self._fill()
        return bool(self.queue)

    def pop(self) -> np.ndarray:
        key, tokens = self.queue.popleft()
        self.cursor.epoch, self.cursor.index = key[0], key[1] + 1
        return tokens


class StreamReader:
    """A streaming source (`datasets.IterableDataset`): walk the stream, keep our keys, no shuffle buffer.

    The stream position of each document is saved as (the stream's state_dict at the start of its read block, how
    many documents into the block), so a restore is exact whatever `datasets` does inside a block."""

    def __init__(self, source: Source, cursor: Cursor, tokenize: Tokenize):
        self.source, self.cursor, self.tokenize = source, cursor, tokenize
        self.queue: deque = deque()
        self.done = False
        self._open(cursor.epoch, cursor.index, cursor.hf_state, cursor.hf_skip)

    def _open(self, epoch: int, index: int, hf_state: dict | None, skip: int) -> None:
        self.dataset = copy.deepcopy(self.source.dataset)
        if hf_state is not None:
            self.dataset.load_state_dict(copy.deepcopy(hf_state))
        self.blocks = self.dataset.iter(batch_size=READ_BLOCK)
        self.epoch, self.pos = epoch, index  # pos: stream position of the next document kept (after discarding)
        self.anchor, self.count = hf_state, 0  # the next document is `count` documents after `anchor`
        self.discard = skip

    def _fill(self) -> None:
        keys, docs = [], []
        while not keys and not self.done:
            if self.cursor.max_epochs is not None and self.epoch >= self.cursor.max_epochs:
                self.done = True
                break
            if self.count:  # a whole block was read: its end is a state `datasets` can restore
                self.anchor, self.count = self.dataset.state_dict(), 0
            try:
                block = next(self.blocks)[self.source.column]
            except StopIteration:
                self.cursor.length = self.pos
                if self.pos <= self.cursor.offset:
                    self.done = True  # fewer documents than shards: none is ours in any epoch
                    break
                self._open(self.epoch + 1, 0, None, 0)
                continue
            for doc in block:
                self.count += 1
                if self.discard:
                    self.discard -= 1
                    continue
                key = (self.epoch, self.pos)
                self.pos += 1
                if self.cursor.owns(key):
                    keys.append((key, self.anchor, self.count))
                    docs.append(doc)
        if keys:
            self.queue.extend(zip(keys, self.tokenize(docs, self.source.pretokenized)))

    def peek(self) -> bool:
        if not self.queue:
            self._fill()
        return bool(self.queue)

    def pop(self) -> np.ndarray:
        (key, anchor, count), tokens = self.queue.popleft()
        c = self.cursor
        c.epoch, c.index, c.hf_state, c.hf_skip = key[0], key[1] + 1, anchor, count
        return tokens


class ShardStream:
    """Documents of one shard -> batches: weighted mixing by tokens, then packing with tracked boundaries."""

    def __init__(self, sources: list[Source], tokenize: Tokenize, state: dict, *, seq_len: int, batch_size: int,
                 context_len: int | None, varlen: bool, seed: int, pad_token_id: int):
        self.sources, self.seq_len, self.batch_size, self.varlen = sources, seq_len, batch_size, varlen
        self.context_len = context_len or seq_len
        self.pad = pad_token_id
        self.weights = [s.config.weight for s in sources]
        self.readers = []
        for k, (src, cs) in enumerate(zip(sources, state["sources"])):
            cursor = Cursor.from_state(cs)
            reader = StreamReader(src, cursor, tokenize) if src.streaming else \
                IndexedReader(src, cursor, tokenize, seed, k)
            self.readers.append(reader)
        self.drawn = list(state["drawn"])  # tokens drawn per source, for the mixing rule
        # Tokens of documents already taken from the readers but not yet in a batch: (source, piece) in order.
        self.pending: deque = deque((s, np.asarray(t, dtype=np.int32)) for s, t in state["pending"])
        self.active = [True] * len(sources)
        self.batches = state["batches"]

    def state(self) -> dict:
        return {"sources": [r.cursor.state() for r in self.readers], "drawn": list(self.drawn),
                "pending": [(s, t) for s, t in self.pending], "batches": self.batches}

    def _pull(self) -> bool:
        """Take the next document by the mixing rule: the source furthest below its share of tokens."""
        while True:
            live = [k for k in range(len(self.readers)) if self.active[k]]
            if not live:
                return False
            k = min(live, key=lambda k: (self.drawn[k] / self.weights[k], k))
            if not self.readers[k].peek():
                self.active[k] = False
                continue
            tokens = self.readers[k].pop()
            self.drawn[k] += len(tokens)
            step = self.context_len if self.varlen else len(tokens)
            for start in range(0, len(tokens), step):
                self.pending.append((k, tokens[start:start + step]))
            return True

    def next_batch(self) -> dict | None:
        """The next batch, or None when every source is exhausted (a last partial batch is padded)."""
        n = self.batch_size * self.seq_len
        ids = np.full(n, self.pad, dtype=np.int64)
        pos = np.empty(n, dtype=np.int64)
        bounds = [0]
        per_source = [0] * len(self.sources)
        filled = 0
        while filled < n:
            if not self.pending and not self._pull():
                break
            src, piece = self.pending[0]
            room = self.seq_len - filled % self.seq_len  # pieces never cross a sample boundary
            take = min(len(piece), room)
            ids[filled:filled + take] = piece[:take]
            pos[filled:filled + take] = np.arange(take)
            if take < len(piece):
                self.pending[0] = (src, piece[take:])
            else:
                self.pending.popleft()
            per_source[src] += take
            filled += take
            bounds.append(filled)
        if filled == 0:
            return None
        padding = n - filled
        if padding:  # the end of a finite run: fill each remaining sample's rest as its own segment
            end = filled
            while end < n:
                stop = (end // self.seq_len + 1) * self.seq_len
                pos[end:stop] = np.arange(stop - end)
                end = stop
                bounds.append(end)
        self.batches += 1
        batch = {"input_ids": torch.from_numpy(ids).view(self.batch_size, self.seq_len),
                 "source_tokens": {s.label: c for s, c in zip(self.sources, per_source)},
                 "padding": padding}
        if self.varlen:
            batch["position_ids"] = torch.from_numpy(pos).view(self.batch_size, self.seq_len)
            batch["cu_seqlens"] = torch.tensor(bounds, dtype=torch.int32)
        else:
            batch["position_ids"] = torch.arange(self.seq_len).repeat(self.batch_size, 1)
            batch["cu_seqlens"] = None
        return batch
