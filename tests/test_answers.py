"""The answer grammar: what training writes is in it, what is not finished is not, and decoding held to it gives
finished sentences whatever the weights, question or sampling."""

import numpy as np
import pytest
from PIL import Image

from qground.answers import (
    LOCATIONS,
    Finding,
    comparison_grammar,
    describe_answer,
    quality_word,
    single_image_grammar,
    yes_no_answer,
)
from qground.builder import build_from_registry
from qground.evaluate import is_finished_sentence, named_classes
from qground.inference import GenerationSettings, QGroundEngine
from qground.policy import InferencePolicy
from qground.processor import QGroundProcessor
from qground.prompts import Turn, grounding_answer
from qground.taxonomy import CLASS_NAMES
from qground.tokens import SegTokens

GRAMMAR = single_image_grammar()


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
    seg = SegTokens()
    grounded = grounding_answer(["blur", "noise"], seg.group_text())
    for k, token in enumerate(seg.strings):
        grounded = grounded.replace(token, chr(0xE000 + k))
    assert GRAMMAR.matches(grounded) and GRAMMAR.matches(grounding_answer([], ""))
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


def test_free_decoding_stays_the_default(random_nano):
    engine = QGroundEngine(random_nano.model, random_nano.processor, "random nano")
    assert engine.constraint(1) is None and random_nano.constraint(1) is not None
    assert random_nano.constraint(3) is random_nano.constraint(2)  # compiled once per grammar
