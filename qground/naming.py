"""Which images a comparison answer names: ordinals ("the second image"), numbers ("image 2"), letters ("B", "Image B",
"Option B") read through a multiple-choice question's options or the app's slot labels.

`named_images` lists every image an answer names, `parse_choice` the one it picks, `question_options` the letter →
image map of a question that lists options ("A. The second image").
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["named_images", "parse_choice", "question_options"]

_ORDINALS = {
    word: i
    for i, words in enumerate(
        [
            ("first", "1st", "former"),
            ("second", "2nd"),
            ("third", "3rd"),
            ("fourth", "4th"),
            ("fifth", "5th"),
            ("sixth", "6th"),
            ("seventh", "7th"),
            ("eighth", "8th"),
        ]
    )
    for word in words
}
_NUMBERS = {"one": 0, "two": 1, "three": 2, "four": 3} | {str(i + 1): i for i in range(8)}
_IMAGE_WORD = r"(?i:image|picture|photo|img)"
_ORDINAL = "|".join(_ORDINALS)
_NAMING_PATTERNS = (
    ("letter", re.compile(r"^\s*[(\[]?([A-Ha-h])(?:[.)\]:,]|\s*$)")),  # "B", "B.", "(B) is …"
    ("letter", re.compile(r"\b(?i:option|choice|answer(?:\s+is)?)\s*[:#]?\s*\(?([A-H])\b")),
    ("letter", re.compile(rf"\b{_IMAGE_WORD}\s*\(?([A-H])\)?(?![\w'])")),  # "image B"
    ("number", re.compile(rf"\b{_IMAGE_WORD}\s*(?:no\.?|number|#)?\s*(\d|(?i:one|two|three|four))\b")),
    ("number", re.compile(r"^\s*(\d)\s*[.)]?\s*$")),
    ("ordinal", re.compile(rf"\b(?i:({_ORDINAL}))\s+(?i:image|picture|photo|img|one)\b")),  # not "at first glance"
    ("ordinal", re.compile(rf"^\W*(?i:the\s+)?(?i:({_ORDINAL}|last))\W*$")),  # the whole answer: "Third."
    ("ordinal", re.compile(r"\b(?i:(former|latter))\b")),
)
_OPTION_LINE = re.compile(r"(?:^|\s)\(?([A-H])[.)]\s+(.+?)(?=\s+\(?[A-H][.)]\s|\n|$)", re.M)


def named_images(answer: str, num_images: int, letters: Mapping[str, int] | None = None) -> list[tuple[int, str]]:
    """Every image an answer names, in order of first mention: ``[(index 0..num_images − 1, phrase)]``.

    Understood: "The second image.", "the 2nd one", a whole answer "Third." / "first", "former"/"latter"/"last",
    "Image 2", "image two", "image #1", "Image B", and letters "B", "B.", "(B)", "B. The second image", "Option B",
    "The answer is A". Letters map through ``letters`` (an MCQ's options, or the app's slot labels), else A → 0, B → 1,
    …; ordinals and numbers count the images. Names out of range (or unknown letters) are ignored."""
    hits = []
    for kind, pattern in _NAMING_PATTERNS:
        for match in pattern.finditer(answer):
            token = match.group(1)
            if kind == "letter":
                index = letters.get(token.upper(), -1) if letters else ord(token.upper()) - ord("A")
            elif kind == "number":
                index = _NUMBERS[token.lower()]
            else:
                index = _ORDINALS[token.lower()] if token.lower() in _ORDINALS else num_images - 1
            if 0 <= index < num_images:
                hits.append((match.start(), index, match.group(0).strip()))
    named: dict[int, str] = {}
    for _, index, phrase in sorted(hits):
        named.setdefault(index, phrase)
    return list(named.items())


def question_options(question: str, num_images: int) -> dict[str, int]:
    """Letter → image index of an MCQ's options ("A. The second image" → {"A": 1}); empty when the question lists no
    options or one of them names no image."""
    options = {}
    for letter, text in _OPTION_LINE.findall(question):
        index = parse_choice(text, num_images)
        if index is None:
            return {}
        options[letter] = index
    return options


def parse_choice(answer: str, num_images: int, options: Mapping[str, int] | None = None) -> int | None:
    """The image an answer picks — the first one it names (``named_images``) — or None when it names none."""
    named = named_images(answer, num_images, options)
    return named[0][0] if named else None
