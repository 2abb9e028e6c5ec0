"""Tokenizers: the embedded default (a 4096-token byte-level BPE in flame/assets/tokenizer) or any Hugging Face one."""
from __future__ import annotations

import re
from pathlib import Path

DEFAULT_TOKENIZER_DIR = Path(__file__).resolve().parent.parent / "assets" / "tokenizer"
# What the hub accepts as a repository id: `name` or `owner/name`, word characters, dots and dashes.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


class TokenizerError(ValueError):
    """A tokenizer that cannot be loaded; the message says whether it was taken as a path or a hub name."""


def looks_like_path(name: str) -> bool:
    """True for what can only be a file system path (absolute, ./ ../ ~, several components, a backslash)."""
    return (name.startswith(("/", ".", "~")) or "\\" in name or name.endswith("/")
            or _HUB_ID.match(name) is None or ".." in name)


def load_tokenizer(path_or_name: str | None = None):
    """A `transformers` fast tokenizer from a local directory or a hub name; None or "default" = the embedded one."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if path_or_name in (None, "", "default"):
        if not (DEFAULT_TOKENIZER_DIR / "tokenizer.json").exists():
            raise FileNotFoundError(f"the default tokenizer is missing from {DEFAULT_TOKENIZER_DIR}; "
                                    "rebuild it with `python -m flame.tools.build_tokenizer`")
        return PreTrainedTokenizerFast.from_pretrained(str(DEFAULT_TOKENIZER_DIR))
    local = Path(path_or_name).expanduser().exists()
    if not local and looks_like_path(path_or_name):
        raise TokenizerError(f"tokenizer path {path_or_name!r} does not exist: give an existing tokenizer "
                             f"directory, a hub name such as 'owner/name', or 'default' (the embedded one)")
    offline = False
    if not local:
        from flame.data.sources import hub_offline

        offline = hub_offline()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path_or_name)
    except (OSError, ValueError) as e:
        where = "local directory" if local else \
            "hub name while offline and not in the local cache" if offline else "hub name"
        raise TokenizerError(f"could not load tokenizer {path_or_name!r} as a {where}: {e}") from e
    if not getattr(tokenizer, "is_fast", False):
        raise TokenizerError(f"tokenizer {path_or_name!r} has no fast (Rust) implementation; flame needs one for "
                             f"speed")
    return tokenizer


def resolve_eos(tokenizer, eos_token_id: int | None) -> int:
    """The id appended after every document: the configured one, else the tokenizer's EOS."""
    if eos_token_id is not None:
        if not 0 <= eos_token_id < len(tokenizer):
            raise ValueError(f"eos_token_id={eos_token_id} is outside the tokenizer's vocabulary ({len(tokenizer)})")
        return int(eos_token_id)
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token: configure one (eos_token_id=...) so that every document "
                         "ends with a separator")
    return int(tokenizer.eos_token_id)
