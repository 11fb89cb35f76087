"""Build the question lexicon (``qground.lexicon``) from Princeton WordNet 3.0 and the training question grammar.

    python -m training.lexicon --out assets/qground-nano [--wordnet DIR] [--cache DIR]

The vocabulary is every word of the questions the model trains on (``training.data.questions.training_wordings``, the
grounding questions, the multiple-choice lines) and of the app's questions. For each WordNet lemma (adjective, noun,
verb; one word) outside it, its senses are read in WordNet's order (most frequent first): the first sense holding a
*target* (a lemma of a trained word or phrase, in the same part of speech; for an adjective also its "similar to" head
sense) decides. Each inflected form of the lemma (WordNet's exception lists, else the regular English rules) is then
read as the same form of a target when the model trained on that form (an adjective's comparative or superlative
falls back to "more" / "most" + the trained base word); among a sense's targets, the word in most training wordings.
A lemma that is itself a target keeps all its forms: the model knows its root. "more X" / "most X" is read as X's
trained comparative / superlative unless the training questions hold the pair itself ("most grainy").

WordNet comes from the Debian package ``wordnet-base`` (``--wordnet`` a folder holding ``index.adj`` … instead).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from qground.answers import (
    CLEAN_DESCRIPTION,
    CLEAN_GROUNDING,
    GROUNDING_LEAD,
    LOCATIONS,
    QUALITIES,
    SEVERITIES,
    yes_no_answer,
)
from qground.lexicon import WORD, Lexicon
from qground.mcq import mcq_prompt
from qground.prompts import ordinal
from qground.questions import COMPARE_PRESETS, QUESTIONS
from qground.taxonomy import CLASS_NAMES, DISTORTIONS
from training.data.debian import DebianPackage, fetch_package
from training.data.questions import training_wordings
from training.data.readers import DESCRIBE_QUESTIONS, GROUNDING_QUESTIONS

WORDNET = DebianPackage(
    "wordnet-base",
    "1:3.0-37",
    "61060d960f9ada8fa120872312eccd3ecebfbab8c4579e4f5a74e1cf67620752",
    "WordNet 3.0 license (permission to use, copy, modify and distribute, with its notice)",
)
POS = ("adj", "noun", "verb")  # WordNet's file suffixes; a word read as an adjective first
MAX_PHRASE = 3  # words in a trained phrase that can be a target ("out of focus")
VOWELS = frozenset("aeiou")
# words of the grammar that hold it together: never a target (WordNet's senses of "can", "do" or "first" are not ours)
FUNCTION_WORDS = frozenset(
    (
        "a an and any are be can could do does first fourth given has have is it me one out second the third would you"
    ).split()
)


@dataclass(frozen=True)
class Synset:
    """One WordNet sense: its lemmas (lower case, spaces for WordNet's underscores) and, for an adjective satellite,
    the offsets of its head senses ("similar to")."""

    words: tuple[str, ...]
    heads: tuple[str, ...] = ()


@dataclass(frozen=True)
class WordNet:
    """Per part of speech: lemma → sense offsets (most frequent first), offset → ``Synset``, lemma → its irregular
    inflected forms (the exception lists)."""

    index: dict[str, dict[str, list[str]]]
    synsets: dict[str, dict[str, Synset]]
    irregular: dict[str, dict[str, list[str]]]


def _lemma(word: str) -> str:
    return re.sub(r"\([a-z]+\)$", "", word).replace("_", " ").lower()  # drops adjective markers "(a)", "(p)", "(ip)"


def read_wordnet(folder: str | Path) -> WordNet:
    """WordNet's ``index.*``, ``data.*`` and ``*.exc`` files for ``POS`` from ``folder``."""
    folder = Path(folder)
    index, synsets, irregular = {}, {}, {}
    for pos in POS:
        index[pos] = {}
        for line in (folder / f"index.{pos}").read_text(encoding="latin-1").splitlines():
            if line.startswith(" "):
                continue  # the license header
            fields = line.split()
            count = int(fields[2])
            index[pos][_lemma(fields[0])] = fields[-count:]
        synsets[pos] = {}
        for line in (folder / f"data.{pos}").read_text(encoding="latin-1").splitlines():
            if line.startswith(" "):
                continue
            fields = line.split(" | ")[0].split()
            n = int(fields[3], 16)
            words = tuple(dict.fromkeys(_lemma(w) for w in fields[4 : 4 + 2 * n : 2]))
            at = 4 + 2 * n
            pointers = [fields[at + 1 + 4 * i : at + 5 + 4 * i] for i in range(int(fields[at]))]
            heads = tuple(p[1] for p in pointers if p[0] == "&") if fields[2] == "s" else ()
            synsets[pos][fields[0]] = Synset(words, heads)
        irregular[pos] = {}
        for line in (folder / f"{pos}.exc").read_text(encoding="latin-1").splitlines():
            form, *lemmas = line.split()
            for lemma in lemmas:
                irregular[pos].setdefault(lemma.replace("_", " "), []).append(form.replace("_", " "))
    return WordNet(index, synsets, irregular)


def _short_vowel_end(word: str) -> bool:
    """consonant-vowel-consonant at the end of a one-syllable word: its final consonant doubles ("dim" → "dimmer")."""
    tail = word[-3:]
    syllables = len(re.findall(r"[aeiouy]+", word))
    return (
        len(tail) == 3
        and syllables == 1
        and tail[0] not in VOWELS
        and tail[1] in VOWELS
        and tail[2] not in VOWELS | set("wxy")
    )


def _suffixed(word: str, suffix: str) -> str:
    """Regular English spelling of ``word`` + ``suffix`` ("er", "est", "s", "ed", "ing")."""
    if suffix in ("er", "est", "ed"):
        if word.endswith("e"):
            return word + suffix[1:]
        if word.endswith("y") and len(word) > 2 and word[-2] not in VOWELS:
            return word[:-1] + "i" + suffix
        if _short_vowel_end(word):
            return word + word[-1] + suffix
        return word + suffix
    if suffix == "s":
        if word.endswith(("s", "x", "z", "ch", "sh")):
            return word + "es"
        if word.endswith("y") and len(word) > 2 and word[-2] not in VOWELS:
            return word[:-1] + "ies"
        return word + "s"
    if suffix == "ing":
        if word.endswith("e") and not word.endswith("ee"):
            return word[:-1] + "ing"
        if _short_vowel_end(word):
            return word + word[-1] + "ing"
        return word + "ing"
    raise ValueError(f"unknown suffix {suffix!r}")


FORMS = {"adj": ("", "er", "est"), "noun": ("", "s"), "verb": ("", "s", "ed", "ing")}


def forms(wordnet: WordNet, pos: str, lemma: str) -> dict[str, str]:
    """``lemma``'s inflected forms by suffix of ``FORMS[pos]`` ("" the lemma itself): WordNet's exception list where
    it names one (``best`` for ``good`` + "est"), else the regular spelling."""
    out = {"": lemma}
    for suffix in FORMS[pos][1:]:
        out[suffix] = next(
            (f for f in wordnet.irregular[pos].get(lemma, ()) if _irregular_suffix(pos, f) == suffix),
            _suffixed(lemma, suffix),
        )
    return out


def _irregular_suffix(pos: str, form: str) -> str:
    """Which regular suffix an exception-list ``form`` stands in for: adjectives "-er" / "-st" ("better", "best"),
    nouns a plural, verbs "-ing", "-s", else a past form."""
    if pos == "adj":
        return "est" if form.endswith("st") else "er"
    if pos == "noun":
        return "s"
    return "ing" if form.endswith("ing") else "s" if form.endswith("s") else "ed"


def vocabulary_texts() -> list[str]:
    """Every question text the model trains on or the app asks, with the fixed multiple-choice lines, and the words
    of the answers it trains on (places, severities, qualities) and of the distortion classes' names and aliases
    (``qground.taxonomy``: words the engine itself reads in a question)."""
    options = mcq_prompt("", [f"The {ordinal(k)} image" for k in range(4)])  # as training.data.synth asks them
    answers = [*LOCATIONS, *SEVERITIES, *QUALITIES, CLEAN_DESCRIPTION, CLEAN_GROUNDING, GROUNDING_LEAD]
    answers += [yes_no_answer(c, [], "good") for c in CLASS_NAMES]
    classes = [name for d in DISTORTIONS for name in (d.name, *d.aliases)]
    return sorted(
        set(answers)
        | set(classes)
        | training_wordings()
        | set(GROUNDING_QUESTIONS)
        | set(DESCRIBE_QUESTIONS)
        | set(QUESTIONS.values())
        | set(COMPARE_PRESETS.values())
        | {options}
    )


def words_of(text: str) -> list[str]:
    return [w.lower() for w in WORD.findall(text)]


def build(wordnet: WordNet, texts: Sequence[str], source: str = "") -> Lexicon:
    """The lexicon of ``texts`` (the trained questions) over ``wordnet`` (module docstring)."""
    vocabulary = {w for t in texts for w in words_of(t)}
    in_texts = Counter(w for t in texts for w in set(words_of(t)))  # how many wordings hold each word
    phrases = Counter()
    for t in texts:
        ws = words_of(t)
        phrases.update({" ".join(ws[i : i + n]) for n in range(2, MAX_PHRASE + 1) for i in range(len(ws) - n + 1)})
    # targets per part of speech: lemma → its forms the model trained on (suffix → form)
    targets: dict[str, dict[str, dict[str, str]]] = {}
    weight: dict[str, int] = {}
    for pos in POS:
        targets[pos] = {}
        for lemma in wordnet.index[pos]:
            if lemma in FUNCTION_WORDS:
                continue
            trained = {s: f for s, f in forms(wordnet, pos, lemma).items() if f in vocabulary or phrases[f]}
            if "" in trained or (" " not in lemma and trained):
                targets[pos][lemma] = trained
                weight[lemma] = max(in_texts[lemma], phrases[lemma])
    known_roots = {lemma for pos in POS for lemma in targets[pos]}
    irregular_adj = {f for fs in wordnet.irregular["adj"].values() for f in fs}  # "best", "worse", …
    synonyms: dict[str, str] = {}
    for pos in POS:
        for lemma, offsets in wordnet.index[pos].items():
            if lemma in known_roots or not WORD.fullmatch(lemma):
                continue
            candidates = _sense_targets(wordnet, pos, lemma, offsets, targets[pos])
            if not candidates:
                continue
            for suffix, form in forms(wordnet, pos, lemma).items():
                if form in vocabulary or form in synonyms or not WORD.fullmatch(form):
                    continue
                new = _read_as(pos, suffix, candidates, targets[pos], weight, irregular_adj)
                if new is not None:
                    synonyms[form] = new
    degrees = {"more": {}, "most": {}}
    for lemma, trained in targets["adj"].items():
        for word, suffix in (("more", "er"), ("most", "est")):
            if suffix in trained and WORD.fullmatch(lemma) and not phrases[f"{word} {lemma}"]:
                degrees[word][lemma] = trained[suffix]
    return Lexicon(frozenset(vocabulary), synonyms, degrees, source)


def _sense_targets(
    wordnet: WordNet, pos: str, lemma: str, offsets: list[str], targets: dict[str, dict[str, str]]
) -> list[str]:
    """The targets of ``lemma``'s first sense that has any (its own words, then its "similar to" heads')."""
    for offset in offsets:
        synset = wordnet.synsets[pos][offset]
        words = list(synset.words) + [w for h in synset.heads for w in wordnet.synsets[pos][h].words]
        found = [w for w in dict.fromkeys(words) if w != lemma and w in targets]
        if found:
            return found
    return []


def _read_as(
    pos: str,
    suffix: str,
    candidates: list[str],
    targets: dict[str, dict[str, str]],
    weight: dict[str, int],
    irregular_adj: set[str],
) -> str | None:
    """The trained form a word of ``suffix`` is read as: the same form of the most used candidate that has it trained,
    else for an adjective's comparative / superlative "more" / "most" + a trained base form that has none trained
    (an irregular form such as "best" takes none: "most best" is not English)."""
    ranked = sorted(candidates, key=lambda c: (-weight[c], c))
    for c in ranked:
        if suffix in targets[c]:
            return targets[c][suffix]
    if pos == "adj" and suffix in ("er", "est"):
        for c in ranked:
            if "" in targets[c] and not {"er", "est"} & set(targets[c]) and c not in irregular_adj:
                return ("more " if suffix == "er" else "most ") + targets[c][""]
    return None


def wordnet_folder(cache: str | None) -> Path:
    """WordNet's files, from the pinned Debian package (downloaded and unpacked once)."""
    root = fetch_package(WORDNET, Path(cache) if cache else None)
    return root / "usr" / "share" / "wordnet"


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.lexicon", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="checkpoint folder to write lexicon.json into")
    parser.add_argument("--wordnet", help="a folder with WordNet 3.0's index.* / data.* / *.exc (default: Debian's)")
    parser.add_argument("--cache", help="Debian package cache (default: $QGROUND_DATA_CACHE or ~/.cache/qground)")
    args = parser.parse_args(None if argv is None else list(argv))
    folder = Path(args.wordnet) if args.wordnet else wordnet_folder(args.cache)
    source = f"WordNet 3.0 (Debian {WORDNET.name} {WORDNET.version}) over the training questions"
    lexicon = build(read_wordnet(folder), vocabulary_texts(), source)
    path = lexicon.save(args.out)
    print(f"{path}: {len(lexicon.vocabulary)} trained words, {len(lexicon.synonyms)} other words read as trained ones")
    return 0


if __name__ == "__main__":
    sys.exit(main())
