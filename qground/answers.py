"""The answer grammar: the sentences the shipped models answer in, as builders (training writes its answers with them)
and as a character automaton that decoding can be held to (policy ``constrained_answers``), so every answer is a
finished sentence whatever the question, while the model picks which sentence.

One image (``single_image_grammar``), after an optional leading space:

- grounding: ``The segmentation results are: blur [SEG0] … [SEG5] , noise [SEG0] … [SEG5]`` (classes in taxonomy
  order, each once) or ``There is no obvious distortion in the image.`` (``qground.prompts.grounding_answer``);
- a description, optionally after a yes/no lead (``Yes.`` / ``No, there is no blur.``): ``The image has moderate blur
  in the upper left and mild noise in most of the image. Overall, its quality is fair.`` or ``The image has no obvious
  distortion. Overall, its quality is excellent.`` (``describe_answer``, ``yes_no_answer``).

Several images (``comparison_grammar``): ``The [CHOICE] image.`` (``qground.tokens.CHOICE_ANSWER``).

The automaton reads characters; special tokens ([SEG0] …, [CHOICE]) are single private-use characters
(``TokenConstraint`` maps their ids to them), so a special token can only be generated where the grammar has it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from qground.taxonomy import CLASS_NAMES, MAX_PHRASE_WORDS, match_class, normalize
from qground.tokens import SegTokens

__all__ = [
    "asked_classes",
    "LOCATIONS",
    "QUALITIES",
    "SEVERITIES",
    "Finding",
    "Grammar",
    "TokenConstraint",
    "comparison_grammar",
    "describe_answer",
    "quality_word",
    "single_image_grammar",
    "yes_no_answer",
]

SEVERITIES = ("mild", "moderate", "severe")
QUALITIES = ("excellent", "good", "fair", "poor", "bad")
# ``qground.visualize.region_location``'s words (its "nowhere" is never said: a finding has a region)
LOCATIONS = (
    "the whole image",
    "most of the image",
    "the center",
    "the top",
    "the bottom",
    "the left side",
    "the right side",
    "the upper left",
    "the upper right",
    "the lower left",
    "the lower right",
)
CLEAN_DESCRIPTION = "The image has no obvious distortion."
CLEAN_GROUNDING = "There is no obvious distortion in the image."
GROUNDING_LEAD = "The segmentation results are: "


@dataclass(frozen=True)
class Finding:
    """One distortion of an image in words: class name, severity 1–3 (mild … severe), ``where`` (one of
    ``LOCATIONS``)."""

    cls: str
    severity: int
    where: str

    def __post_init__(self) -> None:
        if self.cls not in CLASS_NAMES or not 1 <= self.severity <= 3 or self.where not in LOCATIONS:
            raise ValueError(f"not a finding the grammar can say: {self}")

    def text(self) -> str:
        return f"{SEVERITIES[self.severity - 1]} {self.cls} in {self.where}"


def quality_word(total: float) -> str:
    """The overall quality from the sum over classes of severity × covered fraction (0 = no distortion)."""
    if total == 0:
        return "excellent"
    return "good" if total < 0.1 else "fair" if total < 0.4 else "poor" if total < 1.0 else "bad"


def describe_answer(findings: Sequence[Finding], quality: str) -> str:
    """The description: every finding in taxonomy order, then the overall quality (one of ``QUALITIES``)."""
    if quality not in QUALITIES:
        raise ValueError(f"quality must be one of {QUALITIES}, got {quality!r}")
    ordered = sorted(findings, key=lambda f: CLASS_NAMES.index(f.cls))
    if len({f.cls for f in ordered}) != len(ordered):
        raise ValueError("a description names each class once")
    items = [f.text() for f in ordered]
    if not items:
        body = CLEAN_DESCRIPTION
    else:
        listing = items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
        body = f"The image has {listing}."
    return f"{body} Overall, its quality is {quality}."


def yes_no_answer(asked: str, findings: Sequence[Finding], quality: str) -> str:
    """The answer to "is there ``asked``?": ``Yes.`` or ``No, there is no {asked}.``, then the description."""
    lead = "Yes." if any(f.cls == asked for f in findings) else f"No, there is no {asked}."
    return f"{lead} {describe_answer(findings, quality)}"


# -- the automaton ----------------------------------------------------------------------------------------------------
class Grammar:
    """A regular language over characters, built as a graph of literal edges and run as a lazily built DFA.

    Nodes are ints; ``edge(a, text, b)`` reads ``text`` from a to b (empty text: a free move). ``start`` and
    ``accept`` are nodes. DFA states are frozensets of (node, offset-into-edge) positions, closed under free moves.
    """

    def __init__(self) -> None:
        self._edges: list[tuple[int, str, int]] = []
        self._out: dict[int, list[int]] = {}
        self._nodes = 0
        self.start = self.node()
        self.accept = self.node()
        self._steps: dict[tuple[frozenset, str], frozenset] = {}

    def node(self) -> int:
        self._nodes += 1
        return self._nodes - 1

    def edge(self, a: int, text: str, b: int) -> None:
        self._out.setdefault(a, []).append(len(self._edges))
        self._edges.append((a, text, b))

    def choice(self, a: int, texts: Sequence[str], b: int) -> None:
        for text in texts:
            self.edge(a, text, b)

    def _close(self, nodes: set[int]) -> frozenset:
        """Positions at the start of every edge out of ``nodes`` and their free-move successors; node -1 marks
        acceptance."""
        todo, seen, out = list(nodes), set(), set()
        while todo:
            n = todo.pop()
            if n in seen:
                continue
            seen.add(n)
            if n == self.accept:
                out.add((-1, 0))
            for e in self._out.get(n, ()):
                if self._edges[e][1]:
                    out.add((e, 0))
                else:
                    todo.append(self._edges[e][2])
        return frozenset(out)

    def initial(self) -> frozenset:
        return self._close({self.start})

    def step(self, state: frozenset, char: str) -> frozenset:
        """The state after reading ``char``; empty when the text leaves the language."""
        key = (state, char)
        if key not in self._steps:
            nodes, inside = set(), set()
            for e, k in state:
                if e < 0:
                    continue
                text = self._edges[e][1]
                if text[k] == char:
                    if k + 1 == len(text):
                        nodes.add(self._edges[e][2])
                    else:
                        inside.add((e, k + 1))
            self._steps[key] = frozenset(inside) | self._close(nodes)
        return self._steps[key]

    def read(self, state: frozenset, text: str) -> frozenset:
        for char in text:
            if not state:
                break
            state = self.step(state, char)
        return state

    @staticmethod
    def accepts(state: frozenset) -> bool:
        return (-1, 0) in state

    def matches(self, text: str) -> bool:
        return self.accepts(self.read(self.initial(), text))


SEG_CHAR0 = 0xE000  # [SEGk] is chr(SEG_CHAR0 + k) for the automaton
CHOICE_CHAR = chr(0xE100)


def _seg_group(seg: SegTokens) -> str:
    return " ".join(chr(SEG_CHAR0 + k) for k in range(seg.count))


def asked_classes(question: str) -> frozenset[str]:
    """The distortion classes a question names (``taxonomy.match_class`` over spans of up to ``MAX_PHRASE_WORDS``
    words: "Is it blurry?" → {"blur"}, "any camera shake?" → {"jitter"}, "What do you think?" → none)."""
    words = normalize(question).split()
    found = set()
    for n in range(MAX_PHRASE_WORDS, 0, -1):
        for i in range(len(words) - n + 1):
            name = match_class(" ".join(words[i : i + n]))
            if name is not None:
                found.add(name)
    return frozenset(found)


def single_image_grammar(
    seg: SegTokens | None = None, present: frozenset[str] | None = None, asked: frozenset[str] | None = None
) -> Grammar:
    """Every one-image answer of the module docstring (grounding, or an optional yes/no lead and a description).

    ``present`` (None: any classes): the classes the answer names, all of them in taxonomy order, as the model's
    readout found them; with none the answer says there is no obvious distortion. ``asked`` (None: any): the
    classes the question names (``asked_classes``); a yes/no lead answers about those only: "Yes." needs one of them
    present, "No, there is no X." needs X asked and absent."""
    seg = seg or SegTokens()
    named = [i for i, name in enumerate(CLASS_NAMES) if present is None or name in present]
    g = Grammar()
    begin, describe, quality = g.node(), g.node(), g.node()
    g.choice(g.start, ("", " "), begin)
    # grounding: classes in taxonomy order, each once
    if present is None or not present:
        g.edge(begin, CLEAN_GROUNDING, g.accept)
    lead = g.node()
    if named:
        g.edge(begin, GROUNDING_LEAD, lead)
    after = {i: g.node() for i in named}
    exact = present is not None  # every present class is named, in taxonomy order

    def later(i: int) -> list[int]:  # the classes that may follow class i
        rest = [j for j in named if j > i]
        return rest[:1] if exact else rest

    for i in named:
        if not exact or i == named[0]:
            g.edge(lead, f"{CLASS_NAMES[i]} {_seg_group(seg)}", after[i])
        if not exact or i == named[-1]:
            g.edge(after[i], "", g.accept)
        for j in later(i):
            g.edge(after[i], f" , {CLASS_NAMES[j]} {_seg_group(seg)}", after[j])
    # description, after an optional yes/no lead
    g.edge(begin, "", describe)
    if (present is None or present) and (asked is None or asked & (CLASS_NAMES if present is None else present)):
        g.edge(begin, "Yes. ", describe)
    for name in CLASS_NAMES:
        if (present is None or name not in present) and (asked is None or name in asked):
            g.edge(begin, f"No, there is no {name}. ", describe)
    if present is None or not present:
        g.edge(describe, CLEAN_DESCRIPTION + " ", quality)
    items = g.node()
    if named:
        g.edge(describe, "The image has ", items)
    first, middle, last = ({i: g.node() for i in named} for _ in range(3))  # after an item of class i
    for i in named:
        if not exact or i == named[0]:
            _item(g, items, i, first[i])
        if not exact or i == named[-1]:
            g.edge(first[i], ". ", quality)
            g.edge(last[i], ". ", quality)
        for j in later(i):
            for src in (first[i], middle[i]):
                if j != named[-1]:  # a middle item needs a later class to follow it
                    _item(g, _joined(g, src, ", "), j, middle[j])
                if not exact or j == named[-1]:  # the last item closes the list
                    _item(g, _joined(g, src, " and "), j, last[j])
    end = g.node()
    g.edge(quality, "Overall, its quality is ", end)
    g.choice(end, [f"{q}." for q in QUALITIES], g.accept)
    return g


def _joined(g: Grammar, src: int, joint: str) -> int:
    n = g.node()
    g.edge(src, joint, n)
    return n


def _item(g: Grammar, src: int, cls: int, dst: int) -> None:
    """``{severity} {class} in {location}`` from ``src`` to ``dst``."""
    sev, loc = g.node(), g.node()
    g.choice(src, [f"{s} " for s in SEVERITIES], sev)
    g.edge(sev, f"{CLASS_NAMES[cls]} in ", loc)
    g.choice(loc, LOCATIONS, dst)


def comparison_grammar() -> Grammar:
    """The one answer to a question about several images: ``The [CHOICE] image.``."""
    g = Grammar()
    begin = g.node()
    g.choice(g.start, ("", " "), begin)
    g.edge(begin, f"The {CHOICE_CHAR} image.", g.accept)
    return g


class TokenConstraint:
    """Which tokens may come next under a ``Grammar``: token texts are decoded once, and each DFA state's (V,) mask of
    allowed ids is computed once and cached. End of sequence is allowed exactly where the grammar accepts.

    ``token_texts[i]``: the text token i adds to the answer (special tokens: their automaton character; None: never
    allowed); ``eos``: the end-of-sequence id.
    """

    def __init__(self, grammar: Grammar, token_texts: Sequence[str | None], eos: int) -> None:
        self.grammar = grammar
        self.texts = list(token_texts)
        self.eos = eos
        self._masks: dict[frozenset, torch.Tensor] = {}
        self._forced: dict[frozenset, int | None] = {}

    @classmethod
    def for_tokenizer(cls, grammar: Grammar, tokenizer, token_ids, vocab_size: int):
        """From a tokenizer and the config's ``token_ids`` (``seg``: list of seg ids, ``choice``, ``eos``)."""
        special = {i: chr(SEG_CHAR0 + k) for k, i in enumerate(token_ids.seg)}
        if token_ids.choice >= 0:
            special[token_ids.choice] = CHOICE_CHAR
        texts: list[str | None] = []
        for i in range(vocab_size):
            if i in special:
                texts.append(special[i])
            elif i < len(tokenizer) and i not in tokenizer.all_special_ids:
                text = tokenizer.decode([i], clean_up_tokenization_spaces=False)
                texts.append(text if text and "\ufffd" not in text else None)
            else:
                texts.append(None)
        return cls(grammar, texts, token_ids.eos)

    def start(self) -> frozenset:
        return self.grammar.initial()

    def mask(self, state: frozenset) -> torch.Tensor:
        """(V,) bool: the tokens allowed after ``state``."""
        if state not in self._masks:
            allowed = torch.zeros(len(self.texts), dtype=torch.bool)
            for i, text in enumerate(self.texts):
                if text is not None and self.grammar.read(state, text):
                    allowed[i] = True
            allowed[self.eos] = self.grammar.accepts(state)
            self._masks[state] = allowed
        return self._masks[state]

    def advance(self, state: frozenset, token: int) -> frozenset:
        return state if token == self.eos else self.grammar.read(state, self.texts[token])

    def forced(self, state: frozenset) -> int | None:
        """The one token allowed after ``state``, or None when the grammar leaves a choice (or none)."""
        if state not in self._forced:
            allowed = torch.nonzero(self.mask(state)).flatten().tolist()
            self._forced[state] = allowed[0] if len(allowed) == 1 else None
        return self._forced[state]
