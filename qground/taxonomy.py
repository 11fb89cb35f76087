"""The distortion taxonomy of Q-Ground: five classes, their names, aliases and colors, in one place.

Free words (from the model's answer or a GPT-4V reply) are mapped to a class by the shortest edit distance to the class
names and aliases (seed §1.2), after normalizing case, hyphens and underscores.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Distortion", "DISTORTIONS", "CLASS_NAMES", "DISTORTION_COLORS", "NO_DISTORTION", "match_class", "get"]


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
    """Levenshtein distance (insert, delete, substitute all cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def match_class(word: str, max_distance: int | None = None) -> str | None:
    """Map a free word or phrase to the canonical class name with the shortest edit distance.

    Every class name and alias is a candidate; ties go to the earlier class. Returns None for empty input, or when
    ``max_distance`` is given and the best distance exceeds it.
    """
    text = normalize(word)
    if not text:
        return None
    best, best_d = None, None
    for d in DISTORTIONS:
        for cand in (d.name, *d.aliases):
            dist = edit_distance(text, normalize(cand))
            if best_d is None or dist < best_d:
                best, best_d = d.name, dist
    if max_distance is not None and best_d > max_distance:
        return None
    return best
