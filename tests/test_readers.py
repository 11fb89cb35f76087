"""The real-format readers on committed fixtures (tests/fixtures/make_fixtures.py), problem counting, layout errors,
COCO RLE and the mixture sampler."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qground.inference import GROUNDING_QUESTION
from qground.prompts import Turn, grounding_answer
from qground.records import decode_rle, mask_to_rle, rle_from_string, rle_to_string
from qground.tokens import SegTokens
from training.data.readers import (
    GROUNDING_QUESTIONS,
    MixtureSampler,
    grounding_question,
    label_to_class,
    read_coinstruct,
    read_llava_instruct,
    read_llava_pretrain,
    read_qground100k,
)
from training.data.sample import DataFormatError

FIXTURES = Path(__file__).parent / "fixtures"
PRETRAIN = FIXTURES / "llava_pretrain"
INSTRUCT = FIXTURES / "llava_instruct"
QGROUND = FIXTURES / "qground100k"
COINSTRUCT = FIXTURES / "coinstruct"
GROUP = SegTokens().group_text()


def box(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros((h, w), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def load_mask(path: Path) -> np.ndarray:
    return np.array(Image.open(path)) > 0


def write_records(path: Path, records: list) -> Path:
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def chat(*pairs: str) -> list[dict]:
    """LLaVA conversation from alternating human/gpt texts."""
    return [{"from": ("human", "gpt")[k % 2], "value": text} for k, text in enumerate(pairs)]


# --------------------------------------------------------------------------------------------------------------------
# LLaVA family


def test_llava_pretrain_fixture():
    samples, report = read_llava_pretrain(PRETRAIN / "blip_laion_cc_sbu_558k.json", PRETRAIN / "images")
    assert (report.total, report.bad) == (3, 0)
    assert [s.id for s in samples] == ["004539375", "002239345", "001265630"]
    first = samples[0]
    assert first.images == [PRETRAIN / "images" / "00453" / "004539375.png"]
    assert first.turns == [
        Turn(
            "Render a clear and concise summary of the photo.",
            "select luxury furniture 3 - inch gel memory foam mattress topper",
        )
    ]
    assert first.masks == [] and first.source == "llava_pretrain"
    assert all(path.is_file() for s in samples for path in s.images)


def test_llava_instruct_fixture_placeholder_positions_roles_and_text_only():
    samples, report = read_llava_instruct(INSTRUCT / "llava_instruct_150k.json", INSTRUCT / "images")
    assert report.bad == 0
    before, after, text_only = samples
    assert before.images == [INSTRUCT / "images" / "000000033471.png"]
    assert before.turns == [
        Turn("What are the colors of the bus in the image?", "The bus in the image is white and red."),
        Turn("What feature can be seen on the back of the bus?", "The back of the bus features an advertisement."),
    ]
    assert after.turns[0] == Turn(
        "Where is the cat positioned in the image?", "The cat is on top of the back of the couch."
    )
    assert len(after.turns) == 3  # "user"/"assistant" roles
    assert text_only.images == [] and len(text_only.turns) == 2
    assert all("<image>" not in t.question for s in samples for t in s.turns)
    assert {s.source for s in samples} == {"llava_instruct"}


def test_coinstruct_fixture_single_and_multi_image_keep_order():
    samples, report = read_coinstruct(COINSTRUCT / "coinstruct.json", COINSTRUCT / "images")
    assert report.bad == 0
    single, pair, triple = samples
    assert [p.name for p in single.images] == ["single_a.png"]
    assert single.turns[0].question == "How is the clarity of this image?"
    assert [p.name for p in pair.images] == ["pair_a.png", "pair_b.png"]
    assert pair.turns[0].question == "Which image has better quality?"  # headers and <|image|> removed
    assert pair.turns[1] == Turn("Why is the first image worse?", "It is underexposed, so the shadows lose detail.")
    assert [p.name for p in triple.images] == ["pair_c.png", "pair_a.png", "single_a.png"]
    assert triple.turns[0].question == "Which of the three images is the sharpest?"


def test_llava_readers_reject_image_lists_and_coinstruct_caps_them(tmp_path):
    record = {"id": "x", "image": ["a.png", "b.png"], "conversations": chat("<image>\n<image>\nq", "a")}
    path = write_records(tmp_path / "pairs.json", [record])
    with pytest.raises(DataFormatError, match=r"pairs\.json: record 0 \(id 'x'\): field 'image'"):
        read_llava_instruct(path, tmp_path)
    many = {"id": "y", "image": [f"{k}.png" for k in range(5)], "conversations": chat("q", "a")}
    _, report = read_coinstruct(write_records(tmp_path / "many.json", [many]), tmp_path, max_bad_fraction=1.0)
    assert report.counts() == {"too many images": 1}


def test_problems_are_counted_with_ids_and_files(tmp_path):
    image = "00453/004539375.png"
    records = [
        {"id": "good", "image": image, "conversations": chat("<image>\nq", "a")},
        {"id": "gone", "image": "nowhere/lost.png", "conversations": chat("<image>\nq", "a")},
        {"id": "empty", "image": image, "conversations": []},
        {"id": "role", "image": image, "conversations": [{"from": "system", "value": "s"}, *chat("q", "a")]},
        {"id": "order", "image": image, "conversations": chat("q", "a", "q2")},
        {"id": "twice", "image": image, "conversations": chat("<image>\n<image>\nq", "a")},
        {"id": 7, "conversations": chat("q", "a")},  # text-only, integer id: fine
    ]
    path = write_records(tmp_path / "mixed.json", records)
    samples, report = read_llava_instruct(path, PRETRAIN / "images", max_bad_fraction=1.0)
    assert [s.id for s in samples] == ["good", "7"]
    assert report.counts() == {
        "missing image": 1,
        "empty conversation": 1,
        "unknown role": 1,
        "mismatched turns": 1,
        "placeholder mismatch": 1,
    }
    assert (report.total, report.bad, report.good) == (7, 5, 2)
    assert "record 1 (id 'gone')" in report.problems["missing image"][0]
    assert "nowhere/lost.png" in report.problems["missing image"][0]
    assert "'system'" in report.problems["unknown role"][0]
    summary = report.summary()
    assert "mixed.json" in summary and "2 of 7 records usable" in summary and "id 'order'" in summary


def test_bad_fraction_threshold(tmp_path):
    good = {"id": "g", "image": "00453/004539375.png", "conversations": chat("<image>\nq", "a")}
    bad = {"id": "lost-1", "image": "missing.png", "conversations": chat("<image>\nq", "a")}
    path = write_records(tmp_path / "data.json", [good] * 9 + [bad])
    samples, report = read_llava_pretrain(path, PRETRAIN / "images", max_bad_fraction=0.1)  # 10% is allowed
    assert len(samples) == 9 and report.bad == 1
    with pytest.raises(DataFormatError) as info:
        read_llava_pretrain(path, PRETRAIN / "images")  # default 1%
    message = str(info.value)
    assert "data.json" in message and "missing image: 1" in message and "id 'lost-1'" in message
    assert "max_bad_fraction=1.0%" in message
    with pytest.raises(DataFormatError, match="no records"):
        read_llava_pretrain(write_records(tmp_path / "none.json", []), tmp_path)
    with pytest.raises(ValueError, match="max_bad_fraction"):
        read_llava_pretrain(path, PRETRAIN / "images", max_bad_fraction=2.0)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"id": "a"}, r"top level must be a list"),
        ([["not", "a", "dict"]], r"record 0: expected a JSON object"),
        ([{"image": "a.png", "conversations": []}], r"record 0: field 'id'"),
        ([{"id": "a", "image": "a.png"}], r"record 0 \(id 'a'\): field 'conversations'"),
        ([{"id": "a", "conversations": ["hi"]}], r"field 'conversations\[0\]'"),
        ([{"id": "a", "conversations": [{"from": "human", "value": 3}]}], r"field 'conversations\[0\]\.value'"),
        ([{"id": "a", "image": 5, "conversations": []}], r"field 'image'"),
    ],
)
def test_llava_layout_errors_name_file_record_and_field(tmp_path, data, expected):
    path = tmp_path / "odd_layout.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"odd_layout\.json: .*" + expected):
        read_llava_instruct(path, tmp_path, max_bad_fraction=1.0)


def test_invalid_json_names_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("[{", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"broken\.json: not valid JSON"):
        read_llava_pretrain(path, tmp_path)


# --------------------------------------------------------------------------------------------------------------------
# QGround-100K


def test_qground100k_fixture():
    samples, report = read_qground100k(QGROUND / "qground_100k.json", QGROUND / "images")
    assert report.bad == 0
    by_id = {s.id: s for s in samples}
    assert list(by_id) == ["qg_0001", "qg_0002", "qg_0003", "qg_0004"]
    for s in samples:
        assert s.images == [QGROUND / "images" / f"{s.id}.png"] and s.source == "qground100k"
        assert len(s.turns) == 1 and s.turns[0].question == grounding_question(s.id)

    png = by_id["qg_0001"]  # "label" and "distortion" keys, PNG masks
    assert png.turns[0].answer == grounding_answer(["blur", "noise"], GROUP)
    assert png.masks == [QGROUND / "masks" / "qg_0001_0.png", QGROUND / "masks" / "qg_0001_1.png"]
    np.testing.assert_array_equal(load_mask(png.masks[0]), box(40, 48, 0, 20, 0, 24))
    np.testing.assert_array_equal(load_mask(png.masks[1]), box(40, 48, 20, 40, 24, 48))

    rle = by_id["qg_0002"]  # "category": "over-exposed", compressed RLE
    assert rle.turns[0].answer == grounding_answer(["overexposure"], GROUP)
    assert rle.masks[0].dtype == bool
    np.testing.assert_array_equal(rle.masks[0], box(32, 40, 4, 12, 10, 30))

    clean = by_id["qg_0003"]
    assert clean.turns[0].answer == grounding_answer([], GROUP) and clean.masks == []

    mixed = by_id["qg_0004"]  # uncompressed RLE ("low-light") then PNG ("jittery"), in ann order
    assert mixed.turns[0].answer == f"The segmentation results are: low light {GROUP} , jitter {GROUP}"
    np.testing.assert_array_equal(mixed.masks[0], box(32, 32, 0, 32, 0, 8))
    np.testing.assert_array_equal(load_mask(mixed.masks[1]), box(32, 32, 16, 32, 16, 32))


def test_grounding_question_is_stable_and_varied():
    assert GROUNDING_QUESTIONS[0] == GROUNDING_QUESTION
    assert grounding_question("qg_0001") == grounding_question("qg_0001")
    assert {grounding_question(f"img_{k}") for k in range(64)} == set(GROUNDING_QUESTIONS)


def test_label_to_class_words():
    assert label_to_class("Blurry") == "blur"
    assert label_to_class("over-exposed") == "overexposure"
    assert label_to_class("motion blur") == "jitter"
    assert label_to_class("none") is None  # not "noise", 2 edits away
    assert label_to_class("no visible distortion") is None
    assert label_to_class("spaceship") is None


def test_qground100k_problems(tmp_path):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 4)).save(tmp_path / "images" / "a.png")
    rle = {"size": [4, 8], "counts": [32]}
    records = [
        {"id": "ok", "image": "a.png", "ann_list": [{"label": "noise", "mask": rle}]},
        {"id": "far", "image": "a.png", "ann_list": [{"label": "spaceship", "mask": rle}]},
        {"id": "clean-word", "image": "a.png", "ann_list": [{"label": "no distortion", "mask": rle}]},
        {"id": "png", "image": "a.png", "ann_list": [{"label": "blur", "mask": "absent.png"}]},
        {"id": "short", "image": "a.png", "ann_list": [{"label": "blur", "mask": {"size": [4, 8], "counts": [5]}}]},
        {"id": "img", "image": "b.png", "ann_list": []},
    ]
    path = write_records(tmp_path / "qg.json", records)
    samples, report = read_qground100k(path, tmp_path / "images", max_bad_fraction=1.0)
    assert [s.id for s in samples] == ["ok"]
    assert report.counts() == {"unknown label": 2, "missing mask": 1, "bad mask": 1, "missing image": 1}
    assert "'spaceship'" in report.problems["unknown label"][0]
    assert "absent.png" in report.problems["missing mask"][0] and str(tmp_path / "masks") in report.summary()
    with pytest.raises(DataFormatError, match="unknown label: 2"):
        read_qground100k(path, tmp_path / "images")


@pytest.mark.parametrize(
    ("record", "field"),
    [
        ("not a dict", None),
        ({"id": "r", "ann_list": []}, "image"),
        ({"id": "r", "image": "a.png", "ann_list": {"label": "blur"}}, "ann_list"),
        ({"id": "r", "image": "a.png", "ann_list": ["blur"]}, "ann_list[0]"),
        ({"id": "r", "image": "a.png", "ann_list": [{"mask": "m.png"}]}, "ann_list[0]"),
        ({"id": "r", "image": "a.png", "ann_list": [{"label": 3, "mask": "m.png"}]}, "ann_list[0].label"),
        ({"id": "r", "image": "a.png", "ann_list": [{"label": "blur", "mask": 17}]}, "ann_list[0].mask"),
        ({"id": "r", "image": "a.png", "ann_list": [{"label": "blur", "mask": {"counts": "31"}}]}, "ann_list[0].mask"),
        (
            {"id": "r", "image": "a.png", "ann_list": [{"label": "blur", "mask": {"size": [4], "counts": "1"}}]},
            "ann_list[0].mask.size",
        ),
        (
            {"id": "r", "image": "a.png", "ann_list": [{"label": "blur", "mask": {"size": [1, 1], "counts": [-1]}}]},
            "ann_list[0].mask.counts",
        ),
    ],
)
def test_qground100k_unknown_layout_names_file_record_and_field(tmp_path, record, field):
    ok = {"id": "first", "image": "a.png", "ann_list": []}
    path = write_records(tmp_path / "qground_odd.json", [ok, record])
    with pytest.raises(DataFormatError) as info:
        read_qground100k(path, tmp_path, max_bad_fraction=1.0)
    message = str(info.value)
    assert str(path) in message and "record 1" in message
    if field is not None:
        assert "(id 'r')" in message and f"field '{field}'" in message


# --------------------------------------------------------------------------------------------------------------------
# COCO RLE


def test_rle_hand_computed_examples():
    # [[0, 1, 1], [0, 1, 0]] read column by column: 0 0 | 1 1 | 1 0 -> runs 2 zeros, 3 ones, 1 zero.
    mask = np.array([[0, 1, 1], [0, 1, 0]], dtype=bool)
    assert mask_to_rle(mask) == {"size": [2, 3], "counts": "231"}
    np.testing.assert_array_equal(decode_rle({"size": [2, 3], "counts": "231"}), mask)
    np.testing.assert_array_equal(decode_rle({"size": [2, 3], "counts": [2, 3, 1]}), mask)
    # 40 = 0b01000_01000: chunks 8 (+0x20 "more") -> "X", then 1 -> "1". From index 3 on values are deltas to i - 2:
    # 50 - 40 = 10 -> ":", 5 - 5 = 0 -> "0".
    assert rle_to_string([0, 40, 5, 50, 5]) == "0X15:0"
    assert rle_from_string("0X15:0") == [0, 40, 5, 50, 5]
    # Negative deltas: 1 - 2 = -1 -> chunk 31 (sign bit 0x10 set, no more) = "O"; 6 - 30 = -24 -> chunks 8 + 0x20 = "X",
    # then 31 = "O". 30 alone needs two chunks: 30 has bit 0x10 set, which would read as a sign -> "n0".
    assert rle_to_string([1, 2, 30, 1, 6]) == "12n0OXO"
    assert rle_from_string("12n0OXO") == [1, 2, 30, 1, 6]
    decoded = decode_rle({"size": [5, 8], "counts": "12n0OXO"})
    assert decoded.shape == (5, 8) and decoded.sum() == 2 + 1
    assert decoded[1, 0] and decoded[2, 0] and decoded[3, 6] and not decoded[0, 0]


def test_rle_round_trip():
    rng = np.random.default_rng(0)
    masks = [
        np.zeros((3, 5), bool),
        np.ones((4, 2), bool),
        np.ones((1, 1), bool),
        rng.random((17, 23)) > 0.5,
        box(300, 200, 10, 290, 5, 190),  # runs of thousands of pixels: several chunks per value
        ~box(64, 48, 3, 60, 7, 30),  # starts with region: counts[0] == 0
    ]
    for mask in masks:
        rle = mask_to_rle(mask)
        assert isinstance(rle["counts"], str) and rle["size"] == list(mask.shape)
        np.testing.assert_array_equal(decode_rle(json.loads(json.dumps(rle))), mask)
    runs = rng.integers(0, 100_000, size=50).tolist()
    assert rle_from_string(rle_to_string(runs)) == runs


def test_rle_errors():
    with pytest.raises(ValueError, match="add up to 5 pixels"):
        decode_rle({"size": [2, 3], "counts": [2, 3]})
    with pytest.raises(ValueError, match="ends inside a value"):
        rle_from_string("1X")
    with pytest.raises(ValueError, match="invalid character"):
        rle_from_string("1 2")
    with pytest.raises(ValueError, match="2-D"):
        mask_to_rle(np.zeros((2, 2, 2), bool))


# --------------------------------------------------------------------------------------------------------------------
# Mixture sampler


def test_mixture_sampler_proportions_and_oversampling():
    datasets = {"instruct": range(1000), "qground": range(50), "tiny": range(7)}
    weights = {"instruct": 5, "qground": 3, "tiny": 2}
    draws = list(MixtureSampler(datasets, weights, num_samples=2000, seed=0))
    assert len(draws) == 2000
    counts = Counter(name for name, _ in draws)
    for name, weight in weights.items():
        assert abs(counts[name] / 2000 - weight / 10) <= 0.05
    tiny = Counter(index for name, index in draws if name == "tiny")
    assert set(tiny) == set(range(7)) and max(tiny.values()) - min(tiny.values()) <= 1  # whole reshuffled epochs
    instruct = [index for name, index in draws if name == "instruct"]
    assert len(set(instruct)) == len(instruct)  # sub-sampled without repeats
    assert all(0 <= index < len(datasets[name]) for name, index in draws)
    first_names = [name for name, _ in draws[:50]]
    assert len(set(first_names)) == 3  # interleaved, not blocks


def test_mixture_sampler_is_deterministic_per_seed_and_epoch():
    datasets, weights = {"a": range(10), "b": range(30)}, {"a": 1.0, "b": 1.0}
    sampler = MixtureSampler(datasets, weights, num_samples=200, seed=3)
    first = list(sampler)
    assert list(sampler) == first == list(MixtureSampler(datasets, weights, num_samples=200, seed=3))
    assert list(MixtureSampler(datasets, weights, num_samples=200, seed=4)) != first
    sampler.set_epoch(1)
    assert list(sampler) != first and len(sampler) == 200


@pytest.mark.parametrize(
    ("datasets", "weights", "num_samples", "message"),
    [
        ({"a": [1], "b": [2]}, {"a": 1.0}, 10, r"missing \['b'\]"),
        ({"a": [1]}, {"a": 1.0, "c": 1.0}, 10, r"unknown \['c'\]"),
        ({"a": [1], "b": [2]}, {"a": 1.0, "b": 0.0}, 10, "'b' must be a positive number"),
        ({"a": [1]}, {"a": -2}, 10, "'a' must be a positive number"),
        ({"a": [1]}, {"a": float("nan")}, 10, "positive number"),
        ({"a": []}, {"a": 1.0}, 10, "empty"),
        ({"a": [1]}, {"a": 1.0}, 0, "num_samples"),
    ],
)
def test_mixture_sampler_validates(datasets, weights, num_samples, message):
    with pytest.raises(ValueError, match=message):
        MixtureSampler(datasets, weights, num_samples=num_samples, seed=0)
