"""QGround-100K in its released layout (tests/fixtures/qground100k_released, made by its make.py): color-mask decoding
against the PNG truth the JPEGs were saved from, the reader per annotator and fused, the palette finder, and ids
derived for Q-/Co-Instruct records without one."""

from __future__ import annotations

import dataclasses
import io
import json
import pickle
import re
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter
from scipy import ndimage

import qground.palette as palette_module
from qground.palette import (
    Palette,
    PaletteError,
    decode_color_mask,
    decode_label_map,
    read_color_mask,
    unmatched_summary,
)
from qground.prompts import Turn, grounding_answer
from qground.tokens import SegTokens
from training.data import palette as palette_tool
from training.data.palette import ColorMask, find_palette, label_map, mask_files
from training.data.readers import (
    DESCRIBE_QUESTIONS,
    describe_first,
    describe_question,
    grounding_question,
    read_coinstruct,
    read_qground100k,
)
from training.data.sample import DataFormatError

FIXTURE = Path(__file__).parent / "fixtures" / "qground100k_released"
DATA = FIXTURE / "qground_dataset"
MASKS = DATA / "masks"
TRUTH = FIXTURE / "truth"
PALETTE = Palette.load(FIXTURE / "palette.json")
GROUP = SegTokens().group_text()
TRAIN, TEST = DATA / "qground_train.json", DATA / "qground_test.json"


def truth_masks(name: str, palette: Palette = PALETTE) -> dict[str, np.ndarray]:
    """The exact per-class masks of one annotator, from the PNG the JPEG was saved from."""
    rgb = np.asarray(Image.open(TRUTH / "spaq_koniq" / f"{name}.png").convert("RGB"))
    return {cls: (rgb == np.array(color)).all(axis=-1) for cls, color in palette.colors.items()}


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return 1.0 if union == 0 else float((a & b).sum() / union)


def jpeg_rgb(img: Image.Image, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=quality, subsampling="4:2:0")
    return np.asarray(Image.open(buffer).convert("RGB"))


def draw(size: tuple[int, int], shapes: list[tuple], palette: Palette) -> Image.Image:
    img = Image.new("RGB", size, palette.background)
    pen = ImageDraw.Draw(img)
    for kind, cls, where in shapes:
        getattr(pen, kind)(where, fill=palette.colors[cls])
    return img


def copy_fixture(tmp_path: Path) -> Path:
    root = tmp_path / "qground_dataset"
    shutil.copytree(DATA, root)
    return root


# --------------------------------------------------------------------------------------------------------------------
# Decoding color masks


MASK_NAMES = sorted(p.stem for p in (MASKS / "spaq_koniq").glob("*.jpg"))


@pytest.mark.parametrize("name", MASK_NAMES)
def test_decoded_masks_match_the_png_truth(name):
    decoded = decode_color_mask(read_color_mask(MASKS / "spaq_koniq" / f"{name}.jpg"), PALETTE, name)
    truth = truth_masks(name)
    assert set(decoded) == set(PALETTE.colors)
    for cls, mask in decoded.items():
        assert mask.any() == truth[cls].any(), f"{name}: {cls} present in one only (a fringe became a region?)"
        assert iou(mask, truth[cls]) >= 0.98, f"{name}: {cls} IoU {iou(mask, truth[cls]):.3f}"
    stacked = np.stack(list(decoded.values()))
    assert stacked.sum(axis=0).max() <= 1  # classes are disjoint


# Adjacent classes of the default (pure-color) palette, drawn sharp or with a soft (anti-aliasing) brush: the blends
# between two colors land near a third one (red | blue blends to magenta-ish, blue | yellow to gray-green, …).
FRINGE_SCENES = {
    "stripes": [
        ("rectangle", "overexposure", (0, 0, 95, 20)),
        ("rectangle", "low light", (0, 21, 95, 40)),
        ("rectangle", "noise", (0, 41, 95, 63)),
    ],
    "touching boxes": [
        ("rectangle", "blur", (4, 4, 47, 40)),
        ("rectangle", "jitter", (48, 4, 90, 40)),
        ("ellipse", "overexposure", (10, 42, 60, 63)),
    ],
    "blobs and a wedge": [
        ("ellipse", "low light", (5, 5, 50, 45)),
        ("ellipse", "noise", (51, 10, 90, 50)),
        ("polygon", "blur", [(0, 63), (40, 50), (60, 63)]),
    ],
    "triangle": [("polygon", "jitter", [(10, 5), (85, 10), (40, 60)]), ("ellipse", "blur", (60, 30, 94, 62))],
}


def fringe_scene(scene: str, quality: int, soft: float) -> tuple[np.ndarray, dict[str, np.ndarray], Palette]:
    """A default-palette scene as decoded JPEG pixels, with its exact per-class truth."""
    palette = Palette.load()
    img = draw((96, 64), FRINGE_SCENES[scene], palette)
    truth = {cls: (np.asarray(img) == np.array(color)).all(axis=-1) for cls, color in palette.colors.items()}
    if soft:
        img = img.filter(ImageFilter.GaussianBlur(soft))
    return jpeg_rgb(img, quality), truth, palette


@pytest.mark.parametrize("scene", FRINGE_SCENES)
@pytest.mark.parametrize(("quality", "soft", "min_iou"), [(75, 0, 0.98), (90, 0, 0.98), (75, 0.6, 0.97)])
def test_fringes_do_not_become_regions(scene, quality, soft, min_iou):
    rgb, truth, palette = fringe_scene(scene, quality, soft)
    decoded = decode_color_mask(rgb, palette)
    for cls, mask in decoded.items():
        assert mask.any() == truth[cls].any(), f"{cls}: spurious or lost region"
        assert iou(mask, truth[cls]) >= min_iou, f"{cls}: IoU {iou(mask, truth[cls]):.3f}"
        labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
        assert count == 0 or np.bincount(labels.ravel())[1:].min() >= palette.min_region


def test_without_cleaning_soft_edges_decode_as_a_third_class():
    """The fringe the cleaning removes is real: blends at soft blue | magenta | red edges match green ("jitter")."""
    rgb, truth, palette = fringe_scene("blobs and a wedge", 75, 0.6)
    assert not truth["jitter"].any()
    raw = decode_color_mask(rgb, dataclasses.replace(palette, opening=0, min_region=0))
    assert raw["jitter"].sum() >= 20
    assert not decode_color_mask(rgb, palette)["jitter"].any()


def test_decoding_in_row_chunks_gives_the_same_labels(monkeypatch):
    rgb = read_color_mask(MASKS / "spaq_koniq" / "00002_bob_00002.jpg")
    whole = decode_label_map(rgb, PALETTE)
    monkeypatch.setattr(palette_module, "CHUNK_PIXELS", 96 * 5)  # 5-row chunks
    np.testing.assert_array_equal(decode_label_map(rgb, PALETTE), whole)


def test_decoding_memory_is_bounded():
    """A 3 MP mask: the peak of new allocations stays near 14 bytes per pixel (no (H·W, K, 3) distance arrays)."""
    palette = Palette.load()
    img = draw(
        (2000, 1500),
        [("ellipse", "blur", (100, 100, 900, 800)), ("rectangle", "noise", (1000, 200, 1900, 1400))],
        palette,
    )
    rgb = jpeg_rgb(img, 85)
    tracemalloc.start()
    try:
        labels = decode_label_map(rgb, palette)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 18 * rgb.shape[0] * rgb.shape[1]
    blur = (np.asarray(img) == np.array(palette.colors["blur"])).all(axis=-1)
    assert iou(labels == palette.names.index("blur") + 1, blur) >= 0.99


def test_wrong_palette_names_the_unmatched_colors_and_shares():
    name = "00001_alice_00001"
    rgb = read_color_mask(MASKS / "spaq_koniq" / f"{name}.jpg")
    with pytest.raises(PaletteError) as info:
        decode_color_mask(rgb, Palette.load(), where=name)
    message = str(info.value)
    assert message.startswith(f"{name}: ") and "match no palette color" in message
    listed = {
        tuple(int(v) for v in rgb_text.split(", ")): float(share)
        for rgb_text, share in re.findall(r"\((\d+, \d+, \d+)\) ([\d.]+) %", message)
    }
    truth = truth_masks(name)
    for cls in ("noise", "blur"):  # the two classes of this mask, neither in the default palette
        color = PALETTE.colors[cls]
        found = min(listed, key=lambda c: np.linalg.norm(np.subtract(c, color)))
        assert np.linalg.norm(np.subtract(found, color)) <= 6
        true_share = 100 * truth[cls].mean()
        assert 0.6 * true_share <= listed[found] <= true_share + 0.5  # interior pixels; fringes are not counted


def test_unmatched_summary_merges_close_colors():
    colors = np.array([[200, 10, 10]] * 60 + [[204, 12, 8]] * 40 + [[10, 200, 10]] * 20, dtype=np.uint8)
    text = unmatched_summary(colors, total=1000)
    assert text.startswith("12.0 % of the mask's pixels")
    assert re.search(r"\(20[0-9], 1[01], [89]\) 10\.0 %, \(10, 200, 10\) 2\.0 %", text)


def test_palette_round_trip_and_errors(tmp_path):
    path = PALETTE.save(tmp_path / "p.json")
    assert Palette.load(path) == PALETTE
    assert PALETTE.names == ["blur", "jitter", "overexposure", "low light", "noise"]
    (tmp_path / "todo.json").write_text(json.dumps({"colors": {"class?1": [1, 2, 3]}}))
    with pytest.raises(PaletteError, match=r"todo\.json: class names must be among .*placeholders"):
        Palette.load(tmp_path / "todo.json")
    with pytest.raises(PaletteError, match="share a color"):
        Palette({"blur": (0, 0, 0)})
    with pytest.raises(PaletteError, match="0–255"):
        Palette({"blur": (0, 0, 256)})
    with pytest.raises(PaletteError, match="no such palette"):
        Palette.load(tmp_path / "absent.json")


# --------------------------------------------------------------------------------------------------------------------
# The reader


def test_released_fixture_one_sample_per_annotator():
    samples, report = read_qground100k(TRAIN, DATA / "images", palette=PALETTE)
    assert (report.total, report.bad, report.unit) == (8, 0, "annotations")
    assert [s.id for s in samples] == [
        "00001_alice",
        "00001_bob",
        "00001_carol",
        "00002_bob",
        "00002_dave",
        "00003_carol",
        "00003_erin",
        "00003_frank",
    ]
    by_id = {s.id: s for s in samples}
    carol = by_id["00001_carol"]
    assert carol.images == [DATA / "images" / "spaq_koniq" / "00001.jpg"] and carol.source == "qground100k"
    assert carol.mask_labels == ["blur", "overexposure"]  # taxonomy order = answer order
    ground = Turn(grounding_question("00001_carol"), grounding_answer(["blur", "overexposure"], GROUP))
    describe = Turn(
        describe_question("00001_carol"), json.loads(TRAIN.read_text())[0]["ann_list"][2]["quality_description"]
    )
    assert carol.turns == ([describe, ground] if describe_first("00001_carol") else [ground, describe])
    assert {describe_first(s.id) for s in samples} == {True, False}  # both orders occur
    for s in samples:  # every annotator has a paragraph: a describe turn and a grounding turn each
        assert sorted(t.question in DESCRIBE_QUESTIONS for t in s.turns) == [False, True]
    for mask, cls in zip(carol.masks, carol.mask_labels):
        assert isinstance(mask, ColorMask) and mask.size == (64, 96)
        assert iou(mask.load(), truth_masks("00001_carol_00001")[cls]) >= 0.98
    clean = by_id["00003_frank"]  # drew nothing
    assert clean.masks == [] and grounding_answer([], GROUP) in [t.answer for t in clean.turns]


def test_released_fixture_fused_by_majority_vote():
    samples, report = read_qground100k(TRAIN, DATA / "images", palette=PALETTE, fuse_annotators=True)
    assert (report.total, report.bad, report.unit) == (3, 0, "records")
    by_id = {s.id: s for s in samples}
    assert list(by_id) == ["00001_alice", "00002_bob", "00003_carol"]
    assert by_id["00001_alice"].mask_labels == ["blur", "noise"]  # overexposure: 1 of 3 annotators
    assert by_id["00002_bob"].mask_labels == ["blur", "jitter"]  # low light: 1 of 2
    assert by_id["00003_carol"].mask_labels == ["overexposure"]  # 2 of 3 (frank drew nothing)
    stem = "00001"
    names = [f"{stem}_{a}_{stem}" for a in ("alice", "bob", "carol")]
    truths = [truth_masks(n) for n in names]
    for mask, cls in zip(by_id["00001_alice"].masks, by_id["00001_alice"].mask_labels):
        assert len(mask.paths) == 3
        majority = np.sum([t[cls] for t in truths], axis=0) >= 2
        assert iou(mask.load(), majority) >= 0.98
    # The paragraph of the annotator whose classes agree with the vote: alice (blur, noise), not carol.
    texts = [t.answer for t in by_id["00001_alice"].turns]
    assert json.loads(TRAIN.read_text())[0]["ann_list"][0]["quality_description"] in texts


def test_released_test_split_reads():
    samples, report = read_qground100k(TEST, DATA / "images", palette=FIXTURE / "palette.json")
    assert report.bad == 0 and [s.id for s in samples] == ["00004_alice", "00004_bob", "00004_erin"]
    assert [s.mask_labels for s in samples] == [["low light", "noise"], ["low light", "noise"], ["noise"]]


def test_color_masks_are_lazy_picklable_and_open_as_mask_files():
    samples, _ = read_qground100k(TEST, DATA / "images", palette=PALETTE)
    mask = samples[0].masks[1]
    expected = mask.load()
    assert expected.dtype == bool and expected.shape == (64, 96) and expected.any()
    np.testing.assert_array_equal(np.asarray(mask), expected)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(mask)).load(), expected)
    with Image.open(mask) as img:  # what training.data.dataset.load_mask does with a mask path
        np.testing.assert_array_equal(np.asarray(img.convert("L")) > 0, expected)


def test_dataset_load_mask_accepts_color_masks():
    from training.data.dataset import load_mask

    samples, _ = read_qground100k(TEST, DATA / "images", palette=PALETTE)
    for mask in samples[0].masks:
        np.testing.assert_array_equal(load_mask(mask), mask.load())


def test_wrong_palette_fails_the_file_with_advice():
    with pytest.raises(DataFormatError) as info:
        read_qground100k(TRAIN, DATA / "images")  # the default palette: not this data's
    message = str(info.value)
    assert "palette mismatch: 5" in message and "match no palette color: (14" in message
    assert "palette is likely wrong" in message and "python -m training.data.palette" in message
    assert str(MASKS) in message


def test_mask_problems_are_counted(tmp_path):
    root = copy_fixture(tmp_path)
    spaq = root / "masks" / "spaq_koniq"
    (spaq / "00001_bob_00001.jpg").unlink()
    (spaq / "00002_bob_00002.jpg").write_bytes(b"not a jpeg")
    Image.open(spaq / "00002_dave_00002.jpg").resize((96, 96)).save(spaq / "00002_dave_00002.jpg")  # other aspect
    wrong = Image.new("RGB", (96, 64), (40, 220, 220))  # a color the palette lacks
    wrong.save(spaq / "00003_erin_00003.jpg", quality=90)
    samples, report = read_qground100k(
        root / "qground_train.json", root / "images", palette=PALETTE, max_bad_fraction=1.0
    )
    assert report.counts() == {"missing mask": 1, "bad mask": 1, "mask size mismatch": 1, "palette mismatch": 1}
    assert [s.id for s in samples] == ["00001_alice", "00001_carol", "00003_carol", "00003_frank"]
    assert "00001_bob_00001.jpg" in report.problems["missing mask"][0]
    assert "96×96 but the image is 96×64" in report.problems["mask size mismatch"][0]
    assert re.search(r"\((3[2-9]|4\d), 2[12]\d, 2[12]\d\) 100\.0 %", report.problems["palette mismatch"][0])
    assert "4 of 8 annotations usable" in report.summary()
    _, fused = read_qground100k(
        root / "qground_train.json", root / "images", palette=PALETTE, fuse_annotators=True, max_bad_fraction=1.0
    )
    assert (fused.total, fused.bad) == (3, 3)  # fused: one bad annotator makes the record bad


def test_half_size_masks_are_resized_to_the_image(tmp_path):
    root = copy_fixture(tmp_path)
    path = root / "masks" / "spaq_koniq" / "00004_erin_00004.jpg"
    Image.open(TRUTH / "spaq_koniq" / "00004_erin_00004.png").convert("RGB").resize((48, 32), Image.NEAREST).save(
        path, quality=90
    )
    samples, report = read_qground100k(root / "qground_test.json", root / "images", palette=PALETTE)
    erin = samples[2]
    assert report.bad == 0 and erin.mask_labels == ["noise"]
    mask = erin.masks[0].load()
    assert mask.shape == (64, 96)
    assert iou(mask, truth_masks("00004_erin_00004")["noise"]) >= 0.9  # half the resolution, nearest upscaling


def test_missing_image_counts_every_annotator_and_empty_ann_lists_are_problems(tmp_path):
    root = copy_fixture(tmp_path)
    (root / "images" / "spaq_koniq" / "00001.jpg").unlink()
    records = json.loads((root / "qground_train.json").read_text())
    records[1]["ann_list"] = []
    (root / "qground_train.json").write_text(json.dumps(records))
    samples, report = read_qground100k(
        root / "qground_train.json", root / "images", palette=PALETTE, max_bad_fraction=1.0
    )
    assert report.counts() == {"missing image": 3, "no annotations": 1}
    assert [s.id for s in samples] == ["00003_carol", "00003_erin", "00003_frank"]


@pytest.mark.parametrize(
    ("ann_list", "field"),
    [
        ([{"quality_description": 3, "segmentation_mask": "a.jpg"}], "ann_list[0].quality_description"),
        ([{"quality_description": "x", "segmentation_mask": ""}], "ann_list[0].segmentation_mask"),
        ([{"segmentation_mask": "a.jpg"}], "ann_list[0].quality_description"),
        (
            [{"quality_description": "x", "segmentation_mask": "a.jpg"}, {"label": "blur", "mask": "m.png"}],
            "ann_list[1]",
        ),
    ],
)
def test_released_layout_errors_name_file_record_and_field(tmp_path, ann_list, field):
    path = tmp_path / "released_odd.json"
    path.write_text(json.dumps([{"id": "r", "image": "a.jpg", "ann_list": ann_list}]))
    with pytest.raises(DataFormatError) as info:
        read_qground100k(path, tmp_path, palette=PALETTE, max_bad_fraction=1.0)
    assert f"{path}: record 0 (id 'r'): field '{field}'" in str(info.value)


def test_old_layout_still_reads_with_a_palette_argument():
    old = Path(__file__).parent / "fixtures" / "qground100k"
    samples, report = read_qground100k(old / "qground_100k.json", old / "images", palette=PALETTE)
    assert report.bad == 0 and report.unit == "records" and len(samples) == 4
    assert samples[2].turns == [Turn(grounding_question("qg_0003"), grounding_answer([], GROUP))]  # empty = clean


def test_one_file_may_mix_both_layouts(tmp_path):
    records = json.loads(TEST.read_text()) + [{"id": "clean", "image": "spaq_koniq/00001.jpg", "ann_list": []}]
    records += [{"id": "boxed", "image": "spaq_koniq/00001.jpg", "ann_list": [{"label": "blur", "mask": "x.png"}]}]
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps(records))
    samples, report = read_qground100k(path, DATA / "images", MASKS, palette=PALETTE, max_bad_fraction=1.0)
    assert report.unit == "annotations" and report.total == 5
    assert report.counts() == {"no annotations": 1, "missing mask": 1}  # an empty ann_list in a released file
    assert [s.id for s in samples] == ["00004_alice", "00004_bob", "00004_erin"]


# --------------------------------------------------------------------------------------------------------------------
# The palette finder


def test_palette_finder_recovers_the_fixture_palette():
    files = mask_files(MASKS)
    assert len(files) == 11
    found = find_palette(files)
    truth_rgb = np.concatenate(
        [np.asarray(Image.open(p).convert("RGB")).reshape(-1, 3) for p in sorted((TRUTH / "spaq_koniq").glob("*.png"))]
    )
    entries = {"background": PALETTE.background, **PALETTE.colors}
    assert len(found) == len(entries) and found[0].name == "background"
    for cls, color in entries.items():
        match = min(found, key=lambda f: np.linalg.norm(np.subtract(f.rgb, color)))
        assert np.linalg.norm(np.subtract(match.rgb, color)) <= 4, cls
        share = (truth_rgb == np.array(color)).all(axis=1).mean()
        assert abs(match.share - share) <= 0.005, (cls, match.share, share)
    files_with = {f.rgb: f.files for f in found}
    noise = min(found, key=lambda f: np.linalg.norm(np.subtract(f.rgb, PALETTE.colors["noise"])))
    assert files_with[noise.rgb] == 5 and found[0].files == 11


def test_palette_finder_cli_names_writes_and_checks(tmp_path, capsys):
    out = tmp_path / "found.json"
    assert palette_tool.main([str(MASKS), "--sample", "6", "--seed", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "in 6 of 11 mask files" in printed and "background" in printed and "class?1" in printed
    data = json.loads(out.read_text())
    assert "_todo" in data and all(name.startswith("class?") for name in data["colors"])
    with pytest.raises(PaletteError, match="placeholders"):
        Palette.load(out)

    named = tmp_path / "named.json"
    args = [str(MASKS), "--palette", str(FIXTURE / "palette.json"), "--out", str(named)]
    assert palette_tool.main(args) == 0
    printed = capsys.readouterr().out
    assert "11 of 11 sampled files decode with" in printed
    recovered = Palette.load(named)  # every color named after the given palette: loadable as is
    assert set(recovered.names) == set(PALETTE.names)
    for cls, color in PALETTE.colors.items():
        assert np.linalg.norm(np.subtract(recovered.colors[cls], color)) <= 4
    for name in MASK_NAMES:  # and it decodes the fixture as well as the true palette does
        path = MASKS / "spaq_koniq" / f"{name}.jpg"
        np.testing.assert_array_equal(
            decode_color_mask(read_color_mask(path), recovered)["noise"],
            decode_color_mask(read_color_mask(path), PALETTE)["noise"],
        )

    assert palette_tool.main([str(MASKS), "--palette", str(Palette.load().source)]) == 0
    printed = capsys.readouterr().out
    assert "3 of 11 sampled files decode with" in printed and "match no palette color" in printed


def test_label_map_cache_is_keyed_by_palette():
    path = MASKS / "spaq_koniq" / "00003_carol_00003.jpg"
    mine = label_map(path, PALETTE)
    other = label_map(path, dataclasses.replace(PALETTE, colors={"low light": (255, 225, 25)}))
    assert mine.max() == PALETTE.names.index("overexposure") + 1 and other.max() == 1


# --------------------------------------------------------------------------------------------------------------------
# Q-/Co-Instruct ids


def test_coinstruct_ids_are_optional_and_derived(tmp_path):
    image = tmp_path / "a.png"
    Image.new("RGB", (4, 4)).save(image)
    chat = [{"from": "human", "value": "<image>\nHow is it?"}, {"from": "gpt", "value": "Fine."}]
    records = [
        {"image": "a.png", "conversations": chat},
        {"id": "kept", "image": "a.png", "conversations": chat},
        {"id": None, "image": "a.png", "conversations": chat},
    ]
    path = tmp_path / "cleaned_labels.json"
    path.write_text(json.dumps(records))
    samples, report = read_coinstruct(path, tmp_path)
    assert report.bad == 0
    assert [s.id for s in samples] == ["cleaned_labels#0", "kept", "cleaned_labels#2"]
    path.write_text(json.dumps([{"id": ["x"], "image": "a.png", "conversations": chat}]))
    with pytest.raises(DataFormatError, match=r"record 0: field 'id'"):
        read_coinstruct(path, tmp_path)
