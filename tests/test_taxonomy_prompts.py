import pytest

from qground.prompts import VICUNA_V1, ImageSlot, Piece, Turn
from qground.taxonomy import CLASS_NAMES, DISTORTION_COLORS, edit_distance, get, match_class


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("blurry", "blur"),
        ("Blur", "blur"),
        ("bluer", "blur"),
        ("out-of-focus", "blur"),
        ("low-light", "low light"),
        ("low_light", "low light"),
        ("lowlight", "low light"),
        ("low lihgt", "low light"),
        ("over exposure", "overexposure"),
        ("over-exposed", "overexposure"),
        ("overexposre", "overexposure"),
        ("jittering", "jitter"),
        ("jiter", "jitter"),
        ("motion blur", "jitter"),
        ("noisy", "noise"),
        ("nosie", "noise"),
        ("Noise.", "noise"),
    ],
)
def test_match_class_variants_and_typos(word, expected):
    assert match_class(word) == expected


def test_match_class_empty_and_threshold():
    assert match_class("") is None
    assert match_class("  ,. ") is None
    assert match_class("spaceship") is None


def test_edit_distance():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("", "abc") == 3
    assert edit_distance("same", "same") == 0


def test_taxonomy_is_complete_and_colors_distinct():
    assert CLASS_NAMES == ("blur", "jitter", "overexposure", "low light", "noise")
    assert len(set(DISTORTION_COLORS.values())) == 5
    assert get("low_light").name == "low light"
    with pytest.raises(KeyError, match="unknown distortion"):
        get("haze")


def test_vicuna_pieces_single_and_multi_image():
    pieces = VICUNA_V1.pieces([Turn("Is it sharp?", "Yes."), Turn("Why?")], num_images=1)
    text = "".join("<image>" if isinstance(p, ImageSlot) else p.text for p in pieces)
    assert text.startswith(VICUNA_V1.system + " USER: <image>\nIs it sharp? ASSISTANT: Yes.USER: Why? ASSISTANT:")
    assert [p.text for p in pieces if isinstance(p, Piece) and p.trainable] == [" Yes."]
    assert [p.text for p in pieces if isinstance(p, Piece) and p.user] == ["Is it sharp?", "Why?"]
    multi = VICUNA_V1.pieces([Turn("Which is better?")], num_images=3)
    text = "".join("<image>" if isinstance(p, ImageSlot) else p.text for p in multi)
    assert "The first image: <image>\nThe second image: <image>\nThe third image: <image>\nWhich is better?" in text


def test_only_last_turn_may_be_open():
    with pytest.raises(ValueError, match="only the last turn"):
        VICUNA_V1.pieces([Turn("a"), Turn("b")], num_images=1)
