"""The answer grammar: what training writes is in it, what is not finished is not, and decoding held to it gives
finished sentences whatever the weights, question or sampling."""

import numpy as np
import pytest
import torch
from PIL import Image

from qground.answers import (
    LOCATIONS,
    Finding,
    TokenConstraint,
    asked_classes,
    comparison_grammar,
    describe_answer,
    quality_word,
    single_image_grammar,
    yes_no_answer,
)
from qground.builder import build_from_registry
from qground.evaluate import is_finished_sentence, named_classes
from qground.inference import GenerationSettings, QGroundEngine, decode
from qground.policy import InferencePolicy
from qground.processor import QGroundProcessor
from qground.prompts import Turn, grounding_answer
from qground.taxonomy import CLASS_NAMES
from qground.tokens import SegTokens

GRAMMAR = single_image_grammar()


def _grounded(classes: list[str]) -> str:
    """A grounding answer as the automaton reads it ([SEGk] as private-use characters)."""
    seg = SegTokens()
    text = grounding_answer(classes, seg.group_text())
    for k, token in enumerate(seg.strings):
        text = text.replace(token, chr(0xE000 + k))
    return text


def _findings(rng: np.random.Generator) -> list[Finding]:
    classes = rng.choice(CLASS_NAMES, size=int(rng.integers(0, 6)), replace=False)
    return [Finding(str(c), int(rng.integers(1, 4)), str(rng.choice(LOCATIONS))) for c in classes]


def test_every_built_answer_is_in_the_grammar_and_finished():
    rng = np.random.default_rng(0)
    for _ in range(200):
        found = _findings(rng)
        quality = quality_word(float(rng.random()) * len(found))
        asked = str(rng.choice(CLASS_NAMES))
        for text in (describe_answer(found, quality), yes_no_answer(asked, found, quality)):
            assert GRAMMAR.matches(text) and GRAMMAR.matches(" " + text), text
            assert is_finished_sentence(text), text
            assert named_classes(text) == {f.cls for f in found}, text  # the evaluation reads what was meant
    assert GRAMMAR.matches(_grounded(["blur", "noise"])) and GRAMMAR.matches(grounding_answer([], ""))
    assert comparison_grammar().matches(" The \ue100 image.")


@pytest.mark.parametrize(
    "text",
    [
        "There is",
        "The.",
        ".",
        "The image has",
        "The image has no obvious distortion. Overall, its quality is",
        "The image has mild blur in the top, moderate noise in the center. Overall, its quality is bad.",  # no "and"
        "The image has mild noise in the top and mild blur in the center. Overall, its quality is bad.",  # order
        "The image has mild blur in the top and mild blur in the center. Overall, its quality is bad.",  # twice
        "Yes. Yes. The image has no obvious distortion. Overall, its quality is good.",
    ],
)
def test_unfinished_or_malformed_answers_are_not_in_the_grammar(text):
    assert not GRAMMAR.matches(text)


def test_builders_refuse_what_the_grammar_cannot_say():
    with pytest.raises(ValueError):
        Finding("haze", 1, "the top")
    with pytest.raises(ValueError):
        Finding("blur", 4, "the top")
    with pytest.raises(ValueError):
        describe_answer([Finding("blur", 1, "the top"), Finding("blur", 2, "the center")], "fair")


@pytest.fixture(scope="module")
def random_nano():
    model, tokenizer = build_from_registry("qground-nano")
    engine = QGroundEngine(model, QGroundProcessor(tokenizer, model.config), "random nano")
    engine.set_policy(InferencePolicy(constrained_answers=True))
    return engine


QUESTIONS = ["Describe the quality of this image.", "blurry??", "What's up with the colours", "", "Rate it 1-10"]


@pytest.mark.parametrize("temperature", [0.0, 1.5])
def test_decoding_held_to_the_grammar_finishes_every_answer_of_a_random_model(random_nano, temperature):
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (96, 128, 3), dtype=np.uint8))
    for seed, question in enumerate(QUESTIONS):
        settings = GenerationSettings(max_new_tokens=1024, temperature=temperature, seed=seed)
        result = random_nano.ground(image, question or "?", settings)
        raw = result.raw_text
        for k, token in enumerate(SegTokens().strings):
            raw = raw.replace(token, chr(0xE000 + k))
        assert GRAMMAR.matches(raw), (question, result.raw_text)
        assert result.token_ids[-1] == random_nano.config.token_ids.eos
        assert is_finished_sentence(result.text), result.text  # a grounding answer gets its full stop on display
    pair = random_nano.chat([image, image], [Turn("which is the best exposed")], GenerationSettings(temperature=1.5))
    assert pair.text in ("The first image.", "The second image."), pair.text


@pytest.mark.parametrize("question", ["Please segment out distorted regions in the image.", "Is it blurry?"])
def test_tokens_the_grammar_forces_are_read_in_one_pass(random_nano, monkeypatch, question):
    """Greedy decoding held to the grammar feeds a token and every token the grammar then forces in one forward pass:
    each token's state is still the full teacher-forced pass's, with one pass per choice the grammar leaves."""
    model = random_nano.model
    image = Image.fromarray(np.random.default_rng(2).integers(0, 255, (96, 128, 3), dtype=np.uint8))
    sample = random_nano.processor([image], [Turn(question)])
    ids, features = sample["input_ids"][None], random_nano.encode(sample, 0.0)
    constraint = random_nano.constraint(1)
    passes, forward = [], model.language_model.forward
    monkeypatch.setattr(model.language_model, "forward", lambda *a, **k: passes.append(1) or forward(*a, **k))
    steps = list(decode(model, ids, features, GenerationSettings(max_new_tokens=512), constraint))
    tokens = [t for t, *_ in steps]
    state, chosen = constraint.start(), 0  # tokens the grammar left a choice for, end of sequence aside
    for token in tokens:
        chosen += constraint.forced(state) is None and token != constraint.eos
        state = constraint.advance(state, token)
    assert tokens[-1] == constraint.eos and len(passes) == 1 + chosen < len(tokens)  # the prompt, then one per choice
    monkeypatch.setattr(model.language_model, "forward", forward)
    full = torch.cat([ids, torch.tensor([tokens])], dim=1)
    with torch.inference_mode():
        hidden = model.language_model(inputs_embeds=model.embed(full, features.tokens)).last_hidden_state[0]
    for i, (_, state, _) in enumerate(steps):
        assert torch.allclose(state, hidden[ids.shape[1] - 1 + i], atol=1e-4), i


def test_free_decoding_stays_the_default(random_nano):
    engine = QGroundEngine(random_nano.model, random_nano.processor, "random nano")
    assert engine.constraint(1) is None and random_nano.constraint(1) is not None
    assert random_nano.constraint(3) is random_nano.constraint(2)  # compiled once per grammar


def _reachable_states(constraint, limit: int = 20000):
    """Every grammar state decoding can reach, following each allowed token (breadth first, up to ``limit``)."""
    seen, todo = set(), [constraint.start()]
    while todo and len(seen) < limit:
        state = todo.pop()
        if state in seen:
            continue
        seen.add(state)
        todo += [constraint.advance(state, i) for i in constraint.mask(state).nonzero().flatten().tolist()]
    return seen


@pytest.mark.parametrize(
    ("present", "asked"),
    [(None, None), (frozenset(), frozenset()), (frozenset({"blur", "noise"}), frozenset({"jitter"})),
     (frozenset(CLASS_NAMES), frozenset({"blur"})), (frozenset({"noise"}), None),
     (frozenset({"blur", "low light", "noise"}), None)],
)  # fmt: skip
def test_decoding_never_reaches_a_dead_end(random_nano, present, asked):
    """From every reachable state some token is allowed, or the answer is complete (end of sequence)."""
    model = random_nano.model
    grammar = single_image_grammar(None, present, asked)
    constraint = TokenConstraint.for_tokenizer(
        grammar, random_nano.tokenizer, model.config.token_ids, model.config.llm.vocab_size
    )
    assert all(constraint.mask(state).any() for state in _reachable_states(constraint))


def test_answers_follow_what_the_readout_finds_and_what_was_asked():
    """With the readout's classes, the answer names exactly those, in taxonomy order (no "no obvious distortion" when
    it finds some); a yes/no lead answers about the classes the question names only."""
    found = [Finding("noise", 2, "the center")]
    grammar = single_image_grammar(None, frozenset({"noise"}), asked_classes("Is it blurry?"))
    assert grammar.matches("No, there is no blur. " + describe_answer(found, "fair"))
    assert grammar.matches(describe_answer(found, "fair"))
    for wrong in (
        "Yes. " + describe_answer(found, "fair"),  # blur was asked and is absent
        "No, there is no jitter. " + describe_answer(found, "fair"),  # jitter was not asked
        describe_answer([Finding("blur", 2, "the top")], "fair"),  # not found by the readout
        describe_answer([], "excellent"),  # the readout found noise
        grounding_answer([], ""),
    ):
        assert not grammar.matches(wrong), wrong
    two = single_image_grammar(None, frozenset({"blur", "noise"}))
    both = [Finding("blur", 3, "the top"), *found]
    assert two.matches(describe_answer(both, "poor")) and two.matches(_grounded(["blur", "noise"]))
    for part in (found, both[:1]):  # one of the two found classes left out
        assert not two.matches(describe_answer(part, "fair"))
        assert not two.matches(_grounded([f.cls for f in part]))
    clean = single_image_grammar(None, frozenset(), frozenset())
    assert clean.matches(describe_answer([], "excellent")) and clean.matches(grounding_answer([], ""))
    assert not clean.matches("Yes. " + describe_answer([], "excellent"))
    assert asked_classes("any camera shake?") == {"jitter"} and not asked_classes("What do you think of it?")


def test_a_random_model_names_exactly_what_its_readout_finds(random_nano):
    from qground.config import ConfigError

    engine = QGroundEngine(random_nano.model, random_nano.processor, "random nano")
    with pytest.raises(ConfigError, match="answers_follow_readout needs constrained_answers"):
        engine.set_policy(InferencePolicy(answers_follow_readout=True))
    engine.set_policy(InferencePolicy(constrained_answers=True, answers_follow_readout=True))
    image = Image.fromarray(np.random.default_rng(2).integers(0, 255, (96, 128, 3), dtype=np.uint8))
    sample = engine.processor([image], [Turn("?")])
    present = engine.encode(sample, 0.0).present[0]
    found = {name for name, on in zip(CLASS_NAMES, present.tolist(), strict=True) if on}
    for question in ("Describe the quality of this image.", "Please segment out distorted regions in the image."):
        result = engine.ground(image, question, GenerationSettings(max_new_tokens=1024))
        assert named_classes(result.text) == found and set(result.masks) <= found, (found, result.text)
        assert is_finished_sentence(result.text)
