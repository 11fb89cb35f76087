"""The synthetic distortion engine: exact masks, disjoint regions, files in the documented layout, truthful text."""

import json

import numpy as np
import pytest
from PIL import Image

from qground.answers import single_image_grammar
from qground.taxonomy import CLASS_NAMES, get, normalize
from training.data import synth
from training.data.distortions import HELD_OUT
from training.data.photo_pool import POOL
from training.data.questions import COMPARISONS, comparison_wordings
from training.data.readers import read_coinstruct, read_llava_instruct, read_qground100k


def test_generated_masks_are_exact_and_disjoint():
    for index in range(12):
        g = synth.generate(index, "train", seed=3, max_side=96)
        clean_rng = np.random.default_rng([3, 0, index])
        capture = clean_rng.uniform(1.2, 2.0) if clean_rng.random() < synth.CAPTURE else 1.0
        clean, photo = synth.clean_base("train", clean_rng, round(96 * capture))
        assert photo == g.photo
        union = np.zeros(g.image.shape[:2], dtype=bool)
        for name, mask in g.masks.items():
            assert mask.shape == g.image.shape[:2] and mask.mean() >= 0.02
            assert not (union & mask).any(), "regions overlap"
            union |= mask
            assert 1 <= g.severity[name] <= 3 and name in CLASS_NAMES
            assert g.families[name].startswith(f"{name}/") and g.families[name] not in HELD_OUT
        if max(clean.shape[:2]) <= 96 and g.jpeg is None:  # neither shrunk after distorting nor through JPEG
            assert np.array_equal(g.image[~union], clean[~union]), "pixels outside every mask changed"
        assert list(g.masks) == [n for n in CLASS_NAMES if n in g.masks]


def test_a_share_of_training_images_goes_through_jpeg_after_the_distortions(monkeypatch):
    """About ``JPEG_SHARE`` of the training images, never a validation or evaluation image; drawn last, so the rest of
    the image (photo, regions, families) is the same as without it."""
    made = [synth.generate(i, "train", seed=5, max_side=96) for i in range(40)]
    qualities = [g.jpeg for g in made if g.jpeg is not None]
    assert 8 <= len(qualities) <= 24 and all(75 <= q <= 95 for q in qualities)
    assert all(
        synth.generate(i, split, seed=5, max_side=96).jpeg is None for i in range(10) for split in ("val", "eval")
    )
    i, g = next((i, g) for i, g in enumerate(made) if g.jpeg is not None)
    monkeypatch.setattr(synth, "JPEG_SHARE", 0.0)
    lossless = synth.generate(i, "train", seed=5, max_side=96)
    assert lossless.jpeg is None and (lossless.photo, lossless.families) == (g.photo, g.families)
    assert lossless.masks.keys() == g.masks.keys() and all(
        np.array_equal(lossless.masks[n], g.masks[n]) for n in g.masks
    )
    assert g.image.shape == lossless.image.shape and 0 < np.abs(g.image.astype(int) - lossless.image).mean() < 8


def test_dataset_layout_readers_and_truth(tmp_path):
    synth.write_dataset(tmp_path, num=16, split="eval", seed=1, comparisons=8, max_side=96)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["split"] == "eval" and {m["photo"] for m in meta["images"]} <= set(synth.photo_names("eval"))
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
        assert set(m["families"]) == set(m["classes"])
    described, report = read_llava_instruct(tmp_path / "describe.json", tmp_path)
    assert report.bad == 0
    for s, m in zip(described, meta["images"]):
        for turn in s.turns:  # every answer is one of the grammar's sentences, naming each present class
            assert single_image_grammar().matches(turn.answer)
            assert all(name in turn.answer for name in m["classes"])
    compared, report = read_coinstruct(tmp_path / "compare.json", tmp_path)
    assert report.bad == 0 and len(compared) == 8
    by_image = {m["image"]: m for m in meta["images"]}
    for record in json.loads((tmp_path / "compare.json").read_text()):
        group = [by_image[p] for p in record["image"]]
        question, answer = (t["value"] for t in record["conversations"])
        lines = question.split("\n")
        kind = next(k for k in COMPARISONS for line in lines if line in comparison_wordings(k, held_out=True))
        assert record["kind"] == kind  # recorded for eval's breakdown, and the one its wording belongs to
        if answer.startswith("The "):  # the picked image is the one the kind ranks first
            values = synth.comparison_values(kind, group)
            assert values[synth.ORDINALS.index(answer.split()[1])] == max(values)
    pairs = json.loads((tmp_path / "compare_pairs.json").read_text())
    assert len(pairs) == 8 and read_coinstruct(tmp_path / "compare_pairs.json", tmp_path)[1].bad == 0
    for record in pairs:  # two images, free-form answers, held-out phrasings (an eval split)
        group = [by_image[p] for p in record["image"]]
        question, answer = (t["value"].split("\n")[-1] for t in record["conversations"])
        assert len(group) == 2 and answer in ("The first image.", "The second image.")
        assert any(question in comparison_wordings(kind, held_out=True) for kind in COMPARISONS)


def test_same_seed_same_bytes(tmp_path):
    synth.write_dataset(tmp_path / "a", num=4, split="train", seed=5, comparisons=2, max_side=80)
    synth.write_dataset(tmp_path / "b", num=4, split="train", seed=5, comparisons=2, max_side=80)
    for name in ("qground.json", "describe.json", "compare.json", "compare_pairs.json", "images/train_000003.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_a_larger_set_reuses_the_images_an_earlier_one_holds(tmp_path):
    """Image i depends only on (seed, split, i): a set of 6 that starts from a set of 4 links those 4 and writes the
    same files as a set of 6 made from scratch; another seed or photo size is refused."""
    four = tmp_path / "four"
    synth.write_dataset(four, num=4, split="train", seed=5, comparisons=2, max_side=80)
    synth.write_dataset(tmp_path / "a", num=6, split="train", seed=5, comparisons=2, max_side=80, reuse=four)
    synth.write_dataset(tmp_path / "b", num=6, split="train", seed=5, comparisons=2, max_side=80)
    assert (tmp_path / "a" / "images/train_000003.png").samefile(four / "images/train_000003.png")
    for name in ("qground.json", "describe.json", "compare.json", "meta.json", "images/train_000005.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    for seed, side in ((6, 80), (5, 96)):
        with pytest.raises(ValueError, match="not"):
            synth.write_dataset(tmp_path / f"c{seed}{side}", 5, "train", seed, 2, max_side=side, reuse=four)


@pytest.mark.parametrize("shape", [(37, 90), (90, 37), (64, 64)])
def test_smooth_field_is_ndimages_gaussian_filter(shape):
    """The FFT blob field equals scipy's reflected-edge Gaussian filter, also when 4σ reaches past the image."""
    from scipy import ndimage

    noise = np.random.default_rng(0).standard_normal(shape)
    for sigma in (1.5, max(shape) / 7, max(shape) / 2):
        np.testing.assert_allclose(synth.smooth_field(noise, sigma), ndimage.gaussian_filter(noise, sigma), atol=1e-12)


def test_train_and_eval_photos_are_disjoint():
    names = {split: {p.name for p in synth.PHOTOS + POOL if p.split == split} for split in synth.SPLITS}
    assert not names["train"] & names["eval"] and not names["val"] & (names["train"] | names["eval"])
    assert all(p.license and p.origin for p in synth.PHOTOS)


def test_comparisons_without_an_answer_fail_clearly():
    same = {"image": "images/x.png", "scores": dict.fromkeys(CLASS_NAMES, 0.5), "luma": 0.5}
    with pytest.raises(ValueError, match="only 0 of 3 comparison groups have an unambiguous answer"):
        synth.comparison_records([same] * 4, 3, np.random.default_rng(0), "cmp_train")


def test_upscaled_sets_hold_large_photos_distorted_at_their_size(tmp_path):
    """``upscale``: the validation of large photos; every photo enlarged to [UPSCALE_MIN, upscale] px before its
    distortions, masks at the same size. Off (0), the images are as before (no extra draw)."""
    for i in range(3):
        g = synth.generate(i, "val", seed=5, upscale=1700)
        assert synth.UPSCALE_MIN - 1 <= max(g.image.shape[:2]) <= 1700
        assert all(m.shape == g.image.shape[:2] for m in g.masks.values())
        small = synth.generate(i, "val", seed=5, max_side=96)
        assert small.photo == g.photo  # drawn before the enlargement
    with pytest.raises(ValueError, match="upscale"):
        synth.write_dataset(tmp_path, num=1, split="val", seed=5, comparisons=1, upscale=800)
    synth.write_dataset(tmp_path, num=4, split="val", seed=5, comparisons=1, upscale=1700)
    assert json.loads((tmp_path / "meta.json").read_text())["upscale"] == 1700
    with pytest.raises(ValueError, match="upscale"):  # an upscaled set's images are not those of a plain one
        synth.write_dataset(tmp_path / "plain", num=2, split="val", seed=5, comparisons=1, reuse=tmp_path)


def test_large_sets_hold_photos_up_to_12_mp_enlarged_at_most_twice(tmp_path, monkeypatch):
    """``large``: each image at a longest side drawn in ``LARGE_SIDES``, its photo enlarged at most ``LARGE_ENLARGE``
    times, distorted at that size (masks too), from draws of its own; a large set is not a plain one."""
    sides = []
    real = synth.enlarge
    monkeypatch.setattr(
        synth, "enlarge", lambda img, side, most: sides.append((img.shape, side, most)) or real(img, side, most)
    )
    for i in range(3):
        g = synth.generate(i, "train", seed=5, large=True)
        shape, side, most = sides[-1]
        assert synth.LARGE_SIDES[0] <= side <= synth.LARGE_SIDES[1] and most == synth.LARGE_ENLARGE
        assert max(g.image.shape[:2]) == min(side, round(max(shape[:2]) * most)) or max(shape[:2]) >= side
        assert all(m.shape == g.image.shape[:2] for m in g.masks.values())
        assert not np.array_equal(g.image, synth.generate(i, "train", seed=5).image)
    big = np.zeros((100, 50, 3), np.uint8)
    assert synth.enlarge(big, 1000, 2.0).shape == (200, 100, 3) and synth.enlarge(big, 60, 2.0) is big
    with pytest.raises(ValueError, match="choose one"):
        synth.generate(0, "val", seed=5, upscale=1700, large=True)
    synth.write_dataset(tmp_path, num=4, split="val", seed=5, comparisons=1, large=True)
    assert json.loads((tmp_path / "meta.json").read_text())["large"] is True
    with pytest.raises(ValueError, match="large"):
        synth.write_dataset(tmp_path / "plain", num=2, split="val", seed=5, comparisons=1, reuse=tmp_path)


def test_comparisons_are_a_grammar_of_hundreds_of_wordings_per_kind_apart_from_the_held_out_ones():
    """Every comparison kind has well over a hundred training wordings; none is a held-out wording or a wording of
    another kind; the app's presets are among them."""
    from qground.questions import COMPARE_PRESETS

    held = set().union(*(comparison_wordings(kind, held_out=True) for kind in COMPARISONS))
    seen: set[str] = set()
    for kind in COMPARISONS:
        wordings = comparison_wordings(kind, held_out=False)
        assert len(wordings) >= 130 and not wordings & held and not wordings & seen, kind
        assert all(w[0].isupper() and w.endswith("?") and "{" not in w for w in wordings)
        seen |= wordings
    assert set(COMPARE_PRESETS.values()) <= seen


def test_every_held_out_comparison_wording_holds_a_word_no_training_comparison_has():
    """Held-out comparisons judge reading new words (a small LLM reads "most out of focus" as "most in focus" when
    "out of focus" was never compared with): each holds a word absent from every training comparison wording."""
    trained = {
        word for kind in COMPARISONS for q in comparison_wordings(kind, held_out=False) for word in normalize(q).split()
    }
    for kind in COMPARISONS:
        for question in comparison_wordings(kind, held_out=True):
            assert set(normalize(question).split()) - trained, question
