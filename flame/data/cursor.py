"""Which documents a loader shard reads, as a resumable position in a global document order.

Every source has one global order of documents: the key (epoch, index), compared lexicographically; `index` is the
position in that epoch's permutation (random-access sources) or in the stream (streaming sources). A layout of S
shards (S = data-parallel ranks x loader workers) gives key (e, i) to shard i % S. A shard reads its keys in
increasing order, so its progress is one committed cursor: all its keys below it are consumed, none above.

After a change of S the consumed set is the union over the old shards, described compactly as a frontier `base`
(every key below it consumed) plus the consumed keys above it (`skips`, bounded by how far shards drifted apart).
The new shards read every key >= base that is not in skips, dealt by i % S_new: across all new shards no key is read
twice and none is missed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

Key = tuple  # (epoch, index)


@dataclass
class Cursor:
    """One shard's position in one source."""
    stride: int
    offset: int
    epoch: int = 0
    index: int = 0  # next candidate index in `epoch` (everything of ours before it is consumed)
    base: Key = (0, 0)
    skips: frozenset = field(default_factory=frozenset)
    length: int | None = None  # documents per epoch, once known
    max_epochs: int | None = None
    # Streaming only: restoring `hf_state` and reading `hf_skip` documents puts the stream at (epoch, index).
    hf_state: dict | None = None
    hf_skip: int = 0

    def owns(self, key: Key) -> bool:
        return key[1] % self.stride == self.offset and key >= self.base and key not in self.skips

    def next_key(self, epoch: int, index: int) -> Key | None:
        """Our first key >= (epoch, index); None when there is none. Needs `length` to cross an epoch."""
        e, i = epoch, index
        while True:
            if self.max_epochs is not None and e >= self.max_epochs:
                return None
            if (e, i) < self.base:
                e, i = self.base
            i += (self.offset - i) % self.stride
            if self.length is not None and i >= self.length:
                if self.offset >= self.length:
                    return None  # fewer documents than shards: this shard owns none of this source
                e, i = e + 1, 0
                continue
            if (e, i) in self.skips:
                i += 1
                continue
            return (e, i)

    def state(self) -> dict:
        return {"stride": self.stride, "offset": self.offset, "epoch": self.epoch, "index": self.index,
                "base": list(self.base), "skips": sorted(list(k) for k in self.skips), "length": self.length,
                "max_epochs": self.max_epochs, "hf_state": self.hf_state, "hf_skip": self.hf_skip}

    @classmethod
    def from_state(cls, s: dict) -> "Cursor":
        return cls(stride=s["stride"], offset=s["offset"], epoch=s["epoch"], index=s["index"], base=tuple(s["base"]),
                   skips=frozenset(tuple(k) for k in s["skips"]), length=s["length"], max_epochs=s["max_epochs"],
                   hf_state=s["hf_state"], hf_skip=s["hf_skip"])


def reshard(old: list[dict], num_shards: int, max_epochs: int | None) -> list[dict]:
    """New cursor states for `num_shards` shards from the cursor states of ALL shards of the old layout (one source).

    The old layout's consumed set is  {k < base} | skips | {own keys of shard j below its cursor, for every j}.
    """
    cursors = [Cursor.from_state(s) for s in old]
    stride = cursors[0].stride
    if sorted(c.offset for c in cursors) != list(range(stride)) or any(c.stride != stride for c in cursors):
        raise ValueError(f"resharding needs the state of every shard of the old layout: got offsets "
                         f"{sorted(c.offset for c in cursors)} of stride {stride}")
    length = next((c.length for c in cursors if c.length is not None), None)
    for c in cursors:
        c.length, c.max_epochs = length, max_epochs
    nexts = [c.next_key(c.epoch, c.index) for c in cursors]
    pending = [k for k in nexts if k is not None]
    frontier = min(pending) if pending else None
    skips: set = set()
    if frontier is not None:
        skips = {k for k in cursors[0].skips if k >= frontier}
        for c, stop in zip(cursors, nexts):
            key = c.next_key(*frontier)
            while key is not None and (stop is None or key < stop):
                skips.add(key)
                key = c.next_key(key[0], key[1] + 1)
    # A stream can only be resumed where some old shard's saved stream position is; the slowest one is at or
    # before the frontier (its next unread key is >= its cursor and is the frontier or above).
    start = min(cursors, key=lambda c: (c.epoch, c.index))
    new = []
    for j in range(num_shards):
        c = Cursor(stride=num_shards, offset=j, length=length, max_epochs=max_epochs,
                   hf_state=start.hf_state, hf_skip=start.hf_skip)
        if frontier is None:
            c.epoch = max_epochs if max_epochs is not None else start.epoch
            c.base = (c.epoch, 0)
        else:
            c.epoch, c.index = start.epoch, start.index
            c.base, c.skips = frontier, frozenset(skips)
        new.append(c.state())
    return new
