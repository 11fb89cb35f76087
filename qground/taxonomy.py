"""The distortion taxonomy of Q-Ground: five classes, their names, aliases and colors, in one place.

Free words (the model's words before each mask, the words of a description, a GPT-4V or annotator label) are mapped to
a class by one rule, ``match_class``: a class name or alias after normalizing case, hyphens and underscores, an
inflection of one ("blurriness", "noises"), or a typo one edit from one (Q-Ground supplementary §1.2's edit-distance
mapping, bounded).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

__all__ = [
    "CLASS_NAMES",
    "DISTORTIONS",
    "DISTORTION_COLORS",
    "Distortion",
    "MAX_PHRASE_WORDS",
    "NEAR_MISSES",
    "NO_DISTORTION",
    "TYPO_MIN_LETTERS",
    "get",
    "match_class",
]


@dataclass(frozen=True)
class Distortion:
    """One distortion class.

    name: canonical answer word ("low light"); key: file-safe id ("low_light"); display: UI label;
    aliases: other words people and models use; color: "#rrggbb" from the Okabe-Ito color-blind-safe palette.
    """

    name: str
    key: str
    display: str
    aliases: tuple[str, ...]
    color: str


DISTORTIONS: tuple[Distortion, ...] = (
    Distortion("blur", "blur", "Blur", ("blurry", "blurred", "out of focus", "defocus", "unsharp", "soft"), "#0072B2"),
    Distortion("jitter", "jitter", "Jitter", ("jittery", "motion blur", "camera shake", "shake", "shaky"), "#E69F00"),
    Distortion(
        "overexposure",
        "overexposure",
        "Overexposure",
        ("overexposed", "over exposure", "blown highlights", "too bright", "clipped highlights"),
        "#F0E442",
    ),
    Distortion(
        "low light",
        "low_light",
        "Low light",
        ("lowlight", "underexposure", "underexposed", "dark", "too dark", "low brightness"),
        "#CC79A7",
    ),
    Distortion("noise", "noise", "Noise", ("noisy", "grain", "grainy", "sensor noise"), "#009E73"),
)

CLASS_NAMES: tuple[str, ...] = tuple(d.name for d in DISTORTIONS)
DISTORTION_COLORS: dict[str, str] = {d.name: d.color for d in DISTORTIONS}
NO_DISTORTION = "no distortion"

_BY_ANY_NAME = (
    {d.name: d for d in DISTORTIONS} | {d.key: d for d in DISTORTIONS} | {d.display.lower(): d for d in DISTORTIONS}
)


def get(name: str) -> Distortion:
    """The class for a canonical name, key or display name ("low light", "low_light", "Low light")."""
    try:
        return _BY_ANY_NAME[name.lower()]
    except KeyError:
        raise KeyError(f"unknown distortion class {name!r}; expected one of {list(CLASS_NAMES)}") from None


def normalize(text: str) -> str:
    """Lower-case, hyphens/underscores to spaces, drop other punctuation, collapse whitespace."""
    text = re.sub(r"[-_/]", " ", text.lower())
    text = re.sub(r"[^a-z0-9 ]", "", text)
    return " ".join(text.split())


def edit_distance(a: str, b: str) -> int:
    """Edit distance where inserting, deleting or substituting a letter, or swapping two adjacent letters, costs 1
    (optimal string alignment: "nosie" is one edit from "noise", as a typist sees it)."""
    rows = [[], list(range(len(b) + 1))]  # the row before the previous one, the previous one
    for i, ca in enumerate(a, 1):
        row = [i]
        for j, cb in enumerate(b, 1):
            cost = min(rows[-1][j] + 1, row[j - 1] + 1, rows[-1][j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                cost = min(cost, rows[-2][j - 2] + 1)
            row.append(cost)
        rows = [rows[-1], row]
    return rows[-1][-1]


def _phrases() -> dict[str, str]:
    """Every name, key, display name and alias of every class, normalized → canonical name."""
    return {normalize(p): d.name for d in DISTORTIONS for p in (d.name, d.key, d.display, *d.aliases)}


_PHRASES = _phrases()
_CANDIDATES = tuple((normalize(p), d.name) for d in DISTORTIONS for p in (d.name, *d.aliases))  # in taxonomy order
# The longest name or alias in words ("out of focus"): text scanners try spans of up to this many words.
MAX_PHRASE_WORDS = max(len(p.split()) for p in _PHRASES)
# The first letters a class's names and aliases start with: a typo keeps the first letter.
_FIRST_LETTERS = {d.name: {p[0] for p, name in _PHRASES.items() if name == d.name} for d in DISTORTIONS}
# Typos are read only in phrases of at least this many letters: below it one edit turns everyday words into class
# words ("nose", "dart", "slur").
TYPO_MIN_LETTERS = 5
# Everyday words of ≥ 5 letters one edit from a class word and starting with the same letter: never typos of it.
NEAR_MISSES = frozenset(
    "shady shape shade share shame shave stake snake shale shaly shako noose grail groin blurt blurb blurted slurry "
    "slurred jotter".split()
)
# Inflections removed from a one-word phrase, as (suffix, replacement): "blurriness" → "blurry", "darker" → "dark".
_SUFFIXES = (
    ("iness", "y"),
    ("iest", "y"),
    ("ier", "y"),
    ("ness", ""),
    ("ing", ""),
    ("ing", "e"),
    ("er", ""),
    ("es", ""),
    ("s", ""),
    ("ed", ""),
)


def _typo_class(text: str) -> str | None:
    """The class whose name or alias is nearest to ``text`` (normalized; the earlier class on a tie) when it is one
    edit away, ``text`` has ≥ ``TYPO_MIN_LETTERS`` letters, starts like one of that class's words and is not one of
    the ``NEAR_MISSES``."""
    if len(text.replace(" ", "")) < TYPO_MIN_LETTERS or text in NEAR_MISSES:
        return None
    best, best_d = None, 2
    for phrase, name in _CANDIDATES:
        dist = edit_distance(text, phrase)
        if dist < best_d:
            best, best_d = name, dist
    return best if best is not None and text[0] in _FIRST_LETTERS[best] else None


@functools.lru_cache(maxsize=8192)
def _normalized_class(text: str) -> str | None:
    """``match_class`` of normalized, non-empty text."""
    forms = [text]
    if " " not in text:
        forms += [text[: -len(s)] + r for s, r in _SUFFIXES if text.endswith(s) and len(text) > len(s) + 2]
    for form in forms:
        if form in _PHRASES:
            return _PHRASES[form]
    for form in forms:
        name = _typo_class(form)
        if name is not None:
            return name
    return None


def match_class(phrase: str) -> str | None:
    """The canonical class a word or short phrase names, or None: THE rule for every place that maps words to a
    class (the words before each mask in ``qground.inference``, the app's highlighted answer, the evaluation's
    ``named_classes``, ``training.data.readers.label_to_class``).

    After ``normalize`` (case, hyphens, underscores, punctuation), ``phrase`` names a class when it is
    1. one of the class's names, keys, display names or aliases ("Motion-blur" → jitter, "out of focus" → blur);
    2. one word that is one of those with an inflection removed ("blurriness" → "blurry", "darker" → "dark", "noises");
    3. or a typo of one of those: the nearest name or alias (of the phrase or of its inflection-free forms) is at most
       one edit away (a letter inserted, deleted or changed, or two adjacent letters swapped), the phrase has at least
       ``TYPO_MIN_LETTERS`` letters and the same first letter as a word of that class, and it is not an everyday word
       listed in ``NEAR_MISSES`` ("bluryy", "nosie", "over exposed", "jiter"; not "shade", "noose", "rainy", "blue").

    One tolerance for every caller, because every caller meets arbitrary words: the evaluation and the app read every
    word of free sentences, labels come from GPT-4V and from people, and the model's words before a mask are canonical
    only when it is well trained. A looser rule names classes that are not there (two edits: "sharp" → jitter, "notes"
    → noise, "haze" → jitter; three: "fog" → blur; the nearest name without a bound: any word at all), filing a mask or
    a label under a wrong class and crediting a description with a class it never names. This is the rule by which
    the evaluation's description metrics have always been computed, with the swap of two adjacent letters (the
    commonest typo: "nosie", "low lihgt") counted as one edit; no everyday word is such a swap of a class word. Returns
    None for empty text.
    """
    text = normalize(phrase)
    return _normalized_class(text) if text else None
