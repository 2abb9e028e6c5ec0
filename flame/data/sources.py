"""Data sources from the job config, loaded with `datasets`, each checked up front with an error that names it."""
from __future__ import annotations

import glob
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

# File suffix -> `datasets` builder; a trailing compression suffix is looked through.
_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".txt": "text", ".csv": "csv", ".arrow": "arrow"}
_COMPRESSION = (".gz", ".bz2", ".xz", ".zst")


@dataclass
class SourceConfig:
    """One data source. `path`: a hub dataset name, a local directory (save_to_disk or data files), a file or a
    glob; "default" = the embedded corpus. `weight`: share of training tokens drawn from it (relative)."""
    path: str
    name: str | None = None
    split: str = "train"
    weight: float = 1.0
    text_column: str = "text"
    streaming: bool = False
    data_files: str | list | None = None


class DataSourceError(ValueError):
    """A source that cannot be read; the message names the source and says what to do."""


@dataclass
class Source:
    """A loaded source: a `datasets.Dataset` (random access) or `IterableDataset` (streaming)."""
    config: SourceConfig
    label: str
    dataset: Any
    column: str
    pretokenized: bool  # the column holds token ids (e.g. written by flame.tools.prepare_data)

    @property
    def streaming(self) -> bool:
        return self.config.streaming


def source_labels(configs: list[SourceConfig]) -> list[str]:
    """Unique, readable labels for logging: the path (+ subset, + split when not train), deduplicated."""
    labels = []
    for cfg in configs:
        label = "default" if cfg.path == "default" else cfg.path.rstrip("/").split("/")[-1] or cfg.path
        if cfg.name:
            label += f"/{cfg.name}"
        if cfg.split != "train":
            label += f":{cfg.split}"
        base, n = label, 1
        while label in labels:
            n += 1
            label = f"{base}#{n}"
        labels.append(label)
    return labels


def load_sources(configs: list[SourceConfig]) -> list[Source]:
    if not configs:
        raise DataSourceError("no data source configured: give at least one (path='default' is the embedded corpus)")
    labels = source_labels(configs)
    return [load_source(cfg, label) for cfg, label in zip(configs, labels)]


def load_source(cfg: SourceConfig, label: str | None = None) -> Source:
    """Load and check one source (exists, not empty, has the column)."""
    label = label or source_labels([cfg])[0]
    what = f"data source {cfg.path!r}" + (f" (subset {cfg.name!r})" if cfg.name else "") + f" split {cfg.split!r}"
    if not cfg.weight > 0:
        raise DataSourceError(f"{what}: weight must be > 0, got {cfg.weight}")
    dataset = _load(cfg, what)
    column = cfg.text_column
    names = dataset.column_names
    first = None
    if names is None or cfg.streaming:  # a stream's columns may be unknown until read; reading one row checks both
        try:
            first = next(iter(dataset))
        except StopIteration:
            raise DataSourceError(f"{what} is empty: it has no documents") from None
        names = list(first)
    elif len(dataset) == 0:
        raise DataSourceError(f"{what} is empty: it has no documents")
    if column not in names and column == "text" and "input_ids" in names:
        column = "input_ids"  # written by flame.tools.prepare_data
    if column not in names:
        raise DataSourceError(f"{what} has no column {column!r} (columns: {names}); set text_column")
    if first is None:
        first = dataset[0]
    value = first[column]
    pretokenized = isinstance(value, (list, tuple)) and (len(value) == 0 or isinstance(value[0], int))
    if not pretokenized and not isinstance(value, str):
        raise DataSourceError(f"{what}: column {column!r} holds {type(value).__name__}, expected text or token ids")
    if not cfg.streaming:
        dataset = dataset.select_columns([column])
    return Source(cfg, label, dataset, column, pretokenized)


def _load(cfg: SourceConfig, what: str):
    import datasets

    path = cfg.path
    if path == "default":
        from flame.data.corpus import default_corpus

        try:
            path = default_corpus(cfg.split)
        except ValueError as e:
            raise DataSourceError(f"{what}: {e}") from None
        return _maybe_stream(datasets.load_from_disk(path), cfg)
    local = Path(os.path.expanduser(path))
    if local.is_dir() and ((local / "state.json").exists() or (local / "dataset_dict.json").exists()):
        ds = datasets.load_from_disk(str(local))
        if isinstance(ds, datasets.DatasetDict):
            if cfg.split not in ds:
                raise DataSourceError(f"{what}: the saved dataset has splits {list(ds)}, not {cfg.split!r}")
            ds = ds[cfg.split]
        return _maybe_stream(ds, cfg)
    files = _local_files(path, cfg.data_files)
    if files is not None:
        if not files:
            raise DataSourceError(f"{what}: no file matches {path!r}" +
                                  (f" with data_files={cfg.data_files!r}" if cfg.data_files else ""))
        if all(os.path.getsize(f) == 0 for f in files):
            raise DataSourceError(f"{what} is empty: its files {files[:3]} hold no documents")
        builder = _builder(files, what)
        try:
            return datasets.load_dataset(builder, data_files={cfg.split: files}, split=cfg.split,
                                         streaming=cfg.streaming)
        except Exception as e:  # a parse error deep inside `datasets`: say which source
            detail = e.__cause__ or e.__context__  # `datasets` often wraps the parser's message
            raise DataSourceError(f"{what}: could not read {builder} files {files[:3]}: {type(e).__name__}: {e}"
                                  + (f" ({detail})" if detail else "")) from e
    if local.is_dir():  # a directory of data files with its own layout (README/metadata): let `datasets` infer it
        try:
            return datasets.load_dataset(str(local), cfg.name, split=cfg.split, streaming=cfg.streaming,
                                         data_files=cfg.data_files)
        except Exception as e:
            raise DataSourceError(f"{what}: could not load the local directory: {e}") from e
    if path.startswith((".", "/", "~")) or any(ch in path for ch in "*?[") or Path(path).suffix in _BUILDERS:
        raise DataSourceError(f"{what}: no such file or directory")
    return _load_hub(cfg, what)


def has_splits(cfg: SourceConfig) -> bool:
    """Whether `cfg.split` selects part of the source (the embedded corpus, a saved DatasetDict, a hub dataset).
    Local files, globs, folders of files and a saved single Dataset have one body of text whatever the split."""
    if cfg.path == "default":
        return True
    local = Path(os.path.expanduser(cfg.path))
    if local.is_dir() and (local / "dataset_dict.json").exists():
        return True
    if local.is_dir() and (local / "state.json").exists():
        return False
    return _local_files(cfg.path, cfg.data_files) is None and not local.exists()


def _local_files(path: str, data_files) -> list[str] | None:
    """The files a path names (a file, a glob, or a directory of data files), or None when it is no local path."""
    path = os.path.expanduser(path)
    if data_files is not None and os.path.isdir(path):
        patterns = [data_files] if isinstance(data_files, str) else list(data_files)
        return sorted({f for p in patterns for f in glob.glob(os.path.join(path, p), recursive=True)})
    if os.path.isfile(path):
        return [path]
    if any(ch in path for ch in "*?["):
        return sorted(f for f in glob.glob(path, recursive=True) if os.path.isfile(f))
    if os.path.isdir(path):
        found = sorted(str(f) for f in Path(path).rglob("*") if f.is_file() and _suffix(str(f)) in _BUILDERS)
        has_meta = any(Path(path, m).exists() for m in ("README.md", "dataset_infos.json"))
        return None if has_meta or not found else found
    return None


def _suffix(file: str) -> str:
    for c in _COMPRESSION:
        if file.endswith(c):
            file = file[: -len(c)]
    return Path(file).suffix


def _builder(files: list[str], what: str) -> str:
    builders = {_BUILDERS.get(_suffix(f)) for f in files}
    if None in builders or len(builders) != 1:
        raise DataSourceError(f"{what}: cannot tell the format of {files[:3]}: expected one of "
                              f"{sorted(_BUILDERS)} (optionally {'/'.join(_COMPRESSION)} compressed), all the same")
    return builders.pop()


def _maybe_stream(ds, cfg: SourceConfig):
    return ds.to_iterable_dataset(num_shards=1) if cfg.streaming else ds


def _hub_reachable(timeout: float = 3.0) -> bool:
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def hub_offline() -> bool:
    """True when the hub cannot be reached (or HF_HUB_OFFLINE is set); then switch `datasets`, `transformers` and
    `huggingface_hub` to offline mode, so a name is looked up in the local cache at once instead of being retried
    over the network for half a minute."""
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false") or not _hub_reachable()
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
        import huggingface_hub.constants

        huggingface_hub.constants.HF_HUB_OFFLINE = True
        try:
            import datasets.config

            datasets.config.HF_HUB_OFFLINE = True
        except ImportError:
            pass
    return offline


def _load_hub(cfg: SourceConfig, what: str):
    import datasets

    offline = hub_offline()
    try:
        return datasets.load_dataset(cfg.path, cfg.name, split=cfg.split, streaming=cfg.streaming,
                                     data_files=cfg.data_files)
    except Exception as e:
        if offline:
            raise DataSourceError(f"{what}: hub dataset while offline and not in the local cache; download it on a "
                                  f"machine with network (or use a local path). ({type(e).__name__}: {e})") from e
        raise DataSourceError(f"{what}: could not load from the hub: {type(e).__name__}: {e}") from e
