"""Guided-filter mask refinement (qground.refine) and its use when masks are brought to the photo's frame."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import iou
from qground.config import QGroundConfig
from qground.detail import luminance
from qground.masks import to_original_frame
from qground.policy import InferencePolicy
from qground.processor import QGroundProcessor
from qground.refine import GUIDE_OF_CLASS, box_filter, guide, guided_filter, refine_logits

NANO = Path(__file__).resolve().parents[1] / "assets" / "qground-nano"


def darkened(h: int, w: int, edge: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A textured uint8 photo (H, W, 3) whose columns left of ``edge`` are darkened by a gamma curve and a gain (low
    light, as the data engine makes it), and that region's bool mask."""
    rng = np.random.default_rng(seed)
    small = rng.uniform(0.3, 0.9, (h // 4, w // 4, 3)).astype(np.float32)
    base = np.asarray(Image.fromarray((small * 255).astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC)) / 255
    truth = np.zeros((h, w), dtype=bool)
    truth[:, :edge] = True
    out = np.where(truth[..., None], 0.35 * base**2.2, base)
    return (out * 255).round().astype(np.uint8), truth


@pytest.mark.parametrize("r", [1, 3, 12])
def test_box_filter_is_the_mean_over_the_window_inside_the_image(r):
    x = torch.rand(2, 17, 23)
    expected = F.avg_pool2d(x[:, None], 2 * r + 1, stride=1, padding=r, count_include_pad=False)[:, 0]
    assert torch.allclose(box_filter(x, r), expected, atol=1e-6)


def test_guides_are_standardized_one_per_trace():
    rgb, _ = darkened(40, 60, 20)
    y = luminance(rgb)
    assert y.shape == (40, 60) and 0 <= y.min() and y.max() <= 1
    for kind in set(GUIDE_OF_CLASS.values()):
        g = guide(y, kind)
        assert g.shape == (40, 60) and g.dtype == torch.float32
        assert abs(float(g.mean())) < 1e-4 and abs(float(g.std()) - 1) < 1e-3
    dark = guide(y, "log luminance")
    assert dark[:, :20].mean() < -0.5 < 0.5 < dark[:, 20:].mean()  # the darkened columns stand apart
    with pytest.raises(ValueError, match="unknown guide"):
        guide(y, "hue")


def test_guided_filter_lays_a_soft_misplaced_edge_onto_the_guide_edge():
    """The model's mask edge: a soft ramp 4 px right of the true edge; a window wider than that moves it onto the dark
    region's edge."""
    rgb, truth = darkened(64, 96, 40)
    x = torch.arange(96, dtype=torch.float32)
    p = torch.sigmoid((44 - x) / 4).expand(64, 96)
    q = guided_filter(guide(luminance(rgb), GUIDE_OF_CLASS["low light"]), p, r=16, eps=0.01)
    before, after = iou((p > 0.5).numpy(), truth), iou((q > 0.5).numpy(), truth)
    assert before < 0.92 and after > 0.99


def test_refine_leaves_unnamed_and_empty_masks_alone_and_checks_shapes():
    rgb, truth = darkened(32, 48, 20)
    logits = torch.stack([torch.full((32, 48), -1.0), torch.from_numpy(truth * 4.0 - 2.0).float(), torch.randn(32, 48)])
    out = refine_logits(logits, rgb, ["low light", "low light", None], radius=4, eps=0.01)
    assert torch.equal(out[0], logits[0]) and torch.equal(out[2], logits[2])  # nothing positive / no class: as it was
    assert not torch.equal(out[1], logits[1]) and np.array_equal(out[1].numpy() > 0, truth)
    with pytest.raises(ValueError, match="masks are"):
        refine_logits(logits, rgb[:-1], ["low light"] * 3, radius=4, eps=0.01)
    with pytest.raises(ValueError, match="class names"):
        refine_logits(logits, rgb, ["low light"], radius=4, eps=0.01)


@pytest.mark.parametrize(("radius", "eps"), [(-1.0, 0.01), (float("nan"), 0.01), (2.0, 0.0)])
def test_policy_refuses_bad_refinement_settings(radius, eps):
    with pytest.raises(ValueError, match="mask_refine"):
        InferencePolicy(mask_refine_radius=radius, mask_refine_eps=eps)


def test_policy_refuses_a_radius_beyond_the_model_input(tiny):
    with pytest.raises(ValueError, match="exceeds the model's input size"):
        InferencePolicy(mask_refine_radius=1e6).check_model(tiny[0].config)


def test_refinement_settings_round_trip(tmp_path):
    InferencePolicy(mask_refine_radius=6.0, mask_refine_eps=0.001).save(tmp_path)
    loaded = InferencePolicy.load(tmp_path)
    assert (loaded.mask_refine_radius, loaded.mask_refine_eps) == (6.0, 0.001)


@pytest.mark.parametrize("detail_max_side", [None, 72])
def test_masks_are_refined_on_the_photo(tiny, detail_max_side):
    """Coarse model-frame logits of a dark region → masks at the original size whose edge follows the photo when
    refinement is on; with ``detail_max_side`` (the shipped nano's config) the photo is refined shrunk, then the
    masks are upsampled."""
    _, tokenizer, processor = tiny
    config = processor.config if detail_max_side is None else QGroundConfig.load(NANO)
    if detail_max_side is not None:
        config = dataclasses.replace(config, detail_max_side=detail_max_side)
    processor = QGroundProcessor(tokenizer, config)
    rgb, truth = darkened(60, 96, 37)
    image = Image.fromarray(rgb)
    meta = processor.preprocess_image(image)[1]  # keeps no photo: refinement is off
    kept = processor.preprocess_image(image, keep_photo=True)[1]  # the photo (shrunk to detail_max_side) to refine on
    assert meta.photo is None and kept.photo.shape == ((60, 96, 3) if detail_max_side is None else (45, 72, 3))
    h, w = meta.resized_size
    s = config.image_size
    edge = 37 * w / 96 + 4  # the model's edge: soft and 4 model-input pixels right of the true one
    logits = torch.full((1, s, s), -8.0)
    logits[0, :h, :w] = (edge - 0.5 - torch.arange(w, dtype=torch.float32)) / 2
    plain = to_original_frame(logits, meta, ["low light"])
    refined = to_original_frame(logits, kept, ["low light"], radius=8.0)
    assert plain.shape == refined.shape == (1, 60, 96)
    before, after = iou(plain[0].numpy() > 0, truth), iou(refined[0].numpy() > 0, truth)
    assert after > before + 0.04 and after > 0.95
    unnamed = to_original_frame(logits, kept, [None], radius=8.0)  # upsampled (through the detail size)
    assert torch.equal(unnamed > 0, plain > 0)
    assert torch.equal(to_original_frame(logits, meta, radius=8.0), plain)  # no photo: only upsampled
