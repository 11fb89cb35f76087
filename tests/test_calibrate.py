"""``training.calibrate``'s fits on the training photos: the jitter gate's reference, P(jitter | signature) and the
low-light gate's reference."""

import numpy as np
import pytest

from qground.builder import config_nano
from training.calibrate import contrast_evidence, contrast_reference, motion_evidence, motion_logistic, motion_reference
from training.data import synth


def test_motion_logistic_separates_jittered_from_clean_cells():
    """Class-balanced: the centre lies where the two classes' densities cross (equal spreads: halfway between the
    means), whatever their counts; σ((s − center) / scale) rises with the signature. It refuses to fit jittered
    cells that do not score higher, or none."""
    rng = np.random.default_rng(0)
    clean, jittered = rng.normal(4.0, 1.0, 40000), rng.normal(6.0, 1.0, 4000)
    center, scale = motion_logistic(clean, jittered)  # the log-likelihood ratio is (s − 5) / 0.5
    assert center == pytest.approx(5.0, abs=0.1) and scale == pytest.approx(0.5, abs=0.05)
    with pytest.raises(ValueError, match="do not show a higher motion-blur signature"):
        motion_logistic(jittered, clean)
    with pytest.raises(ValueError, match="do not show a higher motion-blur signature"):
        motion_logistic(clean, np.empty(0))


def test_motion_evidence_reads_the_synthetic_training_photos(tmp_path):
    """On images of the training split, cells wholly inside a jitter mask show a higher signature than undistorted
    content, so the fit and the gate's reference (its 75th percentile) come out in order."""
    (tmp_path / "images").mkdir()
    for index in range(24):
        synth.write_one((tmp_path, index, "train", 0, synth.MAX_SIDE))
    clean, jittered = motion_evidence(tmp_path)
    assert clean.size > 100 and jittered.size > 20 and (clean > 0).all()
    assert np.median(jittered) > 1.3 * np.median(clean)
    center, scale = motion_logistic(clean, jittered)
    assert np.median(clean) < center and scale > 0
    assert motion_reference(clean) == round(float(np.quantile(clean, 0.75)), 2)


def test_contrast_evidence_reads_the_low_light_regions_of_the_training_photos(tmp_path):
    """One log contrast per low-light region of the training split (> 0: content); the gate is their 10th
    percentile. A split without low light refuses."""
    (tmp_path / "images").mkdir()
    for index in range(24):
        synth.write_one((tmp_path, index, "train", 0, synth.MAX_SIDE))
    regions = sum((tmp_path / "gt" / f"train_{i:06d}" / "low_light.png").exists() for i in range(24))
    levels = contrast_evidence(tmp_path, config_nano())
    assert regions >= 3 and levels.shape == (regions,) and (levels > 0).all()
    assert contrast_reference(levels) == round(float(np.quantile(levels, 0.1)), 2)
    with pytest.raises(ValueError, match="no low-light regions"):
        contrast_evidence(tmp_path, config_nano(), limit=0)
