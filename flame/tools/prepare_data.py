"""Pre-tokenize a data source to disk (optional: the loader tokenizes online by default).

    python -m flame.tools.prepare_data --source data/*.jsonl.gz --out /data/tok --tokenizer default

Writes a `datasets.save_to_disk` directory with one column `input_ids` (token ids of each document, no EOS: the
loader appends it). Use it as a source with `path = "/data/tok"`; the loader sees token ids and skips tokenization.
"""
from __future__ import annotations

import argparse
from pathlib import Path

BLOCK = 1000


def prepare(source, tokenizer, out_dir: str | Path, progress: bool = True) -> int:
    """Tokenize every document of `source` (a SourceConfig) and save; returns the number of documents."""
    import datasets
    from tqdm.auto import tqdm

    from flame.data.sources import load_source
    from flame.data.stream import Tokenize

    src = load_source(source)
    if src.pretokenized:
        raise ValueError(f"data source {source.path!r} is already tokenized (column {src.column!r})")
    tokenize = Tokenize(tokenizer, eos_token_id=0)
    total = None if src.streaming else len(src.dataset)

    def documents():
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
    parser.add_argument("--source", required=True, help="hub name, local directory, file or glob; 'default'")
    parser.add_argument("--name", default=None, help="subset of a hub dataset")
    parser.add_argument("--split", default="train")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--data-files", default=None)
    parser.add_argument("--streaming", action="store_true", help="read the source as a stream (large hub sets)")
    parser.add_argument("--tokenizer", default="default", help="local path or hub name; 'default' = embedded")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    source = SourceConfig(path=args.source, name=args.name, split=args.split, text_column=args.text_column,
                          streaming=args.streaming, data_files=args.data_files)
    n = prepare(source, load_tokenizer(args.tokenizer), args.out)
    print(f"wrote {n} tokenized documents to {args.out}")


if __name__ == "__main__":
    main()
