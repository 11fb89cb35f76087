"""Grounding metrics on hand-made masks, description class extraction, comparison parsing, the classical baseline."""

import re

import numpy as np
import pytest

from conftest import iou
from qground.baseline import baseline_masks, cell_size
from qground.evaluate import GroundingMetrics, comparison_accuracy, description_f1, named_classes
from qground.naming import parse_choice, question_options

H, W = 40, 50  # 2000 pixels: 0.1 % is 2 pixels


def box(y0: int, y1: int, x0: int, x1: int, shape: tuple[int, int] = (H, W)) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


# -- grounding metrics -------------------------------------------------------------------------------------------------
@pytest.fixture
def metrics() -> GroundingMetrics:
    m = GroundingMetrics()
    # A: blur predicted twice as large (I 100, U 200); noise missed (U 100); jitter predicted, not true (U 100).
    m.add(
        {"blur": box(0, 10, 0, 20), "jitter": box(30, 40, 40, 50)},
        {"blur": box(0, 10, 0, 10), "noise": box(20, 30, 0, 10)},
    )
    # B: blur exact (I = U = 200); keys by display name work.
    m.add({"Blur": box(0, 20, 0, 10)}, {"blur": box(0, 20, 0, 10)})
    # C: clean; a 1-pixel noise mask (0.05 %) counts as no mask for the clean rate, but still adds U 1.
    m.add({"noise": box(0, 1, 0, 1)}, {})
    # D: clean (an all-zero ground-truth mask, keyed by file key); a 5 % overexposure mask (U 100).
    m.add({"overexposure": box(0, 10, 0, 10)}, {"low_light": np.zeros((H, W), dtype=bool)})
    return m


def test_per_class_iou_and_acc(metrics):
    per_class = metrics.summary()["per_class"]
    assert per_class["blur"] == {"iou": 0.75, "acc": 1.0, "gt_pixels": 300, "clean_false_alarms": 0}
    assert per_class["noise"] == {"iou": 0.0, "acc": 0.0, "gt_pixels": 100, "clean_false_alarms": 0}
    assert per_class["jitter"] == {"iou": 0.0, "acc": None, "gt_pixels": 0, "clean_false_alarms": 0}
    # D's 5 % mask is a false alarm on a clean image; C's 1-pixel one is not.
    assert per_class["overexposure"] == {"iou": 0.0, "acc": None, "gt_pixels": 0, "clean_false_alarms": 1}
    assert per_class["low light"] == {"iou": None, "acc": None, "gt_pixels": 0, "clean_false_alarms": 0}


def test_mean_and_cumulative_metrics(metrics):
    s = metrics.summary()
    assert s["images"] == 4 and s["clean_images"] == 2
    assert s["mIoU"] == pytest.approx((0.75 + 0 + 0 + 0) / 4)  # low light (None) excluded
    assert s["mAcc"] == pytest.approx((1.0 + 0.0) / 2)  # classes with ground truth only
    assert s["gIoU"] == pytest.approx((0.5 + 0 + 0 + 1.0 + 0 + 0) / 6)  # pairs with non-empty pred ∪ gt
    assert s["cIoU"] == pytest.approx(300 / (400 + 101 + 100 + 100))
    assert s["clean_rate"] == 0.5


def test_table_and_undefined_values(metrics):
    table = metrics.table("model")
    assert "mIoU" in table and "0.188" in table and "clean-image rate" in table
    assert re.search(r"false alarms overexposure +1$", table, re.M)
    assert re.search(r"false alarms noise +0$", table, re.M)
    assert table.splitlines()[0].rstrip().endswith("model")
    empty = GroundingMetrics().summary()
    assert empty["mIoU"] is None and empty["gIoU"] is None and empty["clean_rate"] is None and empty["cIoU"] is None


def test_masks_of_one_image_must_share_a_shape():
    with pytest.raises(ValueError, match="shape"):
        GroundingMetrics().add({"blur": np.zeros((4, 4), bool)}, {"blur": np.zeros((4, 5), bool)})


# -- descriptions ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The image suffers from severe blur in the background and some noise.", {"blur", "noise"}),
        ("Heavy motion blur, but no noise.", {"jitter"}),
        ("The photo is too dark and grainy; the sky is overexposed.", {"low light", "noise", "overexposure"}),
        ("Over-exposed sky, under exposed foreground.", {"overexposure", "low light"}),
        ("The blurriness and graininess are strong, and it is darker.", {"blur", "noise", "low light"}),
        ("Camera shake made the shot jittery.", {"jitter"}),
        ("LOW-LIGHT scene with Noise.", {"low light", "noise"}),
        # typos
        ("The photo is very bluryy and noizy.", {"blur", "noise"}),
        ("Slight motion blurr and low ligt.", {"jitter", "low light"}),
        ("The highlights are overexposd.", {"overexposure"}),
        # negations
        ("There is no obvious distortion in the image.", set()),
        ("There is no noise, but the image is blurry.", {"blur"}),
        ("The image is sharp, without blur or noise.", set()),
        ("Not noisy and not blurry, but slightly dark.", {"low light"}),
        ("There are no visible signs of camera shake or noise.", set()),
        ("Neither blurry nor noisy.", set()),
        ("It doesn't look noisy.", set()),
        ("Noise-free but overexposed.", {"overexposure"}),
        ("The image is not only noisy but also blurry.", {"noise", "blur"}),
        ("No, the image is blurry.", {"blur"}),
        # words that look like class words but are not
        ("A blue shape in the shade near a train on a rainy day.", set()),
    ],
)
def test_named_classes(text, expected):
    assert named_classes(text) == expected


def test_description_f1_is_micro_over_item_class_pairs():
    preds = ["Blurry and noisy.", "There is no obvious distortion.", "Rather dark."]
    refs = ["The image is blurred.", "Visible noise.", "Low light."]
    # tp: blur, low light; fp: noise (item 1); fn: noise (item 2)
    assert description_f1(preds, refs) == {
        "precision": 2 / 3,
        "recall": 2 / 3,
        "f1": 2 / 3,
        "tp": 2,
        "fp": 1,
        "fn": 1,
        "items": 3,
    }
    assert description_f1(["clean"], ["no distortion"])["f1"] is None


# -- comparisons -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("The second image.", 1),
        ("B", 1),
        ("B.", 1),
        ("(C)", 2),
        ("b", 1),
        ("B. The second image", 1),
        ("Image B", 1),
        ("Image 2", 1),
        ("image two", 1),
        ("the 2nd one", 1),
        ("first", 0),
        ("The first image is sharper than the second.", 0),
        ("The latter.", 2),
        ("The answer is A.", 0),
        ("A blurry picture.", None),
        ("Both look the same.", None),
        ("The fifth image.", None),
        ("Image D", None),
    ],
)
def test_parse_choice(answer, expected):
    assert parse_choice(answer, 3) == expected


def test_option_letters_follow_the_questions_options():
    question = "Which image is sharper?\nA. The second image\nB. The first image"
    options = question_options(question, 2)
    assert options == {"A": 1, "B": 0}
    assert parse_choice("A", 2, options) == 1
    assert question_options("Which image is sharper? A. The first image B. The second image", 2) == {"A": 0, "B": 1}
    result = comparison_accuracy(
        ["A", "The first image.", "I cannot tell.", "The third image."],
        ["The second image.", "B", "A", "The third image."],
        [2, 2, 2, 3],
        [question] * 3 + ["Which image is noisier?"],
    )
    assert result == {
        "accuracy": 3 / 4,
        "correct": 3,
        "unparsed": 1,
        "items": 4,
        "by_images": {"2": {"accuracy": 2 / 3, "items": 3}, "3": {"accuracy": 1.0, "items": 1}},
        "by_form": {"free-form": {"accuracy": 1.0, "items": 1}, "multiple choice": {"accuracy": 2 / 3, "items": 3}},
    }
    with pytest.raises(ValueError, match="names none"):
        comparison_accuracy(["A"], ["neither"], [2])


# -- classical baseline ------------------------------------------------------------------------------------------------
BH, BW = 200, 250  # not a multiple of the cell size (8 px)


def gradient_image() -> np.ndarray:
    """A clean smooth (BH, BW, 3) float image: horizontal luminance ramp 60 → 190 with a slight vertical tint."""
    ramp = np.linspace(60, 190, BW)[None, :, None]
    tint = np.linspace(-10, 10, BH)[:, None, None] * np.array([1.0, 0.0, -1.0])
    return np.broadcast_to(ramp + tint, (BH, BW, 3)).copy()


def textured_image() -> np.ndarray:
    """A sharp texture: the gradient plus random ±40 blocks of 8×8 px (hard edges everywhere), float (BH, BW, 3)."""
    rng = np.random.default_rng(0)
    blocks = rng.uniform(-40, 40, size=(BH // 8 + 1, BW // 8 + 1, 1)).repeat(8, 0).repeat(8, 1)[:BH, :BW]
    return gradient_image() + blocks


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


REGION = box(45, 141, 61, 173, (BH, BW))  # 96 × 112 px, not aligned to the 8-px cells


def test_baseline_finds_an_overexposed_square():
    image = textured_image()
    image[REGION] = 255.0
    masks = baseline_masks(to_uint8(image))
    assert cell_size(BH, BW) == 8
    assert all(m.shape == (BH, BW) and m.dtype == bool for m in masks.values())
    assert iou(masks["overexposure"], REGION) >= 0.5


def test_baseline_finds_a_dark_region():
    image = textured_image()
    image[REGION] *= 0.12
    assert iou(baseline_masks(to_uint8(image))["low light"], REGION) >= 0.5


def test_baseline_finds_a_noisy_region():
    image = gradient_image()
    noise = np.random.default_rng(1).normal(0.0, 25.0, size=image.shape)
    image[REGION] += noise[REGION]
    masks = baseline_masks(to_uint8(image))
    assert iou(masks["noise"], REGION) >= 0.5


def test_baseline_is_quiet_on_a_clean_smooth_image():
    masks = baseline_masks(to_uint8(gradient_image()))
    assert all(m.mean() < 0.01 for m in masks.values()), {k: m.mean() for k, m in masks.items()}
