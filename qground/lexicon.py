"""Words the model never trained on, read as trained words of the same sense.

A small LLM trained from scratch on our question grammar knows only that grammar's words; an unknown word ("gloomiest",
"murky") reaches it as byte pieces it reads as a draw (docs/experiments/2026-12-07-choice-head-diagnostic.md). A
``Lexicon`` holds the words of the training questions (``vocabulary``) and, for other English words, the trained word
each stands for (``synonyms``, built from WordNet by ``training/lexicon.py``). ``rewrite`` replaces, word by word, a
word outside the vocabulary that has a synonym; every other word, and all punctuation and spacing, stays as typed.
Saved as ``lexicon.json`` beside a checkpoint; how a model is run, so the engine owns it (``qground.inference``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from qground.config import ConfigError

LEXICON_NAME = "lexicon.json"
LEXICON_VERSION = 1
# a word: letters, with inner hyphens or apostrophes ("razor-sharp", "option's")
WORD = re.compile(r"[A-Za-z]+(?:[-'][A-Za-z]+)*")


@dataclass(frozen=True)
class Lexicon:
    """``vocabulary``: the lower-case words of the questions the model trained on; ``synonyms``: lower-case word →
    the trained word or phrase it is read as (a word of ``vocabulary`` is never a key); ``source``: where the synonyms
    come from, for the record."""

    vocabulary: frozenset[str]
    synonyms: Mapping[str, str]
    source: str = ""
    version: int = LEXICON_VERSION
    _lookup: Mapping[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.version > LEXICON_VERSION:
            raise ConfigError(f"{LEXICON_NAME} version {self.version} is newer than this qground's")
        clash = sorted(k for k in self.synonyms if k in self.vocabulary)[:5]
        if clash:
            raise ConfigError(f"{LEXICON_NAME}: trained words must not be rewritten, but these have synonyms: {clash}")
        bad = sorted(k for k, v in self.synonyms.items() if not WORD.fullmatch(k) or k != k.lower() or not v)[:5]
        if bad:
            raise ConfigError(f"{LEXICON_NAME}: synonym keys must be lower-case words with a non-empty value: {bad}")
        object.__setattr__(self, "vocabulary", frozenset(self.vocabulary))
        object.__setattr__(self, "_lookup", MappingProxyType(dict(self.synonyms)))

    def word(self, word: str) -> str:
        """``word`` as the model should read it: its synonym (capitalized like ``word``) or ``word`` itself."""
        low = word.lower()
        if low in self.vocabulary or low not in self._lookup:
            return word
        new = self._lookup[low]
        return new[:1].upper() + new[1:] if word[:1].isupper() else new

    def rewrite(self, text: str) -> str:
        """``text`` with each word read through ``word``; the rest of the text unchanged."""
        return WORD.sub(lambda m: self.word(m.group(0)), text)

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / LEXICON_NAME
        data = {
            "version": self.version,
            "source": self.source,
            "vocabulary": sorted(self.vocabulary),
            "synonyms": dict(sorted(self.synonyms.items())),
        }
        path.write_text(json.dumps(data, indent=0, ensure_ascii=False) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | Path) -> Lexicon | None:
        """The lexicon saved in ``folder``, or None when it has none."""
        path = Path(folder) / LEXICON_NAME
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(
                vocabulary=frozenset(data["vocabulary"]),
                synonyms=data["synonyms"],
                source=data.get("source", ""),
                version=data.get("version", LEXICON_VERSION),
            )
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise ConfigError(f"{path} is not a valid lexicon: {e}") from None
