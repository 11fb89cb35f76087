"""The app's example photos (``assets/examples``, made by ``python -m training.examples``): the committed files are
complete, licensed and loadable, and the shipped model finds what each example claims it finds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qground.imageio import load_image
from qground.questions import COMPARE_PRESETS, QUESTIONS
from qground.taxonomy import CLASS_NAMES
from training import examples as gen

FOLDER = Path(__file__).resolve().parents[1] / "assets" / "examples"
MANIFEST = json.loads((FOLDER / gen.MANIFEST).read_text(encoding="utf-8"))


def test_manifest_shape():
    assert 4 <= len(MANIFEST["chat"]) <= 6
    assert 1 <= len(MANIFEST["compare"]) <= 2
    files = [r["file"] for r in MANIFEST["chat"]] + [f for g in MANIFEST["compare"] for f in g["files"]]
    assert len(files) == len(set(files))
    on_disk = {p.name for p in FOLDER.glob("*.jpg")}
    assert on_disk == set(files), "every JPEG in assets/examples is in the manifest and the other way round"
    assert sum(p.stat().st_size for p in FOLDER.rglob("*") if p.is_file()) <= gen.MAX_BYTES


def _licensed(record: dict) -> None:
    for key in ("caption", "question", "source", "license", "photo"):
        assert isinstance(record[key], str) and record[key].strip(), f"{key} is empty"
    assert record["url"].startswith("https://")


@pytest.mark.parametrize("record", MANIFEST["chat"], ids=lambda r: r["file"])
def test_chat_example_files(record):
    _licensed(record)
    image = load_image(FOLDER / record["file"])
    assert gen.MIN_SIDE <= max(image.size) <= gen.MAX_SIDE
    assert list(image.size) == record["size"]
    assert all(c in CLASS_NAMES for c in record["expected"])
    assert record["expected"] == [d["class"] for d in record["distortions"]]
    for d in record["distortions"]:
        mask = np.asarray(Image.open(FOLDER / d["mask"]).convert("1"), dtype=bool)
        assert mask.shape == (image.height, image.width) and mask.any()
    if not record["expected"]:
        assert "no distortion expected" in record["caption"]


@pytest.mark.parametrize("group", MANIFEST["compare"], ids=lambda g: g["files"][0])
def test_compare_group_files(group):
    _licensed(group)
    assert 2 <= len(group["files"]) <= 3 and 0 <= group["best"] < len(group["files"])
    assert group["question"] in COMPARE_PRESETS.values()
    assert group["distortion"]["severities"][group["best"]] == 0, "the best image is the undistorted one"
    sizes = {load_image(FOLDER / f).size for f in group["files"]}
    assert len(sizes) == 1 and gen.MIN_SIDE <= max(next(iter(sizes))) <= gen.MAX_SIDE


def test_app_reads_the_manifest():
    """The app's reader (``qground.examples``) takes the manifest as written."""
    examples = pytest.importorskip("qground.examples")
    shipped = examples.read_examples(FOLDER / gen.MANIFEST)
    assert len(shipped.chat) == len(MANIFEST["chat"]) and len(shipped.compare) == len(MANIFEST["compare"])


def test_named_classes_reads_answers():
    assert gen.named_classes("The segmentation results are: low light, noise.") == ["low light", "noise"]
    assert gen.named_classes("Yes. The image has severe blur in the center.") == ["blur"]
    assert gen.named_classes("No, there is no low light. The image has no obvious distortion.") == []
    assert gen.named_classes(QUESTIONS["describe"]) == []


@pytest.fixture(scope="module")
def nano():
    import qground

    return qground.load_engine("qground-nano")


def test_shipped_model_finds_every_example(nano):  # ≈ 3 s (14 s beside a training job): not marked slow
    """At default settings the grounding answer names each expected class (and no other) and draws it with IoU ≥ 0.3
    against the distorted region; the description and the example's own question name it too; a clean example gets
    no class and no mask; each comparison picks the expected image. On failure the table says which and why."""
    chat, groups = gen.check(nano, FOLDER, MANIFEST)
    for c in chat:
        assert set(c.found) <= set(CLASS_NAMES)
    failed = [c for c in chat + groups if not c.passed]
    assert not failed, "\n" + gen.table(chat, groups)
