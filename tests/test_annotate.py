"""Set-of-Mark drawing, the GPT-4V prompt, reply parsing and the QGround-100K record round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from qground.prompts import grounding_answer
from qground.records import RegionLabel, to_qground_record
from qground.taxonomy import CLASS_NAMES
from qground.tokens import SegTokens
from training.annotate import (
    IMAGE_URL_PLACEHOLDER,
    draw_set_of_marks,
    gpt4v_messages,
    mark_anchor,
    mark_colors,
    parse_gpt4v_reply,
)
from training.data.readers import read_qground100k

SIZE = 64
GRAY = (128, 128, 128)


def regions() -> list[np.ndarray]:
    """Three disjoint bool (64, 64) regions: a square, a ring (its centre is outside it) and a thin L."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    square = (yy < 20) & (xx < 20)
    radius = np.hypot(yy - 42, xx - 42)
    ring = (radius >= 11) & (radius < 20)
    ell = ((yy < 20) & (xx >= 58)) | ((yy >= 14) & (yy < 20) & (xx >= 30))
    return [square, ring, ell]


# --------------------------------------------------------------------------------------------------------------------
# Set of marks


def on_label(pixel: np.ndarray, color: tuple[int, int, int]) -> bool:
    """Whether an RGB pixel belongs to a number label of ``color``: the box fill, or its anti-aliased black or white
    text, i.e. a blend ``color + t * (ink - color)`` with one t in [0, 1] for all channels (±3 levels)."""
    pixel, base = pixel.astype(float), np.array(color, dtype=float)
    for ink in (np.zeros(3), np.full(3, 255.0)):
        direction = ink - base
        t = np.clip(direction @ (pixel - base) / (direction @ direction), 0.0, 1.0)
        if np.abs(base + t * direction - pixel).max() <= 3:
            return True
    return False


def test_mark_anchor_is_inside_and_most_interior():
    square, ring, ell = regions()
    assert mark_anchor(square) in {(9, 9), (9, 10), (10, 9), (10, 10)}
    y, x = mark_anchor(ring)
    assert ring[y, x] and not ring[42, 42]  # the centroid is outside the ring, the anchor is not
    y, x = mark_anchor(ell)
    assert ell[y, x]
    with pytest.raises(ValueError, match="empty region"):
        mark_anchor(np.zeros((4, 4), bool))


def test_draw_set_of_marks_numbers_land_inside_their_regions():
    image = Image.new("RGB", (SIZE, SIZE), GRAY)
    masks = regions()
    marked = np.array(draw_set_of_marks(image, masks))
    assert marked.shape == (SIZE, SIZE, 3) and np.array(image)[0, 0].tolist() == list(GRAY)  # input untouched
    colors = mark_colors(len(masks))
    for mask, color in zip(masks, colors):
        y, x = mark_anchor(mask)
        assert mask[y, x]
        assert on_label(marked[y, x], color) and not on_label(np.array(GRAY), color)
    # Outlines: the square's bottom-right corner is on its boundary; pixels outside every region stay gray.
    assert tuple(marked[19, 19]) == colors[0]
    assert tuple(marked[0, 30]) == GRAY and tuple(marked[40, 5]) == GRAY


def test_draw_set_of_marks_outline_follows_region_boundary():
    image = Image.new("L", (48, 32), 200)  # any mode is drawn on an RGB copy
    mask = np.zeros((32, 48), bool)
    mask[4:28, 30:46] = True
    marked = np.array(draw_set_of_marks(image, [mask]))
    color = mark_colors(1)[0]
    painted = np.all(marked == color, axis=-1)
    edge = mask.copy()
    edge[5:27, 31:45] = False
    assert painted[edge].mean() > 0.8  # the whole 1-px boundary, except where the number box covers it
    assert not painted[~mask].any()


def test_draw_set_of_marks_checks_shapes_and_colors_are_distinct():
    with pytest.raises(ValueError, match="mask 1 has shape"):
        draw_set_of_marks(Image.new("RGB", (8, 8)), [np.zeros((4, 8), bool)])
    colors = mark_colors(12)
    assert len(set(colors)) == 12 and all(0 <= c <= 255 for color in colors for c in color)


# --------------------------------------------------------------------------------------------------------------------
# GPT-4V prompt


def test_gpt4v_messages_format():
    system, user = gpt4v_messages(3)
    assert system["role"] == "system" and isinstance(system["content"], str)
    assert user["role"] == "user"
    text, image = user["content"]
    assert text["type"] == "text"
    assert image == {"type": "image_url", "image_url": {"url": IMAGE_URL_PLACEHOLDER}}
    for name in CLASS_NAMES:
        assert name in text["text"]
    assert "1 to 3" in text["text"] and '{"regions": [' in text["text"] and "none" in text["text"]
    # The example answer embedded in the prompt is itself a parseable reply.
    example = text["text"][text["text"].index('{"regions"') :]
    assert [label.distortion for label in parse_gpt4v_reply(example)] == ["blur", None]
    with pytest.raises(ValueError, match="at least one region"):
        gpt4v_messages(0)


# --------------------------------------------------------------------------------------------------------------------
# GPT-4V reply parsing

SEED_STYLE_REPLY = (
    "Based on the image, here is my analysis:\n```json\n"
    '{"regions": [{"id": 1, "distortion": "Blurry", "severity": "moderate"}, '
    '{"id": 2, "distortion": "over exposure", "severity": "severe",}, {"id": 3, "distortion": "none"}]}\n'
    "```\nLet me know if you need more."
)


def test_parse_seed_style_reply():
    assert parse_gpt4v_reply(SEED_STYLE_REPLY) == [
        RegionLabel(1, "blur", "moderate", "Blurry"),
        RegionLabel(2, "overexposure", "severe", "over exposure"),
        RegionLabel(3, None, None, "none"),
    ]


@pytest.mark.parametrize(
    "reply",
    [
        # bare fence, no language tag, prose with brackets and an apostrophe before it
        'I\'d say [regions 1-2] differ:\n```\n{"regions": [{"id": 1, "distortion": "noise"}, '
        '{"id": 2, "distortion": "blur"}]}\n```',
        # no fence, prose on both sides, trailing commas in the list and the object
        'Sure! {"regions": [{"id": 1, "distortion": "noise",}, {"id": 2, "distortion": "blur"},],} Hope it helps.',
        # single quotes
        "{'regions': [{'id': 1, 'distortion': 'noise'}, {'id': 2, 'distortion': 'blur'}]}",
        # a top-level list, string ids
        '[{"id": "1", "distortion": "noise"}, {"id": "region 2", "distortion": "blur"}]',
        # another single list-valued key, ids out of order
        '{"results": [{"region": 2, "type": "blur"}, {"region": 1, "type": "noise"}], "note": "done"}',
        # keyed by region
        '{"region 1": "noise", "region 2": {"distortion": "blur"}}',
    ],
)
def test_parse_reply_shapes(reply):
    labels = parse_gpt4v_reply(reply)
    assert [(label.id, label.distortion) for label in labels] == [(1, "noise"), (2, "blur")]


def test_parse_reply_distortion_words():
    words = [
        "Blurry",
        "over-exposed",
        "low-light",
        "motion blur",
        "nosie",
        "Jittery",
        "none",
        "no distortion",
        "clean",
        None,
        "spaceship",
    ]
    reply = json.dumps([{"id": k + 1, "distortion": word, "severity": "Severe"} for k, word in enumerate(words)])
    labels = parse_gpt4v_reply(reply)
    assert [label.distortion for label in labels] == [
        "blur",
        "overexposure",
        "low light",
        "jitter",
        "noise",
        "jitter",
        None,
        None,
        None,
        None,
        None,
    ]
    assert [label.unmatched for label in labels] == [False] * 10 + [True]
    assert labels[0].severity == "severe" and labels[6].severity is None  # clean regions carry no severity
    assert labels[9].raw == "" and labels[10].raw == "spaceship"


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        ("I cannot see any distortion in this picture.", "no JSON object found"),
        ('```json\n{"regions": [{"id": 1, "distortion": "blur"\n```', "no JSON object found"),
        ('{"regions": [{"distortion": "blur"}]}', "has no id"),
        ('{"regions": [{"id": 1, "severity": "slight"}]}', "no distortion field"),
        ('{"regions": [{"id": "first", "distortion": "blur"}]}', "holds no number"),
        ('[{"id": 1, "distortion": "blur"}, {"id": "1", "distortion": "noise"}]', r"ids \[1\] appear more than once"),
        ('{"summary": "all fine", "score": 3}', "no list of regions"),
    ],
)
def test_parse_reply_errors(reply, message):
    with pytest.raises(ValueError, match=message):
        parse_gpt4v_reply(reply)


# --------------------------------------------------------------------------------------------------------------------
# QGround-100K record


def test_record_round_trip_through_the_reader(tmp_path):
    image_root, mask_dir = tmp_path / "images", tmp_path / "masks"
    image_root.mkdir()
    Image.new("RGB", (SIZE, SIZE), GRAY).save(image_root / "photo 1.png")
    masks = regions()
    labels = parse_gpt4v_reply(
        '[{"id": 3, "distortion": "Noisy", "severity": "slight"}, {"id": 1, "distortion": "blur"}, '
        '{"id": 2, "distortion": "clean"}]'
    )
    record = to_qground_record("photo 1", "photo 1.png", masks, labels, mask_dir, layout="legacy")
    assert record == {
        "id": "photo 1",
        "image": "photo 1.png",
        "ann_list": [
            {"label": "blur", "mask": "photo_1_1.png"},
            {"label": "noise", "mask": "photo_1_3.png", "severity": "slight"},
        ],
    }  # region 2 is clean: left out
    json_path = tmp_path / "qground_100k.json"
    json_path.write_text(json.dumps([record]), encoding="utf-8")
    (sample,), report = read_qground100k(json_path, image_root, mask_root=mask_dir)
    assert report.bad == 0
    assert sample.turns[0].answer == grounding_answer(["blur", "noise"], SegTokens().group_text())
    for path, expected in zip(sample.masks, [masks[0], masks[2]]):
        np.testing.assert_array_equal(np.array(Image.open(path)) > 0, expected)
        assert set(np.unique(np.array(Image.open(path))).tolist()) == {0, 255}


def test_record_rejects_labels_for_unknown_regions(tmp_path):
    with pytest.raises(ValueError, match="region 4, but there are 3 regions"):
        to_qground_record("x", "x.png", regions(), [RegionLabel(4, "blur", None, "blur")], tmp_path)
