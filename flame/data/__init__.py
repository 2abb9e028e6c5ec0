"""flame's data path: sources -> online tokenization -> weighted mixing -> packing -> an exactly resumable loader."""
from flame.data.corpus import default_corpus
from flame.data.loader import FlameDataLoader, build_dataloader, merge_states
from flame.data.sources import DataSourceError, SourceConfig, load_source, load_sources, source_labels
from flame.data.tokenizer import DEFAULT_TOKENIZER_DIR, load_tokenizer

__all__ = ["SourceConfig", "DataSourceError", "FlameDataLoader", "build_dataloader", "merge_states",
           "default_corpus", "load_tokenizer", "load_source", "load_sources", "source_labels",
           "DEFAULT_TOKENIZER_DIR"]
