"""The app's example photos: ``assets/examples/examples.json`` (made by ``python -m training.examples``).

Chat examples are one photo, a question and the distortion classes it holds; Compare examples are 2–4 photos of one
scene, a question and the image that answers it. Paths in the manifest are relative to its folder; origins and
licences are in the manifest and in ``training/data/DATA_CARD.md``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

__all__ = ["EXAMPLES_DIR", "ChatExample", "CompareExample", "Examples", "read_examples", "shipped"]

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "assets" / "examples"


@dataclass(frozen=True)
class ChatExample:
    path: str
    question: str
    caption: str
    expected: tuple[str, ...]  # class names ("" none: a clean photo)


@dataclass(frozen=True)
class CompareExample:
    paths: tuple[str, ...]
    question: str
    caption: str
    best: int  # index into ``paths`` of the image that answers the question


@dataclass(frozen=True)
class Examples:
    chat: tuple[ChatExample, ...] = ()
    compare: tuple[CompareExample, ...] = ()


def read_examples(manifest: str | Path) -> Examples:
    """The examples of a manifest; ValueError naming the entry when a field or a file is missing."""
    manifest = Path(manifest)
    root = manifest.parent
    data = json.loads(manifest.read_text(encoding="utf-8"))

    def path(name: str) -> str:
        file = root / name
        if not file.is_file():
            raise ValueError(f"{manifest}: example file {name} is missing")
        return str(file)

    try:
        chat = tuple(
            ChatExample(path(e["file"]), e["question"], e["caption"], tuple(e["expected"])) for e in data["chat"]
        )
        compare = tuple(
            CompareExample(tuple(path(f) for f in e["files"]), e["question"], e["caption"], int(e["best"]))
            for e in data.get("compare", [])
        )
    except KeyError as err:
        raise ValueError(f"{manifest}: an example has no {err.args[0]!r}") from None
    return Examples(chat, compare)


def shipped() -> Examples:
    """The examples shipped in ``assets/examples`` (none when the folder is absent, e.g. a trimmed install)."""
    manifest = EXAMPLES_DIR / "examples.json"
    return read_examples(manifest) if manifest.is_file() else Examples()
