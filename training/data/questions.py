"""Questions as a grammar: phrasing families per intent, expanded into hundreds of wordings, for the synthetic data.

Intents: ``describe`` (open questions about the quality, the lighting, the focus, where the problems are, ratings),
``yes/no`` about one class, follow-ups that refer to the previous answer, and comparisons of 2–4 images by kind
(``COMPARISONS``: every preset of the app's Compare tab among them; their "grammar" family crosses ``COMPARE_PHRASES``
with ``COMPARE_SLOTS``). Each template belongs to a *family*;
``HELD_OUT`` families never appear in training data: the validation and evaluation splits ask only those, so the
metrics measure phrasings the model has not seen. Templates are ``str.format`` strings over the slots of ``SLOTS`` and
``COMPARE_SLOTS`` (whose values may hold slots themselves) plus ``adj`` / ``noun`` (a class's words, ``CLASS_WORDS``).
"""

from __future__ import annotations

import string

import numpy as np

from qground.taxonomy import CLASS_NAMES

SLOTS = {
    "image": ("image", "photo", "picture", "shot"),
    "aspect": ("lighting", "exposure", "focus", "sharpness", "colors", "brightness", "details"),
    "please": ("", "Please ", "Could you ", "Can you "),
    "verb": ("describe", "assess", "evaluate", "judge", "analyze", "comment on"),
    "what": ("quality", "image quality", "visual quality", "technical quality"),
    "detail": ("", " in detail", " briefly", " for me"),
}
# (adjectives, nouns) a person may use for each class
CLASS_WORDS = {
    "blur": (("blurry", "out of focus", "soft", "unsharp", "fuzzy", "blurred"), ("blur", "defocus", "softness")),
    "jitter": (
        ("shaky", "motion blurred", "smeared by camera shake", "streaky"),
        ("camera shake", "motion blur", "jitter", "shake", "motion streaks"),
    ),
    "overexposure": (
        ("overexposed", "too bright", "blown out", "washed out"),
        ("overexposure", "blown highlights", "clipped highlights", "too much light"),
    ),
    "low light": (
        ("too dark", "underexposed", "dim", "dark"),
        ("low light", "underexposure", "darkness", "poor lighting"),
    ),
    "noise": (("noisy", "grainy", "speckled"), ("noise", "grain", "sensor noise", "speckles")),
}

DESCRIBE = {
    "formal": (
        "{please}{verb} the {what} of this {image}{detail}.",
        "{please}{verb} this {image}'s {what}{detail}.",
        "{please}rate the {what} of this {image}.",
    ),
    "how": (
        "How is the quality of this {image}?",
        "How good is this {image}?",
        "How does this {image} look?",
        "What do you think of this {image}'s quality?",
        "How would you rate this {image}?",
        "Is this a good {image}?",
        "Is the quality of this {image} good?",
        "What is the overall quality of the {image}?",
    ),
    "problems": (
        "What's wrong with this {image}?",
        "What is wrong with the {aspect}?",
        "Are there any problems with this {image}?",
        "What distortions does this {image} have?",
        "What quality issues can you see?",
        "Any problems with the {aspect}?",
        "Is the {aspect} OK?",
        "What distortions does this {image} have, and where are they?",
        "Where are the distortions?",
        "Which parts of the {image} have problems?",
    ),
    "casual": (  # held out
        "thoughts on this {image}?",
        "Tell me about the quality.",
        "Give me your honest opinion of this {image}'s quality.",
        "Anything off with it?",
        "Quality check, please.",
        "Could you tell me whether this {image} is any good?",
        "how does the {aspect} look",
        "Is there something I should fix in this {image}?",
    ),
}
YES_NO = {
    "is_adj": (
        "Is this {image} {adj}?",
        "Is the {image} {adj}?",
        "Does this {image} look {adj}?",
        "Would you say the {image} is {adj}?",
    ),
    "there_noun": (
        "Is there any {noun} in this {image}?",
        "Is there {noun} in the {image}?",
        "Do you see {noun}?",
        "Does the {image} have {noun}?",
        "Does it suffer from {noun}?",
    ),
    "casual": (  # held out
        "{adj}?",
        "Any {noun}?",
        "Can you spot {noun} in it?",
        "I think it's {adj}, am I right?",
        "Check for {noun}, please.",
    ),
}
FOLLOW_UP_YES_NO = ("What about {noun}?", "And is it {adj}?", "How about {noun}?")
FOLLOW_UP_DESCRIBE = ("Anything else?", "Is that all?", "How bad is it overall?", "Where is it?", "Can you say more?")

# What a comparison of each kind asks for, as verb phrases after "Which …" (the "grammar" family): hundreds of wordings
# per kind once crossed with COMPARE_SLOTS, in the field's everyday words (out of focus, washed out, grainy, shaky):
# a 4-layer LLM reads a comparison in words it never compared with as a draw, often the wrong way round
# (docs/experiments/2026-12-06-nano-v13.md). The held-out "casual" wordings each hold a word no training comparison
# has (tests/test_synth.py).
COMPARE_PHRASES = {
    "best": (
        "has the {top} quality",
        "looks the best",
        "is the best {one}",
        "has the fewest {flaws}",
        "would you rate highest",
        "is technically the best",
        "comes out on top for quality",
        "would you keep",
        "is the one to keep",
    ),
    "worst": (
        "has the {bottom} quality",
        "looks the worst",
        "is the worst {one}",
        "has the most {flaws}",
        "would you rate lowest",
        "is technically the worst",
        "is the most degraded",
        "would you delete",
        "has the lowest quality",
    ),
    "sharpest": (
        "is the sharpest",
        "has the sharpest details",
        "is the most in focus",
        "is the best focused",
        "is the least blurry",
        "is the clearest",
        "has the finest detail",
        "shows the least blur",
        "is in the sharpest focus",
        "is the crispest",
        "has the crispest details",
        "is the least out of focus",
    ),
    "blurriest": (
        "is the blurriest",
        "is the most blurred",
        "is the least sharp",
        "is the softest",
        "is the fuzziest",
        "has the most blur",
        "has the worst focus",
        "is the least in focus",
        "is the most defocused",
        "is the most out of focus",
        "looks out of focus",
        "is the most unfocused",
    ),
    "least noise": (
        "has the least noise",
        "is the least noisy",
        "is the cleanest",
        "has the least grain",
        "shows the fewest speckles",
        "has the lowest noise",
        "is the most noise-free",
        "suffers least from noise",
        "is the least grainy",
        "is the least speckled",
    ),
    "noisiest": (
        "is the noisiest",
        "has the most noise",
        "has the most grain",
        "is the most speckled",
        "shows the most sensor noise",
        "suffers most from noise",
        "has the heaviest noise",
        "is the most noisy",
        "is the grainiest",
        "is the most grainy",
    ),
    "best exposed": (
        "is the best exposed",
        "has the best exposure",
        "has the most balanced exposure",
        "is exposed the most correctly",
        "has the best brightness",
        "is neither too dark nor too bright",
        "has the most natural brightness",
        "is the best lit",
        "has the best lighting",
        "has the best light",
    ),
    "darkest": (
        "is the darkest",
        "is the dimmest",
        "is the least bright",
        "has the most underexposure",
        "suffers most from low light",
        "has the worst low-light problem",
        "is the most underexposed",
        "is the most dimly lit",
    ),
    "overexposed": (
        "is the most overexposed",
        "has the most blown highlights",
        "is the most blown out",
        "has the most clipped highlights",
        "has the most overexposure",
        "has the brightest blown-out areas",
        "suffers most from overexposure",
        "is the most washed out",
        "looks the most washed out",
    ),
    "shakiest": (
        "shows the most camera shake",
        "has the most motion blur",
        "has the most shake",
        "is the most smeared by motion",
        "shows the most motion streaks",
        "suffers most from camera shake",
        "has the strongest motion blur",
        "is the shakiest",
        "is the most shaky",
        "is the most jittery",
    ),
}
COMPARE_SLOTS = {
    "which": (
        "Which",
        "Which one",
        "Which {one}",
        "Which of these",
        "Which of them",
        "Which of these {ones}",
        "Which of the {ones}",
        "Out of these, which",
        "Among these {ones}, which",
        "Can you tell which",
    ),
    "one": ("image", "photo", "picture", "shot"),
    "ones": ("images", "photos", "pictures", "shots"),
    "top": ("best", "highest", "best overall", "best technical", "best visual"),
    "bottom": ("worst", "poorest", "worst overall", "worst technical"),
    "flaws": ("flaws", "defects", "problems", "quality issues", "distortions", "artifacts"),
}


def _comparison_templates(kind: str) -> tuple[str, ...]:
    """The "grammar" family of ``kind``: "{which} <phrase>?" for each of its phrases."""
    return tuple("{which} " + phrase + "?" for phrase in COMPARE_PHRASES[kind])


# kind → phrasing families; the first "plain" phrasing of best/sharpest/least noise/best exposed are the app's presets
COMPARISONS = {
    "best": {
        "plain": (
            "Which image has the best overall quality?",
            "Which image looks best?",
            "Which is the best photo?",
            "Which of these images has the highest quality?",
        ),
        "grammar": _comparison_templates("best"),
        "casual": ("Which one would you frame?", "Which picture came out nicest?"),
    },
    "worst": {
        "plain": ("Which image has the worst quality?", "Which image looks worst?"),
        "grammar": _comparison_templates("worst"),
        "casual": ("Which one would you throw away?", "Which picture is the most botched?"),
    },
    "sharpest": {
        "plain": ("Which image is the sharpest?", "Which image is sharper?", "Which one is the most in focus?"),
        "grammar": _comparison_templates("sharpest"),
        "casual": ("Which one looks razor sharp?",),
    },
    "blurriest": {
        "plain": ("Which image is blurrier?", "Which image is the blurriest?"),
        "grammar": _comparison_templates("blurriest"),
        "casual": ("Which one looks the most smudged?",),
    },
    "least noise": {
        "plain": ("Which image has the least noise?", "Which image is the cleanest?"),
        "grammar": _comparison_templates("least noise"),
        "casual": ("Which one looks the smoothest?",),
    },
    "noisiest": {
        "plain": ("Which image is noisier?", "Which image is the noisiest?", "Which has the most noise?"),
        "grammar": _comparison_templates("noisiest"),
        "casual": ("Which one looks the most staticky?",),
    },
    "best exposed": {
        "plain": ("Which image is the best exposed?", "Which one has the best exposure?"),
        "grammar": _comparison_templates("best exposed"),
        "casual": ("Which one has the nicest light?",),
    },
    "darkest": {
        "plain": ("Which image is darker?", "Which image is the darkest?"),
        "grammar": _comparison_templates("darkest"),
        "casual": ("Which one is the gloomiest?",),
    },
    "overexposed": {
        "plain": ("Which image is more overexposed?", "Which has the most blown highlights?"),
        "grammar": _comparison_templates("overexposed"),
        "casual": ("Which one looks bleached?",),
    },
    "shakiest": {
        "plain": ("Which image shows more camera shake?", "Which one has the most motion blur?"),
        "grammar": _comparison_templates("shakiest"),
        "casual": ("Which one has the most wobble?",),
    },
}
HELD_OUT = frozenset({"casual"})  # phrasing families asked only in the validation and evaluation splits


def _fields(template: str) -> list[str]:
    return [f for _, f, _, _ in string.Formatter().parse(template) if f]


def expand(template: str, cls: str | None = None) -> list[str]:
    """Every wording of ``template`` over ``SLOTS`` and ``COMPARE_SLOTS`` (with ``cls``'s words for ``adj`` /
    ``noun``), the first slot varying slowest."""
    slots = {**SLOTS, **COMPARE_SLOTS}
    if cls is not None:
        slots["adj"], slots["noun"] = CLASS_WORDS[cls]
    return [t[0].upper() + t[1:] for t in _fill(template, slots)]


def _fill(template: str, slots: dict) -> list[str]:
    """``template`` with its first slot set to each of its values in turn, recursively (a value may hold slots)."""
    names = _fields(template)
    if not names:
        return [template]
    slot = "{" + names[0] + "}"
    return [text for value in slots[names[0]] for text in _fill(template.replace(slot, value), slots)]


def _families(table: dict, held_out: bool) -> list[str]:
    return [f for f in table if (f in HELD_OUT) == held_out]


def _pick(table: dict, rng: np.random.Generator, held_out: bool, cls: str | None = None) -> tuple[str, str]:
    family = str(rng.choice(_families(table, held_out)))
    template = str(rng.choice(table[family]))
    return str(rng.choice(expand(template, cls))), family


def describe_question(rng: np.random.Generator, held_out: bool) -> tuple[str, str]:
    """(question, family) of an open question about one image's quality."""
    return _pick(DESCRIBE, rng, held_out)


def yes_no_question(cls: str, rng: np.random.Generator, held_out: bool) -> tuple[str, str]:
    """(question, family) asking whether the image has ``cls``."""
    return _pick(YES_NO, rng, held_out, cls)


def follow_up(cls: str | None, rng: np.random.Generator) -> str:
    """A second-turn question: a yes/no about ``cls`` in a few words, or (``cls`` None) a request for more."""
    if cls is None:
        return str(rng.choice(FOLLOW_UP_DESCRIBE))
    return str(rng.choice(expand(str(rng.choice(FOLLOW_UP_YES_NO)), cls)))


def _wordings(table: dict, held_out: bool, classes=(None,)) -> set[str]:
    """Every wording of ``table``'s training (or, ``held_out``, held-out) families, for each of ``classes``."""
    return {w for f in _families(table, held_out) for t in table[f] for c in classes for w in expand(t, c)}


def comparison_wordings(kind: str, held_out: bool) -> set[str]:
    """Every wording of ``kind``'s training (or, ``held_out``, held-out) families."""
    return _wordings(COMPARISONS[kind], held_out)


def comparison_question(kind: str, rng: np.random.Generator, held_out: bool) -> tuple[str, str]:
    """(question, family) comparing images by ``kind`` (a key of ``COMPARISONS``)."""
    return _pick(COMPARISONS[kind], rng, held_out)


def training_wordings() -> set[str]:
    """Every wording the training families ask, of every intent (follow-ups included): the questions' words are the
    words the model knows (``training/lexicon.py``)."""
    follow_ups = {w for t in FOLLOW_UP_YES_NO for c in CLASS_NAMES for w in expand(t, c)} | set(FOLLOW_UP_DESCRIBE)
    compare = {w for kind in COMPARISONS for w in comparison_wordings(kind, held_out=False)}
    return _wordings(DESCRIBE, False) | _wordings(YES_NO, False, CLASS_NAMES) | compare | follow_ups


def count_wordings() -> dict[str, int]:
    """How many distinct wordings each intent has (training families, held-out families)."""
    out = {}
    for name, table, classes in (("describe", DESCRIBE, [None]), ("yes/no", YES_NO, CLASS_NAMES)):
        for held in (False, True):
            out[f"{name}{' (held out)' if held else ''}"] = len(_wordings(table, held, classes))
    for held in (False, True):
        out[f"comparison{' (held out)' if held else ''}"] = sum(len(comparison_wordings(k, held)) for k in COMPARISONS)
    return out
