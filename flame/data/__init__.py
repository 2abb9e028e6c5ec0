"""flame's data path: sources -> online tokenization -> weighted mixing -> packing -> an exactly resumable loader.

- sources.py    `SourceConfig`; hub names, local save_to_disk directories, files/globs (jsonl, json, parquet, txt,
                csv, optionally compressed), streaming or not; clear `DataSourceError`s naming the source.
- corpus.py     the embedded default corpus (stdlib docs, built at first use under $FLAME_CACHE or ~/.cache/flame).
- tokenizer.py  `load_tokenizer`: the embedded 4096-token BPE (flame/assets/tokenizer) or any HF fast tokenizer.
- cursor.py     the global document order (epoch, index), its sharding over ranks x workers, and resharding.
- stream.py     one shard: batched tokenization, mixing by tokens, packing with tracked document boundaries.
- loader.py     `build_dataloader`: worker processes, per-batch shard states, `state_dict` / `load_state_dict`.

Order: random-access sources are read in a fresh pseudo-random permutation per epoch (seeded, the same on every
rank, O(1) memory); streaming sources in stream order (no shuffle buffer: shuffle the files beforehand). Each of
S = data-parallel ranks x workers shards reads every S-th document of that order; a streaming shard walks the whole
stream to find its documents, so prefer random-access (or pre-tokenized, flame.tools.prepare_data) sources when S is
large. Mixing is by tokens: the next document comes from the source furthest below its share `weight / sum(weights)`.
"""
from flame.data.corpus import default_corpus
from flame.data.loader import FlameDataLoader, build_dataloader, merge_states
from flame.data.sources import DataSourceError, SourceConfig, load_source, load_sources, source_labels
from flame.data.tokenizer import DEFAULT_TOKENIZER_DIR, TokenizerError, load_tokenizer

__all__ = ["SourceConfig", "DataSourceError", "FlameDataLoader", "build_dataloader", "merge_states",
           "default_corpus", "load_tokenizer", "load_source", "load_sources", "source_labels",
           "DEFAULT_TOKENIZER_DIR", "TokenizerError"]
