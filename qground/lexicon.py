"""Words the model never trained on, read as trained words of the same sense.

A small LLM trained from scratch on our question grammar knows only that grammar's words; an unknown word ("gloomiest",
"murky") reaches it as byte pieces it reads as a draw (docs/experiments/2026-12-07-choice-head-diagnostic.md). A
``Lexicon`` holds the words the model trained on (``vocabulary``: its questions, answers and the classes' names) and,
for other English words, the trained word each stands for (``synonyms``, built from WordNet by
``training/lexicon.py``). ``rewrite`` replaces, word by word, a word outside the vocabulary that has a synonym, and a
hyphenated one whose parts are trained by their trained spelling ("out-of-focus" → "out of focus"); every other word,
and all punctuation and spacing, stays as typed. Then "more X" / "most X" becomes X's comparative /
superlative where the model trained on that form and never on the pair (``degrees``: "the most sharp" → "the
sharpest"). Saved as ``lexicon.json`` beside a checkpoint; how a model is run, so the engine owns it
(``qground.inference``).
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
DEGREE = re.compile(r"\b(more|most)\s+(" + WORD.pattern + ")", re.IGNORECASE)  # "more blurry", "Most sharp"


def _cased_like(typed: str, new: str) -> str:
    """``new`` capitalized when ``typed`` starts with a capital ("Murky" → "Dark")."""
    return new[:1].upper() + new[1:] if typed[:1].isupper() else new


@dataclass(frozen=True)
class Lexicon:
    """``vocabulary``: the lower-case words the model trained on (questions, answers, class names); ``synonyms``:
    lower-case word → the trained word or phrase it is read as (a word of ``vocabulary`` is never a key);
    ``degrees``: ``"more"`` / ``"most"`` → lower-case adjective → its trained comparative / superlative; ``source``:
    where the synonyms come from, for the record."""

    vocabulary: frozenset[str]
    synonyms: Mapping[str, str]
    degrees: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    source: str = ""
    version: int = LEXICON_VERSION

    def __post_init__(self) -> None:
        if self.version > LEXICON_VERSION:
            raise ConfigError(f"{LEXICON_NAME} version {self.version} is newer than this qground's")
        clash = sorted(k for k in self.synonyms if k in self.vocabulary)[:5]
        if clash:
            raise ConfigError(f"{LEXICON_NAME}: trained words must not be rewritten, but these have synonyms: {clash}")
        bad = sorted(k for k, v in self.synonyms.items() if not WORD.fullmatch(k) or k != k.lower() or not v)[:5]
        if bad:
            raise ConfigError(f"{LEXICON_NAME}: synonym keys must be lower-case words with a non-empty value: {bad}")
        if set(self.degrees) - {"more", "most"}:
            raise ConfigError(f"{LEXICON_NAME}: degrees are 'more' and 'most', got {sorted(self.degrees)}")
        bad = sorted(k for forms in self.degrees.values() for k, v in forms.items() if k != k.lower() or not v)[:5]
        if bad:
            raise ConfigError(f"{LEXICON_NAME}: degree keys must be lower-case words with a non-empty value: {bad}")
        object.__setattr__(self, "vocabulary", frozenset(self.vocabulary))
        object.__setattr__(self, "synonyms", MappingProxyType(dict(self.synonyms)))
        object.__setattr__(self, "degrees", MappingProxyType({k: dict(v) for k, v in self.degrees.items()}))

    def word(self, word: str) -> str:
        """``word`` as the model should read it: its synonym (capitalized like ``word``); else, for a hyphenated word
        the model never trained on, the trained spelling of the same words (``spelling``); else ``word`` itself (a
        trained word has neither)."""
        new = self.synonyms.get(word.lower()) or self.spelling(word.lower())
        return word if new is None else _cased_like(word, new)

    def spelling(self, word: str) -> str | None:
        """A lower-case hyphenated word outside the vocabulary → its parts as one trained word ("over-exposed" →
        "overexposed") or as trained words apart ("out-of-focus" → "out of focus"): a hyphen where the model trained
        on none changes how it reads the words ("Which picture is the most out-of-focus?" 0.18 against 0.56 for "…
        out of focus?", docs/experiments/2026-12-07-hyphenated-words.md). None when neither is trained."""
        parts = word.split("-")
        if len(parts) == 1 or word in self.vocabulary:
            return None
        if "".join(parts) in self.vocabulary:
            return "".join(parts)
        return " ".join(parts) if all(p in self.vocabulary for p in parts) else None

    def rewrite(self, text: str) -> str:
        """``text`` with each word read through ``word``, then "more X" / "most X" through ``degrees``; the rest of
        the text unchanged."""
        return DEGREE.sub(self._degree, WORD.sub(lambda m: self.word(m.group(0)), text))

    def _degree(self, match: re.Match) -> str:
        form = self.degrees.get(match.group(1).lower(), {}).get(match.group(2).lower())
        return match.group(0) if form is None else _cased_like(match.group(1), form)

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / LEXICON_NAME
        data = {
            "version": self.version,
            "source": self.source,
            "vocabulary": sorted(self.vocabulary),
            "synonyms": dict(sorted(self.synonyms.items())),
            "degrees": {k: dict(sorted(v.items())) for k, v in sorted(self.degrees.items())},
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
                degrees=data.get("degrees", {}),
                source=data.get("source", ""),
                version=data.get("version", LEXICON_VERSION),
            )
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise ConfigError(f"{path} is not a valid lexicon: {e}") from None
