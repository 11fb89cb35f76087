"""Distortion families: contract (shape, dtype, range, determinism, strength), each class's physical signature, the
held-out split."""

import numpy as np
import pytest
from scipy import ndimage

from qground.taxonomy import CLASS_NAMES
from training.data import distortions as d

KEYS = [f.key for f in d.FAMILIES]


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """96×128 test image: a smooth random color field plus a checkerboard (sharp edges) plus a gradient."""
    rng = np.random.default_rng(7)
    h, w = 96, 128
    field = ndimage.gaussian_filter(rng.standard_normal((h, w, 3)), (6, 6, 0))
    field = (field - field.min()) / np.ptp(field)
    yy, xx = np.mgrid[:h, :w]
    checker = ((yy // 8 + xx // 8) % 2).astype(np.float64)[..., None]
    gradient = (xx / (w - 1))[..., None]
    img = 0.35 * field + 0.35 * checker + 0.25 * gradient + 0.03
    return np.clip(img, 0, 1).astype(np.float32)


def _family(key: str) -> d.Family:
    return next(f for f in d.FAMILIES if f.key == key)


def _run(key: str, img: np.ndarray, strength: float, seed: int = 0) -> np.ndarray:
    return _family(key).apply(img, strength, np.random.default_rng(seed))


def _luma(img: np.ndarray) -> np.ndarray:
    return img @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _grad_energy(img: np.ndarray, axis: int | None = None) -> float:
    """Mean squared finite difference of luma, away from the borders (along x: axis 1, y: axis 0, both: None)."""
    y = _luma(img)[8:-8, 8:-8]
    gy, gx = np.diff(y, axis=0) ** 2, np.diff(y, axis=1) ** 2
    return float({0: gy.mean(), 1: gx.mean(), None: gy.mean() + gx.mean()}[axis])


def _residual_energy(img: np.ndarray) -> float:
    """Mean squared fine residual (x − its 3×3 mean) inside the checkerboard's squares, where the clean image is
    smooth (the squares' edges would dominate it)."""
    yy, xx = np.mgrid[: img.shape[0], : img.shape[1]]
    inside = (yy % 8 >= 1) & (yy % 8 <= 6) & (xx % 8 >= 1) & (xx % 8 <= 6)
    return float(((img - ndimage.uniform_filter(img, (3, 3, 1))) ** 2)[inside].mean())


def test_families_cover_every_class_and_held_out_is_one_real_family_per_class():
    assert len(set(KEYS)) == len(KEYS)
    for cls in CLASS_NAMES:
        fams = d.families(cls)
        assert len(fams) >= 3 and all(f.cls == cls for f in fams)
        assert sum(f.key in d.HELD_OUT for f in fams) == 1
    assert d.HELD_OUT <= set(KEYS) and len(d.HELD_OUT) == len(CLASS_NAMES)
    with pytest.raises(ValueError):
        d.families("haze")


@pytest.mark.parametrize("severity", [1, 2, 3])
def test_strength_of_severity_lies_in_its_band(severity):
    rng = np.random.default_rng(0)
    values = [d.strength_of_severity(severity, rng) for _ in range(50)]
    assert min(values) >= (severity - 1) / 3 and max(values) <= severity / 3


@pytest.mark.parametrize("key", KEYS)
def test_contract(key, image):
    out = _run(key, image, 0.5, seed=3)
    assert out.shape == image.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    np.testing.assert_array_equal(out, _run(key, image, 0.5, seed=3))
    mild, severe = _run(key, image, 0.0), _run(key, image, 1.0)
    assert np.abs(severe - image).mean() > np.abs(mild - image).mean() > 0.005


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("strength", [0.0, 1.0])
def test_physical_signature(key, strength, image):
    cls = _family(key).cls
    out = _run(key, image, strength, seed=1)
    if cls in ("blur", "jitter"):
        assert _grad_energy(out) < 0.8 * _grad_energy(image)
    elif cls == "overexposure":
        assert _luma(out).mean() > _luma(image).mean() + 0.05
        assert (_luma(out) >= 0.97).mean() > (_luma(image) >= 0.97).mean() + 0.05
    elif cls == "low light":
        assert _luma(out).mean() < 0.6 * _luma(image).mean()
    else:
        assert _residual_energy(out) > 2 * _residual_energy(image)


@pytest.mark.parametrize("angle", [0.0, np.pi / 2])
def test_linear_motion_blurs_along_its_direction(angle):
    """On an isotropic texture (a checkerboard would average out in both directions), motion along x (angle 0, image
    axis 1) removes far more of the x gradient than of the y gradient, and the other way round for angle π/2."""
    rng = np.random.default_rng(5)
    texture = ndimage.gaussian_filter(rng.standard_normal((96, 128)), 1.5)
    texture = np.repeat(((texture - texture.min()) / np.ptp(texture))[..., None], 3, axis=-1).astype(np.float32)
    out = d.convolve(texture, d.line_psf(15.0, angle))
    along, across = (1, 0) if angle == 0.0 else (0, 1)
    drop_along = _grad_energy(out, along) / _grad_energy(texture, along)
    drop_across = _grad_energy(out, across) / _grad_energy(texture, across)
    assert drop_along < 0.5 * drop_across


def test_line_psf_is_normalized_and_sub_pixel():
    psf = d.line_psf(10.5, 0.3)
    assert psf.shape[0] == psf.shape[1] and psf.shape[0] % 2 == 1
    assert abs(psf.sum() - 1) < 1e-5 and (psf >= 0).all()
    ys, xs = np.nonzero(psf)
    assert abs((psf[ys, xs] * (xs - psf.shape[1] // 2)).sum()) < 1e-3  # centered: the image does not shift
