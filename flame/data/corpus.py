"""The embedded default corpus: English text every Python installation ships, written once as a local dataset.

Documents are the pydoc topics (`pydoc_data.topics`, the language reference as help() shows it) and the docstrings of
the standard library's modules, classes and functions, read with `ast` (nothing is imported). About 2 MB, ~7000
documents of very different lengths, which is what a packing loader and a tiny model want. The build is
deterministic for a given Python installation; one document in 20 (by a hash of its name) is held out as the
"validation" split.
"""
from __future__ import annotations

import ast
import os
import shutil
import sys
import sysconfig
import tempfile
import zlib
from pathlib import Path

CORPUS_VERSION = 2
SPLITS = ("train", "validation")
# Folders of the standard library whose docstrings are test scaffolding or GUI demos, not prose.
_SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "dist-packages", "__pycache__", "lib2to3", "turtledemo",
              "ensurepip", "tkinter"}


def cache_dir() -> Path:
    """`$FLAME_CACHE`, else `~/.cache/flame`."""
    return Path(os.environ.get("FLAME_CACHE") or Path.home() / ".cache" / "flame")


def corpus_dir() -> Path:
    version = f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"
    return cache_dir() / f"default_corpus-v{CORPUS_VERSION}-py{version}"


def default_corpus(split: str = "train") -> str:
    """Path of the default corpus split, a `datasets.save_to_disk` directory with one column `text`.

    Built at first use (a few seconds) and written atomically, so concurrent first uses are safe.
    """
    if split not in SPLITS:
        raise ValueError(f"the default corpus has splits {SPLITS}, got split={split!r}")
    root = corpus_dir()
    if not (root / "complete").exists():
        if os.environ.get("RANK", "0") == "0":  # one line per run, not per rank
            print(f"[data] building the default corpus in {root} (first use only; a few seconds)", flush=True)
        _build(root)
    return str(root / split)


def iter_documents() -> list[tuple[str, str]]:
    """(name, text) for every document, in a fixed order."""
    docs: list[tuple[str, str]] = []
    import pydoc_data.topics

    for name in sorted(pydoc_data.topics.topics):
        text = pydoc_data.topics.topics[name].strip()
        if text:
            docs.append((f"topic:{name}", text))
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for root, dirs, files in os.walk(stdlib):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS)
        for file in sorted(files):
            if file.endswith(".py"):
                docs.extend(_docstrings(Path(root, file), stdlib))
    return docs


def _docstrings(path: Path, stdlib: Path) -> list[tuple[str, str]]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, OSError, ValueError):
        return []
    module = ".".join(path.relative_to(stdlib).with_suffix("").parts).removesuffix(".__init__")
    out: list[tuple[str, str]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}.{child.name}"
                doc = ast.get_docstring(child)
                if doc and len(doc) > 20:
                    kind = "class" if isinstance(child, ast.ClassDef) else "def"
                    args = "" if kind == "class" else f"({ast.unparse(child.args)})"
                    out.append((name, f"{kind} {name}{args}\n\n{doc}"))
                visit(child, name)

    doc = ast.get_docstring(tree)
    if doc:
        out.append((module, f"module {module}\n\n{doc}"))
    visit(tree, module)
    return out


def _is_validation(name: str) -> bool:
    return zlib.crc32(name.encode()) % 20 == 0


def _build(root: Path) -> None:
    import datasets

    docs = iter_documents()
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=root.name + ".tmp-", dir=root.parent))
    bars = datasets.utils.logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # a one-off few-second build: no bar per split
    try:
        for split in SPLITS:
            keep = [(n, t) for n, t in docs if _is_validation(n) == (split == "validation")]
            table = {"text": [t for _, t in keep], "id": [n for n, _ in keep]}
            datasets.Dataset.from_dict(table).save_to_disk(str(tmp / split))
        (tmp / "complete").write_text("ok\n")
        try:
            os.rename(tmp, root)  # atomic; fails if another process finished first, which is fine
        except OSError:
            if not (root / "complete").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if bars:
            datasets.enable_progress_bars()
