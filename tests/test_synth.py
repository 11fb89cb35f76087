"""The synthetic distortion engine: exact masks, disjoint regions, files in the documented layout, truthful text."""

import json

import numpy as np
import pytest
from PIL import Image

from qground.taxonomy import CLASS_NAMES, get
from training.data import synth
from training.data.readers import read_coinstruct, read_llava_instruct, read_qground100k


def _residual_std(img: np.ndarray, mask: np.ndarray) -> float:
    y = img.astype(np.float32).mean(-1)
    r = y - (np.roll(y, 1, 0) + np.roll(y, -1, 0) + np.roll(y, 1, 1) + np.roll(y, -1, 1)) / 4
    return float(r[mask].std())


@pytest.mark.parametrize("name", CLASS_NAMES)
def test_each_distortion_changes_pixels_the_expected_way(name):
    rng = np.random.default_rng(0)
    clean = synth.augment(synth.load_photo("chelsea"), rng, 160).astype(np.float32) / 255
    out = np.clip(synth.distort(clean, name, 3, rng), 0, 1)
    mask = np.ones(clean.shape[:2], dtype=bool)
    c8, o8 = (clean * 255).astype(np.uint8), (out * 255).astype(np.uint8)
    if name in ("blur", "jitter"):
        assert _residual_std(o8, mask) < 0.6 * _residual_std(c8, mask)
    elif name == "noise":
        assert _residual_std(o8, mask) > 1.5 * _residual_std(c8, mask)
    elif name == "overexposure":
        assert out.mean() > clean.mean() + 0.15 and (out >= 1.0).mean() > 0.2
    else:
        assert out.mean() < clean.mean() - 0.15


def test_generated_masks_are_exact_and_disjoint():
    for index in range(12):
        g = synth.generate(index, "train", seed=3, max_side=96)
        clean_rng = np.random.default_rng([3, 0, index])
        clean, photo = synth.clean_base("train", clean_rng, 96)
        assert photo == g.photo
        union = np.zeros(g.image.shape[:2], dtype=bool)
        for name, mask in g.masks.items():
            assert mask.shape == g.image.shape[:2] and mask.mean() >= 0.02
            assert not (union & mask).any(), "regions overlap"
            union |= mask
            assert 1 <= g.severity[name] <= 3 and name in CLASS_NAMES
        assert np.array_equal(g.image[~union], clean[~union]), "pixels outside every mask changed"
        assert list(g.masks) == [n for n in CLASS_NAMES if n in g.masks]


def test_dataset_layout_readers_and_truth(tmp_path):
    synth.write_dataset(tmp_path, num=16, split="eval", seed=1, comparisons=8, max_side=96)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["split"] == "eval" and {m["photo"] for m in meta["images"]} <= {p.name for p in synth.photos("eval")}
    samples, report = read_qground100k(tmp_path / "qground.json", tmp_path, tmp_path)
    assert report.bad == 0 and len(samples) == 16
    for s, m in zip(samples, meta["images"]):
        size = tuple(m["size"])
        assert Image.open(s.images[0]).size[::-1] == size
        assert s.mask_labels == m["classes"]
        for label, path in zip(s.mask_labels, s.masks):
            assert path.name == f"{get(label).key}.png" and Image.open(path).size[::-1] == size
        if not m["classes"]:
            assert "no obvious distortion" in s.turns[0].answer
    described, report = read_llava_instruct(tmp_path / "describe.json", tmp_path)
    assert report.bad == 0
    for s, m in zip(described, meta["images"]):
        for name in m["classes"]:
            assert name in s.turns[0].answer
    compared, report = read_coinstruct(tmp_path / "compare.json", tmp_path)
    assert report.bad == 0 and len(compared) == 8
    by_image = {m["image"]: m for m in meta["images"]}
    for record in json.loads((tmp_path / "compare.json").read_text()):
        group = [by_image[p] for p in record["image"]]
        question, answer = (t["value"] for t in record["conversations"])
        if "Which image is noisier?" in question and answer.startswith("The "):
            best = synth.ORDINALS.index(answer.split()[1])
            assert group[best]["scores"]["noise"] == max(g["scores"]["noise"] for g in group)
    pairs = json.loads((tmp_path / "compare_pairs.json").read_text())
    assert len(pairs) == 8 and read_coinstruct(tmp_path / "compare_pairs.json", tmp_path)[1].bad == 0
    kinds = {q: k for k, q in synth.QUESTIONS.items()}
    for record in pairs:  # two images, free-form answers, the asked class strongest in the named image
        group = [by_image[p] for p in record["image"]]
        question, answer = (t["value"].split("\n")[-1] for t in record["conversations"])
        assert len(group) == 2 and answer in ("The first image.", "The second image.")
        if question in kinds:
            values = [g["scores"][kinds[question]] for g in group]
            assert values[synth.ORDINALS.index(answer.split()[1])] >= max(values) - 1e-9


def test_same_seed_same_bytes(tmp_path):
    synth.write_dataset(tmp_path / "a", num=4, split="train", seed=5, comparisons=2, max_side=80)
    synth.write_dataset(tmp_path / "b", num=4, split="train", seed=5, comparisons=2, max_side=80)
    for name in ("qground.json", "describe.json", "compare.json", "compare_pairs.json", "images/train_000003.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_train_and_eval_photos_are_disjoint():
    assert not {p.name for p in synth.photos("train")} & {p.name for p in synth.photos("eval")}
    assert all(p.license and p.origin for p in synth.PHOTOS)


def test_comparisons_without_an_answer_fail_clearly():
    same = {"image": "images/x.png", "scores": dict.fromkeys(CLASS_NAMES, 0.5), "luma": 0.5}
    with pytest.raises(ValueError, match="only 0 of 3 comparison groups have an unambiguous answer"):
        synth.comparison_records([same] * 4, 3, np.random.default_rng(0), "cmp_train")
