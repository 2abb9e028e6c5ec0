"""Train the embedded default tokenizer: byte-level BPE on the default corpus, saved as a Hugging Face directory.

    python -m flame.tools.build_tokenizer                    # writes flame/assets/tokenizer (vocab 4096)
    python -m flame.tools.build_tokenizer --vocab-size 32000 --out /tmp/tok32k
"""
from __future__ import annotations

import argparse
from pathlib import Path

EOS = "<|endoftext|>"
PAD = "<|pad|>"


def build_tokenizer(out_dir: str | Path, vocab_size: int = 4096, texts=None):
    """Train a byte-level BPE with an EOS token on `texts` (default: the default corpus's train split); save it."""
    import datasets
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from flame.data.corpus import default_corpus

    if texts is None:
        texts = datasets.load_from_disk(default_corpus("train"))["text"]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, PAD], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, bos_token=EOS, pad_token=PAD,
                                   unk_token=None, model_max_length=1 << 30)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    return fast


def main() -> None:
    from flame.data.tokenizer import DEFAULT_TOKENIZER_DIR

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(DEFAULT_TOKENIZER_DIR))
    parser.add_argument("--vocab-size", type=int, default=4096)
    args = parser.parse_args()
    tok = build_tokenizer(args.out, args.vocab_size)
    print(f"wrote a {len(tok)}-token byte-level BPE to {args.out} (eos={tok.eos_token!r}, id {tok.eos_token_id})")


if __name__ == "__main__":
    main()
