"""Overlay, areas, legend and annotations on small synthetic images and masks."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from qground.taxonomy import CLASS_NAMES, DISTORTION_COLORS
from qground.visualize import (
    area_percent,
    color_map,
    hex_to_rgb,
    legend_image,
    masks_to_annotations,
    overlay,
    region_location,
)

H, W = 24, 32


def random_image(h: int = H, w: int = W, seed: int = 0) -> np.ndarray:
    """A random uint8 (H, W, 3) image."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def rect(y0: int, y1: int, x0: int, x1: int, h: int = H, w: int = W) -> np.ndarray:
    """A bool (H, W) mask, True on rows y0..y1-1 and columns x0..x1-1."""
    mask = np.zeros((h, w), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def color(name: str) -> np.ndarray:
    """The class color as an int (3,) array."""
    return np.array(hex_to_rgb(DISTORTION_COLORS[name]))


def blend(pixels: np.ndarray, name: str, alpha: float) -> np.ndarray:
    """Reference tint of float pixels (..., 3) with the class color."""
    return pixels * (1 - alpha) + color(name) * alpha


def erode(mask: np.ndarray) -> np.ndarray:
    """Reference 4-neighbour erosion with the image edge repeated."""
    padded = np.pad(mask, 1, mode="edge")
    return mask & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]


def reference_overlay(image: np.ndarray, masks: dict[str, np.ndarray], alpha: float, width: int) -> np.ndarray:
    """Straightforward full-frame drawing, class by class in taxonomy order."""
    out = image.astype(np.float64)
    for name in CLASS_NAMES:
        if name in masks:
            mask = masks[name]
            out[mask] = blend(out[mask], name, alpha)
            core = mask
            for _ in range(width):
                core = erode(core)
            out[mask & ~core] = color(name)
    return np.rint(out).astype(np.uint8)


def test_hex_to_rgb():
    assert hex_to_rgb("#0072B2") == (0, 114, 178)
    assert hex_to_rgb("cc79a7") == (204, 121, 167)
    with pytest.raises(ValueError):
        hex_to_rgb("#12345")


def test_unmasked_pixels_unchanged_and_masked_pixels_tinted():
    image = random_image()
    mask = rect(4, 12, 6, 20)
    out = overlay(image, {"blur": mask}, alpha=0.45, outline=False)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.array_equal(out[~mask], image[~mask])
    expected = np.rint(blend(image[mask].astype(float), "blur", 0.45))
    assert np.abs(out[mask].astype(int) - expected).max() <= 1
    before = np.abs(image[mask].astype(int) - color("blur")).sum(axis=1)
    after = np.abs(out[mask].astype(int) - color("blur")).sum(axis=1)
    assert np.all(after <= before) and after.sum() < before.sum()


def test_input_is_not_modified_and_pil_input_matches_array():
    image = random_image()
    kept = image.copy()
    masks = {"noise": rect(0, 10, 0, 10)}
    out = overlay(image, masks)
    assert np.array_equal(image, kept)
    assert np.array_equal(overlay(Image.fromarray(image), masks), out)


@pytest.mark.parametrize("width", [1, 2])
def test_outline_pixels_have_the_class_color(width):
    image = random_image()
    mask = rect(5, 15, 8, 24)
    out = overlay(image, {"jitter": mask}, outline_width=width)
    ring = mask & ~rect(5 + width, 15 - width, 8 + width, 24 - width)
    assert np.all(out[ring] == color("jitter"))
    inside = mask & ~ring
    assert not np.any(np.all(out[inside] == color("jitter"), axis=1))
    assert np.array_equal(out[~mask], image[~mask])


def test_mask_is_not_outlined_along_the_image_border():
    image = random_image()
    out = overlay(image, {"overexposure": rect(0, H, 0, W // 2)}, alpha=0.0, outline_width=1)
    assert np.all(out[:, W // 2 - 1] == color("overexposure"))  # the inner edge
    assert np.array_equal(out[:, : W // 2 - 1], image[:, : W // 2 - 1])  # alpha 0: the rest is untouched


def test_later_classes_are_drawn_over_earlier_ones_whatever_the_dict_order():
    image = random_image()
    masks = {"noise": rect(0, 12, 0, 16), "blur": rect(6, 18, 8, 24)}  # noise comes after blur in the taxonomy
    out = overlay(image, masks, alpha=0.5, outline=False)
    overlap = masks["noise"] & masks["blur"]
    expected = np.rint(blend(blend(image[overlap].astype(float), "blur", 0.5), "noise", 0.5))
    assert np.abs(out[overlap].astype(int) - expected).max() <= 1


def test_strips_match_a_full_frame_reference():
    rng = np.random.default_rng(3)
    h, w = 152, 40  # more rows than one strip, so strip edges and their context rows are exercised
    image = random_image(h, w, seed=1)
    # 4x4 blocks: mask edges fall on the strip edges (multiples of 64 rows) and elsewhere
    masks = {name: rng.random((h // 4, w // 4)).repeat(4, 0).repeat(4, 1) < 0.5 for name in CLASS_NAMES}
    out = overlay(image, masks, alpha=0.3, outline_width=3)
    assert np.abs(out.astype(int) - reference_overlay(image, masks, 0.3, 3)).max() <= 1


def test_class_toggles_skip_classes():
    image = random_image()
    masks = {"blur": rect(0, 8, 0, 8), "low_light": rect(10, 20, 10, 20)}
    out = overlay(image, masks, classes=["Low light"])
    assert np.array_equal(out[masks["blur"]], image[masks["blur"]])
    assert not np.array_equal(out[masks["low_light"]], image[masks["low_light"]])
    assert np.array_equal(overlay(image, masks, classes=[]), image)


def test_mask_shape_mismatch_raises():
    with pytest.raises(ValueError, match=r"'low light' has shape \(32, 24\), expected \(H, W\) = \(24, 32\)"):
        overlay(random_image(), {"low light": np.zeros((W, H), dtype=bool)})


def test_unknown_class_and_non_bool_mask_raise():
    with pytest.raises(KeyError, match="unknown distortion class"):
        overlay(random_image(), {"haze": rect(0, 2, 0, 2)})
    with pytest.raises(TypeError, match="bool"):
        overlay(random_image(), {"blur": rect(0, 2, 0, 2).astype(np.float32)})


def test_area_percent_exact():
    areas = area_percent({"noise": rect(0, 6, 0, 8), "blur": rect(0, H, 0, W), "jitter": rect(0, 0, 0, 0)})
    assert list(areas) == ["blur", "jitter", "noise"]  # taxonomy order
    assert areas == {"blur": 100.0, "jitter": 0.0, "noise": 100.0 * 48 / (H * W)}


def test_region_location_words():
    h3, w3 = H // 3, W // 3  # the 3 × 3 cells of the words
    assert region_location(rect(0, H, 0, W)) == "the whole image"
    assert region_location(rect(0, 2 * h3, 0, W)) == "most of the image"
    assert region_location(rect(0, h3, 0, w3)) == "the upper left"
    assert region_location(rect(H - h3, H, W - w3, W)) == "the lower right"
    assert region_location(rect(h3, 2 * h3, w3, 2 * w3)) == "the center"
    assert region_location(rect(0, h3, w3, 2 * w3)) == "the top"
    assert region_location(rect(h3, 2 * h3, 0, w3)) == "the left side"
    assert region_location(rect(0, 0, 0, 0)) == "nowhere"


def test_legend_is_rgb_with_every_class_color():
    legend = legend_image()
    assert isinstance(legend, Image.Image) and legend.mode == "RGB"
    pixels = np.asarray(legend).reshape(-1, 3)
    for name in CLASS_NAMES:
        assert np.any(np.all(pixels == color(name), axis=1)), name
    small = np.asarray(legend_image(["blur"])).reshape(-1, 3)
    assert not np.any(np.all(small == color("noise"), axis=1))


def test_annotations_for_gradio():
    masks = {"low_light": rect(0, 4, 0, 4), "blur": rect(2, 6, 2, 6)}
    annotations = masks_to_annotations(masks, opacity=0.6)
    assert [label for _, label in annotations] == ["blur", "low light"]
    for array, label in annotations:
        source = masks["low_light" if label == "low light" else label]
        assert array.dtype == np.float32 and array.shape == (H, W)
        assert np.all((array >= 0) & (array <= 1))
        assert np.allclose(array[source], 0.6) and np.all(array[~source] == 0)
    assert set(color_map()) == {label for _, label in annotations} | {"jitter", "overexposure", "noise"}
    assert color_map() == DISTORTION_COLORS
