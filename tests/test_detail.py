"""Native-resolution detail channels respond to the distortions they are meant to expose."""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter
from scipy import ndimage
from skimage.draw import line as draw_line

from qground.builder import config_nano, config_tiny
from qground.config import NUM_DETAIL_CHANNELS, ConfigError
from qground.detail import (
    _CB,
    _CR,
    LOG_CONTRAST_OFFSET,
    _halved,
    _noise_energy,
    detail_channels,
    log_contrast,
    motion_signature,
    region_contrast,
)
from qground.policy import LOG_CONTRAST, MOTION_SIGNATURE
from qground.processor import QGroundProcessor
from training.data import synth
from training.data.distortions import convolve


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
    photo within it at its own resolution; the RGB input does not change. The evidence maps asked for (the gates'
    and blends') and the photo kept for mask refinement come from the same shrunk photo; the maps travel in the
    ``ImageMeta`` (0 in the padding), not as channels."""
    config = dataclasses.replace(config_nano(), detail_max_side=240, noise_max_side=0)  # noise: the next test
    assert config_nano().evidence_max_side == synth.MAX_SIDE
    capped = QGroundProcessor(None, config)
    native = QGroundProcessor(None, dataclasses.replace(config, detail_max_side=0))
    big = Image.fromarray(texture)  # 480 × 320
    x, meta = capped.preprocess_image(big, evidence=frozenset({MOTION_SIGNATURE, LOG_CONTRAST}), keep_photo=True)
    h, w = meta.resized_size
    s = config.image_size
    shrunk = np.asarray(big.resize((240, 160), Image.Resampling.LANCZOS, reducing_gap=1.5))
    mean, std = config.image_mean[3], config.image_std[3]
    assert x.shape == (config.vision.num_channels, s, s)
    expected = (detail_channels(shrunk, (h, w), chroma=config.chroma_noise_channel) - mean) / std
    assert torch.allclose(x[3:, :h, :w], expected, atol=1e-5)
    assert set(meta.evidence) == {MOTION_SIGNATURE, LOG_CONTRAST}
    signature, contrast = meta.evidence[MOTION_SIGNATURE], meta.evidence[LOG_CONTRAST]
    assert signature.shape == contrast.shape == (s, s)
    assert torch.equal(signature[:h, :w], motion_signature(shrunk, (h, w)))  # the gates' evidence: the same photo
    assert torch.equal(contrast[:h, :w], log_contrast(shrunk, (h, w)))
    assert not signature[h:].any() and not signature[:, w:].any() and not contrast[h:].any()  # padding: none
    assert np.array_equal(meta.photo, shrunk)
    plain, plain_meta = capped.preprocess_image(big)
    assert torch.equal(plain, x) and plain_meta.evidence == {} and plain_meta.photo is None
    with pytest.raises(ValueError, match="unknown evidence maps"):
        capped.preprocess_image(big, evidence=frozenset({"sharpness"}))
    y, _ = native.preprocess_image(big)
    assert torch.equal(x[:3], y[:3]) and not torch.allclose(x[3:], y[3:], atol=1e-2)
    small = Image.fromarray(texture[:200, :200])
    assert torch.equal(capped.preprocess_image(small)[0], native.preprocess_image(small)[0])
    with pytest.raises(ConfigError, match="detail_max_side needs detail_channels"):
        dataclasses.replace(config_tiny(), detail_max_side=640)


def test_evidence_maps_and_the_refined_photo_read_a_smaller_copy_with_evidence_max_side(texture):
    """qground-nano reads its detail channels on a 12 MP photo itself (``detail_max_side`` 4096) and its evidence
    maps and refinement photo, whose thresholds and radii are in the pixels of the training photos, on the photo
    shrunk to ``evidence_max_side`` (1280); a photo within that side reads both on itself."""
    assert (config_nano().detail_max_side, config_nano().evidence_max_side) == (4096, synth.MAX_SIDE)
    config = dataclasses.replace(config_nano(), detail_max_side=480, evidence_max_side=240)
    processor = QGroundProcessor(None, config)
    photo = Image.fromarray(texture)  # 480 × 320
    x, meta = processor.preprocess_image(photo, evidence=frozenset({MOTION_SIGNATURE, LOG_CONTRAST}), keep_photo=True)
    h, w = meta.resized_size
    shrunk = np.asarray(photo.resize((240, 160), Image.Resampling.LANCZOS, reducing_gap=1.5))
    mean, std = torch.tensor(config.image_mean[3:])[:, None, None], torch.tensor(config.image_std[3:])[:, None, None]
    assert torch.allclose(x[3:, :h, :w], (detail_channels(texture, (h, w), chroma=True) - mean) / std, atol=1e-5)
    assert torch.equal(meta.evidence[MOTION_SIGNATURE][:h, :w], motion_signature(shrunk, (h, w)))
    assert torch.equal(meta.evidence[LOG_CONTRAST][:h, :w], log_contrast(shrunk, (h, w)))
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


def _line(length: int, angle: float) -> np.ndarray:
    """A straight line kernel (length × length) drawn pixel by pixel, normalized."""
    k = np.zeros((length, length), dtype=np.float32)
    c, r = length // 2, (length - 1) / 2
    rr, cc = draw_line(*(round(c + sign * r * f(angle)) for sign in (-1, 1) for f in (np.sin, np.cos)))
    k[rr, cc] = 1
    return k / k.sum()


def test_motion_signature_marks_linear_motion_blur_only():
    """A blur along a line (the engine's jitter) raises the cepstral motion-blur signature of a photo above its sharp,
    defocused or noisy versions; flat content and photos smaller than a window hold no evidence (0)."""
    import skimage.data

    rng = np.random.default_rng(4)
    photo = skimage.data.chelsea()[:, :300].astype(np.float32) / 255  # (300, 300, 3)
    variants = {
        "sharp": photo,
        **{
            f"defocus {s}": ndimage.gaussian_filter(photo, (sigma, sigma, 0)) for s, sigma in ((1, 1.5), (2, 3), (3, 5))
        },
        "noise": photo + 16 / 255 * rng.standard_normal(photo.shape).astype(np.float32),
        **{f"jitter {s}": convolve(photo, _line(n, rng.uniform(0, np.pi))) for s, n in ((1, 7), (2, 13), (3, 21))},
    }
    median = {
        k: float(motion_signature((np.clip(v, 0, 1) * 255).astype(np.uint8), (20, 20)).median())
        for k, v in variants.items()
    }
    others = max(v for k, v in median.items() if not k.startswith("jitter"))
    assert min(median["jitter 1"], median["jitter 2"]) > 1.3 * others, median
    assert median["jitter 3"] > 1.5 * median["sharp"], median  # 21 px: beyond the searched lags, read weaker
    flat = motion_signature(np.full((200, 300, 3), 128, np.uint8), (20, 30))
    assert flat.shape == (20, 30) and not flat.any()
    assert not motion_signature((photo[:60, :90] * 255).astype(np.uint8), (6, 9)).any()


def test_log_contrast_tells_underexposure_from_a_shadow():
    """Underexposure (the engine's low light: gain × Y^γ, then 8-bit) multiplies log contrast and leaves 8-bit steps,
    so its log contrast rises with severity above the photo's, and so does a camera's (less light, shot noise); a
    shadow, a smooth gain as dark as the mildest low light, keeps the photo's. Flat content reads the floor, and every
    content pixel is > 0 (0 is the padding's)."""
    import skimage.data

    rng = np.random.default_rng(5)
    photo = skimage.data.chelsea()[:, :300].astype(np.float32) / 255  # (300, 300, 3)

    def underexposed(severity: int) -> np.ndarray:  # gain × Y^γ
        return (0.5, 0.33, 0.2)[severity - 1] * photo ** (1.6, 2.0, 2.6)[severity - 1]

    darkest = underexposed(1)
    shadow = photo * float(darkest.mean() / photo.mean())

    def level(img: np.ndarray) -> float:
        grid = log_contrast((np.clip(img, 0, 1) * 255).round().astype(np.uint8), (30, 30))
        assert grid.shape == (30, 30) and bool((grid > 0).all())
        return region_contrast(grid, torch.ones(30, 30, dtype=torch.bool))

    levels = {s: level(underexposed(s)) for s in (1, 2, 3)}
    assert level(photo) + 0.3 < levels[1] < levels[2] < levels[3], (level(photo), levels)
    assert abs(level(shadow) - level(photo)) < 0.2, (level(shadow), level(photo))
    linear = photo**2.2  # a camera's underexposure: less light on the sensor, shot and read noise, then gamma
    for gain in (0.1, 0.04):
        electrons = rng.poisson(linear * gain * 500) + rng.normal(0, 2, linear.shape)
        camera = np.clip(electrons / 500, 0, 1) ** (1 / 2.2)
        assert level(camera) > level(photo) + 0.3, (gain, level(camera), level(photo))
    flat = log_contrast(np.full((64, 64, 3), 90, np.uint8), (8, 8))
    assert torch.allclose(flat, torch.full((8, 8), LOG_CONTRAST_OFFSET - 8.0))
    grid = torch.tensor([[0.0, 7.0], [9.0, 8.0]])
    assert region_contrast(grid, torch.tensor([[True, True], [False, False]])) == 7.0  # the padding does not count
    assert region_contrast(grid, torch.tensor([[True, False], [False, False]])) is None


def test_stripes_read_the_values_of_one_pass_over_the_whole_photo(texture):
    """``detail_channels`` reads the photo a stripe of rows at a time (speed); its values do not depend on the stripe
    (odd sizes, stripes of one row, one stripe for the whole photo, a larger noise photo) and its noise and gradient
    energies are those of whole-image filters, normalizations included."""
    rgb = texture[:317, :241]
    noise_rgb = np.asarray(Image.fromarray(rgb).resize((482, 634), Image.Resampling.BICUBIC))
    for noise in (noise_rgb, None):
        whole = detail_channels(rgb, (23, 17), noise, chroma=True, stripe=10**6)
        for stripe in (1, 2, 7, 64):
            assert torch.allclose(detail_channels(rgb, (23, 17), noise, chroma=True, stripe=stripe), whole, atol=1e-5)
    y = torch.from_numpy(rgb.astype(np.float32)) @ torch.tensor([0.299, 0.587, 0.114]) / 255
    padded = F.pad(y[None, None], (1, 1, 1, 1), mode="replicate")
    binomial = torch.tensor([1.0, 2.0, 1.0]) / 4
    blurred = F.conv2d(padded, (binomial[:, None] * binomial[None, :])[None, None])[0, 0]
    sobel = torch.tensor([-0.5, 0.0, 0.5])[None, :] * binomial[:, None]  # Sobel / 8, x; its transpose for y
    gx, gy = (F.conv2d(padded, k[None, None])[0, 0] for k in (sobel, sobel.T))
    energies = torch.stack([(y - blurred).square(), gx.square() + gy.square()])
    expected = (torch.log(F.adaptive_avg_pool2d(energies[None], (23, 17))[0] + 1e-6) + 7) / 4
    assert torch.allclose(whole[:2], expected, atol=1e-4)


@pytest.mark.parametrize("shape", [(6, 8), (7, 9), (5, 4), (101, 77)])
def test_halving_is_pil_reduce_to_the_last_bit(shape):
    """The chroma channel's 2 × 2 box means, read a stripe at a time, are PIL's ``Image.reduce(2)`` in uint8 (what the
    shipped model was trained on), odd last rows and columns included."""
    rgb = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    assert np.array_equal(_halved(rgb).numpy(), np.asarray(Image.fromarray(rgb).reduce(2)))
