"""Native-resolution detail channels respond to the distortions they are meant to expose."""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter
from scipy import ndimage

from qground.builder import config_nano, config_tiny
from qground.config import NUM_DETAIL_CHANNELS, ConfigError
from qground.detail import _CB, _CR, _noise_energy, detail_channels
from qground.processor import QGroundProcessor
from training.data import synth


@pytest.fixture(scope="module")
def texture() -> np.ndarray:
    rng = np.random.default_rng(0)
    small = (rng.random((40, 60, 3)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((480, 320), Image.Resampling.BICUBIC))


def test_shapes_and_finite(texture):
    d = detail_channels(texture, (32, 48))
    assert d.shape == (NUM_DETAIL_CHANNELS, 32, 48) and d.dtype.is_floating_point and bool(d.isfinite().all())


def test_noise_raises_residual_energy(texture):
    rng = np.random.default_rng(1)
    noisy = np.clip(texture + rng.normal(0, 20, texture.shape), 0, 255).astype(np.uint8)
    assert detail_channels(noisy, (8, 12))[0].mean() > detail_channels(texture, (8, 12))[0].mean() + 0.3


def test_chroma_channel_sees_color_noise_that_gray_texture_does_not_mask():
    """Gray texture raises the luma residual (channel 0) as noise does, but not the chroma residual (channel 8):
    noise drawn per RGB channel raises it, noise equal in all three channels (luma only) does not."""
    rng = np.random.default_rng(3)
    gray = np.asarray(Image.fromarray((rng.random((80, 120)) * 255).astype(np.uint8)).resize((480, 320)))
    textured = np.repeat(gray[..., None], 3, -1)
    flat = np.full_like(textured, 128)

    def channels(img: np.ndarray) -> torch.Tensor:
        return detail_channels(img, (8, 12), chroma=True).mean(dim=(1, 2))

    def noisy(img: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        return np.clip(img + rng.normal(0, 8, shape), 0, 255).astype(np.uint8)

    assert detail_channels(textured, (8, 12)).shape[0] == NUM_DETAIL_CHANNELS
    assert channels(textured).shape == (NUM_DETAIL_CHANNELS + 1,)
    assert channels(textured)[0] > channels(noisy(flat, flat.shape))[0]  # luma: texture reads as much as noise
    assert channels(textured)[8] < channels(noisy(flat, flat.shape))[8] - 0.5  # chroma: not
    assert channels(noisy(textured, textured.shape))[8] > channels(textured)[8] + 0.5
    assert abs(channels(noisy(textured, textured.shape[:2] + (1,)))[8] - channels(textured)[8]) < 0.1
    assert torch.equal(detail_channels(textured, (8, 12), chroma=True)[:8], detail_channels(textured, (8, 12)))
    # read on Cb and Cr box-averaged 2 × 2 (JPEG's chroma grid): PIL's uint8 reduce, within rounding of a float average
    grainy = noisy(textured, textured.shape)
    x = torch.from_numpy(grainy.astype(np.float32)) / 255
    planes = F.avg_pool2d(torch.stack([x @ torch.tensor(_CB), x @ torch.tensor(_CR)]), 2)
    reference = (torch.log(sum(_noise_energy(p, (8, 12)) for p in planes) + 1e-6) + 7) / 4
    assert torch.allclose(detail_channels(grainy, (8, 12), chroma=True)[8], reference, atol=0.01)
    with pytest.raises(ConfigError, match="chroma_noise_channel needs detail_channels"):
        dataclasses.replace(config_tiny(), chroma_noise_channel=True)
    with pytest.raises(ConfigError, match="vision.num_channels must be 12"):
        dataclasses.replace(config_nano(), vision=dataclasses.replace(config_nano().vision, num_channels=11))


def test_blur_lowers_detail_energy(texture):
    blurred = np.asarray(Image.fromarray(texture).filter(ImageFilter.GaussianBlur(4)))
    assert detail_channels(blurred, (8, 12))[1].mean() < detail_channels(texture, (8, 12))[1].mean() - 0.3


def test_motion_blur_raises_coherence(texture):
    kernel = np.ones(15) / 15  # horizontal motion: gradients become mostly vertical
    moved = np.stack(
        [np.apply_along_axis(lambda r: np.convolve(r, kernel, "same"), 1, texture[..., c]) for c in range(3)], -1
    ).astype(np.uint8)
    assert detail_channels(moved, (8, 12))[3, 1:-1, 1:-1].mean() > detail_channels(texture, (8, 12))[3].mean() + 0.2


def test_blur_lowers_fine_scale_more_than_coarse():
    rng = np.random.default_rng(2)
    small = (rng.random((160, 240, 3)) * 255).astype(np.uint8)  # detail down to 2 pixels
    fine = np.asarray(Image.fromarray(small).resize((480, 320), Image.Resampling.BICUBIC))
    blurred = np.asarray(Image.fromarray(fine).filter(ImageFilter.GaussianBlur(2)))
    sharp, soft = detail_channels(fine, (8, 12)), detail_channels(blurred, (8, 12))
    assert (sharp[1] - soft[1]).mean() > (sharp[2] - soft[2]).mean() + 0.2


def test_motion_blur_is_directional_and_defocus_is_not():

    rng = np.random.default_rng(3)
    small = (rng.random((160, 240, 3)) * 255).astype(np.uint8)
    fine = np.asarray(Image.fromarray(small).resize((480, 320), Image.Resampling.BICUBIC)).astype(np.float32)
    diagonal = np.eye(13) / 13  # camera shake at 45°
    shaken = np.stack([ndimage.convolve(fine[..., c], diagonal) for c in range(3)], -1).astype(np.uint8)
    defocused = np.asarray(Image.fromarray(fine.astype(np.uint8)).filter(ImageFilter.GaussianBlur(3)))
    values = [detail_channels(a, (8, 12))[5].mean() for a in (fine.astype(np.uint8), shaken, defocused)]
    assert values[1] > 2 * max(values[0], values[2])


def test_clipped_and_dark_fractions(texture):
    bright = np.clip(texture.astype(np.float32) * 3, 0, 255).astype(np.uint8)
    dark = (texture * 0.1).astype(np.uint8)
    assert detail_channels(bright, (8, 12))[6].mean() > 0.5 > detail_channels(texture, (8, 12))[6].mean()
    assert detail_channels(dark, (8, 12))[7].mean() > 0.5 > detail_channels(texture, (8, 12))[7].mean()


def test_tiny_image_has_every_channel():
    d = detail_channels(np.full((2, 3, 3), 128, np.uint8), (2, 3))
    assert d.shape == (NUM_DETAIL_CHANNELS, 2, 3) and bool(d.isfinite().all())


def test_photos_larger_than_detail_max_side_are_read_at_that_size(texture):
    """With ``detail_max_side`` the processor computes the detail channels of a larger photo on the photo shrunk to
    that longest side (the scale of the largest training photos; qground-nano's matches the data engine's), and of a
    photo within it at its own resolution; the RGB input does not change. The photo kept for mask refinement is the
    same shrunk photo, in the ``ImageMeta``."""
    config = dataclasses.replace(config_nano(), detail_max_side=240, noise_max_side=0)  # noise: the next test
    assert config_nano().evidence_max_side == synth.MAX_SIDE
    capped = QGroundProcessor(None, config)
    native = QGroundProcessor(None, dataclasses.replace(config, detail_max_side=0))
    big = Image.fromarray(texture)  # 480 × 320
    x, meta = capped.preprocess_image(big, keep_photo=True)
    h, w = meta.resized_size
    s = config.image_size
    shrunk = np.asarray(big.resize((240, 160), Image.Resampling.LANCZOS, reducing_gap=1.5))
    mean, std = config.image_mean[3], config.image_std[3]
    assert x.shape == (config.vision.num_channels, s, s)
    expected = (detail_channels(shrunk, (h, w), chroma=config.chroma_noise_channel) - mean) / std
    assert torch.allclose(x[3:, :h, :w], expected, atol=1e-5)
    assert np.array_equal(meta.photo, shrunk)
    plain, plain_meta = capped.preprocess_image(big)
    assert torch.equal(plain, x) and plain_meta.photo is None
    y, _ = native.preprocess_image(big)
    assert torch.equal(x[:3], y[:3]) and not torch.allclose(x[3:], y[3:], atol=1e-2)
    small = Image.fromarray(texture[:200, :200])
    assert torch.equal(capped.preprocess_image(small)[0], native.preprocess_image(small)[0])
    with pytest.raises(ConfigError, match="detail_max_side needs detail_channels"):
        dataclasses.replace(config_tiny(), detail_max_side=640)


def test_the_refined_photo_is_a_smaller_copy_with_evidence_max_side(texture):
    """qground-nano reads its detail channels on a 12 MP photo itself (``detail_max_side`` 4096) and refines masks,
    whose radii are in the pixels of the training photos, on the photo shrunk to ``evidence_max_side`` (1280); a
    photo within that side is refined on itself."""
    assert (config_nano().detail_max_side, config_nano().evidence_max_side) == (4096, synth.MAX_SIDE)
    config = dataclasses.replace(config_nano(), detail_max_side=480, evidence_max_side=240)
    processor = QGroundProcessor(None, config)
    photo = Image.fromarray(texture)  # 480 × 320
    x, meta = processor.preprocess_image(photo, keep_photo=True)
    h, w = meta.resized_size
    shrunk = np.asarray(photo.resize((240, 160), Image.Resampling.LANCZOS, reducing_gap=1.5))
    mean, std = torch.tensor(config.image_mean[3:])[:, None, None], torch.tensor(config.image_std[3:])[:, None, None]
    assert torch.allclose(x[3:, :h, :w], (detail_channels(texture, (h, w), chroma=True) - mean) / std, atol=1e-5)
    assert np.array_equal(meta.photo, shrunk)
    within = Image.fromarray(texture[:200, :200])
    assert np.array_equal(processor.preprocess_image(within, keep_photo=True)[1].photo, texture[:200, :200])
    with pytest.raises(ConfigError, match="evidence_max_side"):
        dataclasses.replace(config, evidence_max_side=-1)


def test_the_noise_channel_reads_a_large_photo_at_its_own_resolution(texture):
    """Shrinking a photo averages its pixel noise away, so with ``noise_max_side`` the noise channel (and only it) of
    a photo larger than ``detail_max_side`` is read on the photo itself, or shrunk to ``noise_max_side``; a photo
    within ``detail_max_side`` is read as before. White noise of σ = 0.04 on flat gray reads the same at 1600 px as at
    400 px that way, and about 4× weaker in amplitude when the 1600-px photo is first shrunk to 400 px."""
    rng = np.random.default_rng(0)

    def noisy(side: int) -> np.ndarray:
        return (np.clip(0.5 + rng.normal(0, 0.04, (side, side)), 0, 1) * 255 + 0.5).astype(np.uint8)[..., None]

    small, big = np.repeat(noisy(400), 3, -1), np.repeat(noisy(1600), 3, -1)
    shrunk = np.asarray(Image.fromarray(big).resize((400, 400), Image.Resampling.LANCZOS, reducing_gap=3.0))
    at_native = detail_channels(shrunk, (16, 16), noise_rgb=big)[0].median()
    assert abs(at_native - detail_channels(small, (16, 16))[0].median()) < 0.02
    energy_ratio = np.exp(4.0 * float(at_native - detail_channels(shrunk, (16, 16))[0].median()))  # log scale 4
    assert 8 < energy_ratio < 32  # ≈ 16: a quarter of the amplitude

    config = dataclasses.replace(config_nano(), detail_max_side=240, noise_max_side=480)
    processor = QGroundProcessor(None, config)
    photo = Image.fromarray(np.tile(texture, (3, 3, 1))[:960, :1440])  # 1440 × 960
    x, meta = processor.preprocess_image(photo)
    h, w = meta.resized_size
    at_240 = np.asarray(photo.resize((240, 160), Image.Resampling.LANCZOS, reducing_gap=1.5))
    at_480 = np.asarray(photo.resize((480, 320), Image.Resampling.LANCZOS, reducing_gap=1.5))
    mean, std = torch.tensor(config.image_mean[3:])[:, None, None], torch.tensor(config.image_std[3:])[:, None, None]
    expected = (detail_channels(at_240, (h, w), noise_rgb=at_480, chroma=True) - mean) / std
    assert torch.allclose(x[3:, :h, :w], expected, atol=1e-5)
    capped = QGroundProcessor(None, dataclasses.replace(config, noise_max_side=0)).preprocess_image(photo)[0]
    chroma = 3 + NUM_DETAIL_CHANNELS  # the chroma noise channel is read on the noise channel's photo too
    assert torch.equal(x[4:chroma], capped[4:chroma]) and not torch.allclose(x[3], capped[3], atol=1e-2)
    assert not torch.allclose(x[chroma], capped[chroma], atol=1e-2)
    within = Image.fromarray(texture[:200, :200])
    unlimited = QGroundProcessor(None, dataclasses.replace(config, noise_max_side=0))
    assert torch.equal(processor.preprocess_image(within)[0], unlimited.preprocess_image(within)[0])
    with pytest.raises(ConfigError, match="noise_max_side"):
        dataclasses.replace(config, noise_max_side=200)
    with pytest.raises(ConfigError, match="noise_max_side"):
        dataclasses.replace(config, detail_max_side=0)
