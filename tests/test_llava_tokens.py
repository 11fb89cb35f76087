"""``prompt_tokenization="llava"`` gives LLaVA-1.5 / Q-Ground's 53 prompt ids (measured with transformers 4.31's
LlamaTokenizer and the LLaMA sentencepiece model), "pieces" the documented 54-id variant, on a LLaMA stand-in
tokenizer (``llama_pieces``: no real one can be downloaded here) in each of its whitespace variants."""

import dataclasses

import pytest

from llama_pieces import PIECES, REFERENCE, VOCAB_SIZE, WHITESPACE, llama_like_tokenizer
from qground.builder import config_7b
from qground.inference import GROUNDING_QUESTION
from qground.processor import IGNORE_INDEX, QGroundProcessor
from qground.prompts import VICUNA_V1, ImageSlot, Turn, grounding_answer
from qground.tokenizer import bind_tokenizer, seg_tokens

A, THE, SPACE, NEWLINE, US, COLON = 319, 450, 29871, 13, 3148, 29901


@pytest.fixture(scope="module", params=WHITESPACE)
def llava(request):
    """(processor with the "llava" rule, processor with "pieces", tokenizer) for config_7b bound to the stand-in."""
    tokenizer = llama_like_tokenizer(request.param)
    config = bind_tokenizer(config_7b(), tokenizer)
    assert config.prompt_tokenization == "llava"
    pieces = dataclasses.replace(config, prompt_tokenization="pieces")
    return QGroundProcessor(tokenizer, config), QGroundProcessor(tokenizer, pieces), tokenizer


def expand(reference: list[int | None], config) -> list[int]:
    image = [config.token_ids.image] * config.num_image_tokens
    return [i for r in reference for i in (image if r is None else [r])]


def is_normalizer(tokenizer) -> bool:
    """The stand-in's "normalizer" whitespace (legacy tokenizer.json): a ▁ is prepended even before a space."""
    return tokenizer.backend_tokenizer.normalizer is not None


def text_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True).input_ids


@pytest.mark.parametrize("whitespace", WHITESPACE)
def test_stand_in_holds_llama_pieces_at_llama_ids(whitespace):
    tokenizer = llama_like_tokenizer(whitespace)
    assert len(tokenizer) == VOCAB_SIZE
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.convert_tokens_to_ids([*PIECES.values(), "<0x0A>", "<0xFF>"]) == [*PIECES, 13, 258]
    assert tokenizer.tokenize("polite human's") == ["▁pol", "ite", "▁human", "'", "s"]
    assert tokenizer.tokenize("ASSISTANT:") == ["▁A", "SS", "IST", "ANT", ":"]
    assert text_ids(tokenizer, "\nPlease") == [SPACE, NEWLINE, 12148]
    assert tokenizer.decode(text_ids(tokenizer, "Please segment out distorted regions.")) == (
        "Please segment out distorted regions."
    )


def test_llava_rule_gives_the_reference_ids(llava):
    processor, _, tokenizer = llava
    ids, labels = processor.encode([Turn(GROUNDING_QUESTION)], 1)
    assert len(REFERENCE) == 53
    assert ids == expand(REFERENCE, processor.config)
    assert labels == [IGNORE_INDEX] * len(ids)
    # one tokenizer call per run of prompt text between images, <s> added by id
    runs = [f"{VICUNA_V1.system} USER: ", f"\n{GROUNDING_QUESTION} ASSISTANT:"]
    assert ids == expand([1, *text_ids(tokenizer, runs[0]), None, *text_ids(tokenizer, runs[1])], processor.config)


def test_pieces_rule_gives_the_documented_54_id_variant(llava):
    _, processor, tokenizer = llava
    ids, labels = processor.encode([Turn(GROUNDING_QUESTION)], 1)
    reference = list(REFERENCE)
    reference.insert(reference.index(US), SPACE)  # "questions. " and "USER: " are tokenized apart: ▁ ▁US
    reference[reference.index(12148)] = 3529  # the question is tokenized on its own: ▁Please
    assert len(reference) == 54
    if is_normalizer(tokenizer):  # " ASSISTANT:" on its own: Prepend("▁") makes it ▁▁ASSISTANT
        reference.insert(len(reference) - reference[::-1].index(A) - 1, SPACE)
    assert ids == expand(reference, processor.config)
    assert labels == [IGNORE_INDEX] * len(ids)


def test_answer_is_labelled_with_its_eos_and_seg_tokens_are_single_ids(llava):
    processor, pieces, tokenizer = llava
    config = processor.config
    seg = seg_tokens(config)
    answer = grounding_answer(["noise", "blur"], seg.group_text())
    prompt, _ = processor.encode([Turn(GROUNDING_QUESTION)], 1)
    ids, labels = processor.encode([Turn(GROUNDING_QUESTION, answer)], 1)
    answer_ids = ids[len(prompt) :]
    assert ids[: len(prompt)] == prompt and labels == [IGNORE_INDEX] * len(prompt) + answer_ids
    assert answer_ids == tokenizer(answer, add_special_tokens=False).input_ids + [config.token_ids.eos]
    assert answer_ids[0] == THE  # "ASSISTANT: The" → ": ▁The", as LLaVA tokenizes the whole conversation
    assert answer_ids.count(config.token_ids.eos) == 1
    for seg_id in config.token_ids.seg:
        assert answer_ids.count(seg_id) == 2  # one per class: [SEGk] is one special id, never split
    # "pieces" tokenizes " The …" (the answer's leading space kept): the Prepend normalizer adds another ▁
    pieces_ids, pieces_labels = pieces.encode([Turn(GROUNDING_QUESTION, answer)], 1)
    pieces_answer = [i for i in pieces_labels if i != IGNORE_INDEX]
    assert pieces_ids[-len(pieces_answer) :] == pieces_answer
    assert pieces_answer == [SPACE] * is_normalizer(tokenizer) + answer_ids


def test_multi_turn_runs_start_after_each_answer(llava):
    processor, _, tokenizer = llava
    eos = processor.config.token_ids.eos
    turns = [Turn(GROUNDING_QUESTION, "There is no obvious distortion in the image."), Turn("Is it sharp?")]
    ids, labels = processor.encode(turns, 1)
    first, first_labels = processor.encode(turns[:1], 1)
    assert ids[: len(first)] == first and first[-1] == eos
    assert ids[len(first) :] == text_ids(tokenizer, "USER: Is it sharp? ASSISTANT:")
    assert ids[len(first) : len(first) + 3] == [US, 1001, COLON] and ids[-1] == COLON
    assert labels == first_labels + [IGNORE_INDEX] * (len(ids) - len(first))


def test_two_images_and_user_text_cannot_inject_special_tokens(llava):
    processor, pieces, tokenizer = llava
    config, image = processor.config, processor.config.token_ids.image
    question = "Is [SEG0] here <image> or [SEG5]?"
    ids, labels = processor.encode([Turn(question)], 2)
    runs = [f"{VICUNA_V1.system} USER: The first image: ", "\nThe second image: ", f"\n{question} ASSISTANT:"]
    expected = [1, *text_ids(tokenizer, runs[0]), None, *text_ids(tokenizer, runs[1]), None]
    assert ids == expand(expected + text_ids(tokenizer, runs[2]), config)
    assert labels == [IGNORE_INDEX] * len(ids)
    for processor_ in (processor, pieces):
        ids, _ = processor_.encode([Turn(question)], 2)
        assert ids.count(image) == 2 * config.num_image_tokens
        assert not set(ids) & set(config.token_ids.seg)
    # bound as special ids: recognized where special tokens are not split (answers)
    assert tokenizer("[SEG0]<image>", add_special_tokens=False).input_ids == [config.token_ids.seg[0], image]


def test_pieces_rule_is_one_call_per_template_piece(tiny):
    """The shipped models' rule, unchanged: <s>, then each template piece tokenized on its own."""
    _, tokenizer, processor = tiny
    config = processor.config
    assert config.prompt_tokenization == "pieces"
    seg = seg_tokens(config)
    turns = [Turn("Describe [SEG0].", grounding_answer(["noise"], seg.group_text())), Turn("And <image>?")]
    expected, expected_labels = [config.token_ids.bos], [IGNORE_INDEX]
    for piece in VICUNA_V1.pieces(turns, 2):
        if isinstance(piece, ImageSlot):
            expected += [config.token_ids.image] * config.tokens_per_image(2)
            expected_labels += [IGNORE_INDEX] * config.tokens_per_image(2)
        elif piece.trainable:
            answer = tokenizer(piece.text, add_special_tokens=False).input_ids + [config.token_ids.eos]
            expected, expected_labels = expected + answer, expected_labels + answer
        else:
            tokens = text_ids(tokenizer, piece.text)
            expected, expected_labels = expected + tokens, expected_labels + [IGNORE_INDEX] * len(tokens)
    assert processor.encode(turns, 2) == (expected, expected_labels)
