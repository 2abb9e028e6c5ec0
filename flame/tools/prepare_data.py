"""Pre-tokenize data sources to disk (optional: the loader tokenizes online by default).

    python -m flame.tools.prepare_data --source "data/*.jsonl.gz" --out /data/tok --tokenizer default
    python -m flame.tools.prepare_data --source a.jsonl b.jsonl.gz --out /data/tok    # several files: one output

Writes a `datasets.save_to_disk` directory with one column `input_ids` (token ids of each document, no EOS: the
loader appends it), the documents of every --source in the order given. Train on it with
`--data.dataset /data/tok` (or `dataset = "/data/tok"` under [data]); the loader sees token ids and skips
tokenization. Tokenize with the tokenizer the run uses (`model.tokenizer_path`).
"""
from __future__ import annotations

import argparse
from pathlib import Path

BLOCK = 1000


def prepare(sources, tokenizer, out_dir: str | Path, progress: bool = True) -> int:
    """Tokenize every document of `sources` (a SourceConfig or a list of them, read in order) and save them as
    one dataset; returns the number of documents."""
    import datasets
    from tqdm.auto import tqdm

    from flame.data.sources import load_source
    from flame.data.stream import Tokenize

    configs = sources if isinstance(sources, (list, tuple)) else [sources]
    loaded = [load_source(cfg) for cfg in configs]  # every source checked before anything is written
    for cfg, src in zip(configs, loaded):
        if src.pretokenized:
            raise ValueError(f"data source {cfg.path!r} is already tokenized (column {src.column!r})")
    tokenize = Tokenize(tokenizer, eos_token_id=0)

    def documents():
        for src in loaded:
            total = None if src.streaming else len(src.dataset)
            bar = tqdm(total=total, unit="doc", desc=f"tokenizing {src.label}", disable=not progress)
            block = []
            for row in src.dataset:
                block.append(row[src.column])
                if len(block) == BLOCK:
                    yield from ({"input_ids": ids[:-1].tolist()} for ids in tokenize(block, False))
                    bar.update(len(block))
                    block = []
            if block:
                yield from ({"input_ids": ids[:-1].tolist()} for ids in tokenize(block, False))
                bar.update(len(block))
            bar.close()

    features = datasets.Features({"input_ids": datasets.Sequence(datasets.Value("int32"))})
    ds = datasets.Dataset.from_generator(documents, features=features)
    ds.save_to_disk(str(out_dir))
    return len(ds)


def main(argv: list[str] | None = None) -> None:
    from flame.data.sources import SourceConfig
    from flame.data.tokenizer import load_tokenizer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True, nargs="+",
                        help="one or more hub names, local directories, files or globs (quote a glob to pass it "
                             "as one source); 'default' = the embedded corpus")
    parser.add_argument("--name", default=None, help="subset of a hub dataset")
    parser.add_argument("--split", default="train")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--data-files", default=None)
    parser.add_argument("--streaming", action="store_true", help="read the source as a stream (large hub sets)")
    parser.add_argument("--tokenizer", default="default", help="local path or hub name; 'default' = embedded")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    sources = [SourceConfig(path=path, name=args.name, split=args.split, text_column=args.text_column,
                            streaming=args.streaming, data_files=args.data_files) for path in args.source]
    n = prepare(sources, load_tokenizer(args.tokenizer), args.out)
    print(f"wrote {n} tokenized documents to {args.out}")


if __name__ == "__main__":
    main()
