"""Native-resolution detail channels respond to the distortions they are meant to expose."""

import numpy as np
import pytest
from PIL import Image, ImageFilter

from qground.detail import detail_channels


@pytest.fixture(scope="module")
def texture() -> np.ndarray:
    rng = np.random.default_rng(0)
    small = (rng.random((40, 60, 3)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((480, 320), Image.Resampling.BICUBIC))


def test_shapes_and_finite(texture):
    d = detail_channels(texture, (32, 48))
    assert d.shape == (3, 32, 48) and d.dtype.is_floating_point and bool(d.isfinite().all())


def test_noise_raises_residual_energy(texture):
    rng = np.random.default_rng(1)
    noisy = np.clip(texture + rng.normal(0, 20, texture.shape), 0, 255).astype(np.uint8)
    assert detail_channels(noisy, (8, 12))[0].mean() > detail_channels(texture, (8, 12))[0].mean() + 0.3


def test_blur_lowers_detail_energy(texture):
    blurred = np.asarray(Image.fromarray(texture).filter(ImageFilter.GaussianBlur(4)))
    assert detail_channels(blurred, (8, 12))[1].mean() < detail_channels(texture, (8, 12))[1].mean() - 0.3


def test_motion_blur_raises_coherence(texture):
    kernel = np.ones(15) / 15  # horizontal motion: gradients become mostly vertical
    moved = np.stack(
        [np.apply_along_axis(lambda r: np.convolve(r, kernel, "same"), 1, texture[..., c]) for c in range(3)], -1
    ).astype(np.uint8)
    assert detail_channels(moved, (8, 12))[2, 1:-1, 1:-1].mean() > detail_channels(texture, (8, 12))[2].mean() + 0.2
