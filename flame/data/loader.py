"""The data loader: shards over (data-parallel rank, loader worker), batches from worker processes, exact resume.

Guarantees (tested in tests/flame/data):
- Same number of shards (data-parallel ranks x workers) at load as at save: the batches after a restore are exactly
  the batches the uninterrupted loader would have given, any number of restores in a row.
- A different number of shards: the order differs, but across all ranks every document piece that was not yet in a
  batch is read exactly once: no repeat, no gap. For that the state must hold every rank's shards, which
  `state_dict()` gathers itself when torch.distributed is initialized (`merge_states` does it by hand).

Each worker makes whole batches and sends each with its shard's state after that batch; the main process keeps the
state of the last batch it handed out per worker, so prefetched batches never leak into a checkpoint. torch's
DataLoader takes batches from workers round-robin; a restore rotates the workers so the next one is first again.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from flame.data.cursor import Cursor, reshard
from flame.data.sources import Source, SourceConfig, load_sources
from flame.data.stream import ShardStream, Tokenize
from flame.data.tokenizer import load_tokenizer, resolve_eos

STATE_FORMAT = "flame.data/1"


def _identity(x):
    return x


class PackedDataset(IterableDataset):
    """Yields (worker, batch, shard state) from the shard this worker process plays."""

    def __init__(self, sources: list[Source], tokenizer, eos_token_id: int, shards: list[dict], first_worker: int,
                 **pack):
        self.sources, self.tokenizer, self.eos = sources, tokenizer, eos_token_id
        self.shards, self.first_worker, self.pack = shards, first_worker, pack

    def __iter__(self):
        info = get_worker_info()
        if info is not None:  # workers are the parallelism: one thread each
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
            torch.set_num_threads(1)
        worker = ((info.id if info else 0) + self.first_worker) % len(self.shards)
        stream = ShardStream(self.sources, Tokenize(self.tokenizer, self.eos), self.shards[worker],
                             pad_token_id=self.eos, **self.pack)
        while (batch := stream.next_batch()) is not None:
            yield worker, batch, stream.state()


class FlameDataLoader:
    """Iterate for batches (dicts, see `build_dataloader`); `state_dict()` / `load_state_dict()` resume exactly."""

    def __init__(self, sources: list[Source], tokenizer, eos_token_id: int, *, seq_len: int, batch_size: int,
                 context_len: int | None, varlen: bool, num_workers: int, seed: int, dp_rank: int,
                 dp_world_size: int, prefetch_factor: int | None, epochs: int | None):
        self.sources, self.tokenizer, self.eos = sources, tokenizer, eos_token_id
        self.labels = [s.label for s in sources]
        self.num_workers, self.prefetch_factor, self.epochs = num_workers, prefetch_factor, epochs
        self.dp_rank, self.dp_world_size = dp_rank, dp_world_size
        self.workers = max(1, num_workers)
        self.num_shards = dp_world_size * self.workers
        self.pack = dict(seq_len=seq_len, batch_size=batch_size, context_len=context_len, varlen=varlen, seed=seed)
        self.shards = [self._fresh(self.dp_rank * self.workers + w) for w in range(self.workers)]
        self.next_worker = 0
        self.tokens = dict.fromkeys(self.labels, 0)
        self.gather_state = True  # state_dict() gathers all ranks when torch.distributed is up

    def _fresh(self, shard: int) -> dict:
        cursor = Cursor(stride=self.num_shards, offset=shard, max_epochs=self.epochs).state()
        return {"sources": [dict(cursor) for _ in self.sources], "drawn": [0.0] * len(self.sources),
                "pending": [], "batches": 0}

    def __iter__(self):
        dataset = PackedDataset(self.sources, self.tokenizer, self.eos, list(self.shards), self.next_worker,
                                **self.pack)
        if self.num_workers == 0:
            items = iter(dataset)
        else:
            items = DataLoader(dataset, batch_size=None, num_workers=self.num_workers, collate_fn=_identity,
                               prefetch_factor=self.prefetch_factor, persistent_workers=False)
        for worker, batch, state in items:
            self.shards[worker] = state
            self.next_worker = (worker + 1) % self.workers
            for label, n in batch["source_tokens"].items():
                self.tokens[label] += n
            yield batch

    def tokens_per_source(self) -> dict[str, int]:
        """Tokens this rank has handed out per source label (padding excluded), cumulative across resumes."""
        return dict(self.tokens)

    # -- state -------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """This rank's position; with torch.distributed initialized, every rank's (a collective: call it on all
        ranks), so the state can be loaded under any world size. Plain Python values only."""
        local = {"format": STATE_FORMAT, "sources": list(self.labels),
                 "streaming": [s.streaming for s in self.sources], "num_shards": self.num_shards,
                 "dp_world_size": self.dp_world_size, "num_workers": self.workers,
                 "shards": {str(self.dp_rank * self.workers + w): _plain(s) for w, s in enumerate(self.shards)},
                 "ranks": {str(self.dp_rank): {"next_worker": self.next_worker, "tokens": dict(self.tokens)}}}
        dist = torch.distributed
        if self.gather_state and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            everyone = [None] * dist.get_world_size()
            dist.all_gather_object(everyone, local)
            return merge_states(everyone)
        return local

    def load_state_dict(self, state: dict) -> None:
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"not a flame data-loader state (format {state.get('format')!r}, "
                             f"expected {STATE_FORMAT!r})")
        if list(state["sources"]) != self.labels:
            raise ValueError(f"the saved data-loader state is for sources {state['sources']}, this loader reads "
                             f"{self.labels}; resume with the same sources, in the same order")
        if list(state["streaming"]) != [s.streaming for s in self.sources]:
            raise ValueError(f"the saved data-loader state read sources with streaming={state['streaming']}; a "
                             "stream and a shuffled dataset have different document orders: keep the setting")
        for k, src in enumerate(self.sources):
            saved_len = next((sh["sources"][k]["length"] for sh in state["shards"].values()
                              if sh["sources"][k]["length"] is not None), None)
            if not src.streaming and saved_len is not None and saved_len != len(src.dataset):
                raise ValueError(f"data source {src.label!r} has {len(src.dataset)} documents but the saved state "
                                 f"was taken with {saved_len}: the document order would differ; resume on the "
                                 "same data")
        mine = [str(self.dp_rank * self.workers + w) for w in range(self.workers)]
        same_layout = (state["dp_world_size"] == self.dp_world_size and state["num_workers"] == self.workers
                       and str(self.dp_rank) in state["ranks"])
        if state["num_shards"] == self.num_shards and all(k in state["shards"] for k in mine):
            self.shards = [_with_epochs(state["shards"][k], self.epochs) for k in mine]
        else:
            self.shards = self._reshard(state)[self.dp_rank * self.workers:(self.dp_rank + 1) * self.workers]
        if same_layout:
            saved = state["ranks"][str(self.dp_rank)]
            self.next_worker, self.tokens = saved["next_worker"], dict(saved["tokens"])
        else:  # the per-rank counters are re-based: rank 0 carries the totals so that their sum stays right
            self.next_worker = 0
            self.tokens = dict.fromkeys(self.labels, 0)
            if self.dp_rank == 0:
                for saved in state["ranks"].values():
                    for label, n in saved["tokens"].items():
                        self.tokens[label] += n

    def _reshard(self, state: dict) -> list[dict]:
        old_n = state["num_shards"]
        if sorted(state["shards"], key=int) != [str(j) for j in range(old_n)]:
            raise ValueError(f"the saved data-loader state holds shards {sorted(state['shards'], key=int)} of "
                             f"{old_n}; loading it with another number of shards ({self.num_shards}) needs all of "
                             "them: save with torch.distributed initialized (state_dict gathers every rank) or "
                             "combine the ranks' states with flame.data.merge_states")
        old = [state["shards"][str(j)] for j in range(old_n)]
        new = [{"sources": [], "drawn": [], "pending": [], "batches": 0} for _ in range(self.num_shards)]
        for k in range(len(self.sources)):
            cursors = reshard([o["sources"][k] for o in old], self.num_shards, self.epochs)
            total = sum(o["drawn"][k] for o in old)
            for shard, cursor in zip(new, cursors):
                shard["sources"].append(cursor)
                shard["drawn"].append(total / self.num_shards)
        for j, o in enumerate(old):  # tokens already taken from the sources but not yet in a batch move along
            new[j % self.num_shards]["pending"].extend(o["pending"])
        return new


def _plain(shard: dict) -> dict:
    out = dict(shard)
    out["pending"] = [[int(s), np.asarray(t).tolist()] for s, t in shard["pending"]]
    return out


def _with_epochs(shard: dict, epochs: int | None) -> dict:
    shard = dict(shard)
    shard["sources"] = [dict(c, max_epochs=epochs) for c in shard["sources"]]
    return shard


def merge_states(states: list[dict]) -> dict:
    """One state holding the shards of all the given ranks' states (of one save)."""
    merged = {k: v for k, v in states[0].items() if k not in ("shards", "ranks")}
    merged["shards"], merged["ranks"] = {}, {}
    for s in states:
        for key in ("format", "sources", "streaming", "num_shards", "dp_world_size", "num_workers"):
            if s[key] != merged[key]:
                raise ValueError(f"cannot merge data-loader states with different {key}: {s[key]} vs {merged[key]}")
        merged["shards"].update(s["shards"])
        merged["ranks"].update(s["ranks"])
    return merged


def build_dataloader(*, sources: list[SourceConfig], tokenizer, seq_len: int, batch_size: int,
                     context_len: int | None = None, varlen: bool = True, num_workers: int = 0, seed: int = 0,
                     dp_rank: int = 0, dp_world_size: int = 1, eos_token_id: int | None = None,
                     prefetch_factor: int | None = None, epochs: int | None = None) -> FlameDataLoader:
    """A resumable loader of packed batches.

    Each batch is a dict:
        input_ids:     [batch_size, seq_len] int64
        position_ids:  [batch_size, seq_len] int64, restarting at every document piece (varlen), else 0..seq_len-1
        cu_seqlens:    [N + 1] int32 over the flattened batch_size * seq_len tokens (varlen), else None
        source_tokens: {source label: tokens of this batch from it}
        padding:       filler tokens at the end of the flattened batch (only the last batch of a finite run)
    `tokenizer`: a fast tokenizer object, or a path / hub name / None (= the embedded default).
    `context_len`: the longest document piece (default seq_len); `epochs`: None = repeat forever.
    """
    for name, value in (("seq_len", seq_len), ("batch_size", batch_size), ("dp_world_size", dp_world_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if context_len is not None and context_len < 1:
        raise ValueError(f"context_len must be >= 1 or None, got {context_len}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    if not 0 <= dp_rank < dp_world_size:
        raise ValueError(f"dp_rank must be in [0, {dp_world_size}), got {dp_rank}")
    if epochs is not None and epochs < 1:
        raise ValueError(f"epochs must be >= 1 or None (forever), got {epochs}")
    if tokenizer is None or isinstance(tokenizer, str):
        tokenizer = load_tokenizer(tokenizer)
    eos = resolve_eos(tokenizer, eos_token_id)
    loaded = load_sources(list(sources))
    return FlameDataLoader(loaded, tokenizer, eos, seq_len=seq_len, batch_size=batch_size, context_len=context_len,
                           varlen=varlen, num_workers=num_workers, seed=seed, dp_rank=dp_rank,
                           dp_world_size=dp_world_size, prefetch_factor=prefetch_factor if num_workers else None,
                           epochs=epochs)
