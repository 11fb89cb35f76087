"""``training.calibrate``'s fits on the training photos (the jitter gate's reference, P(jitter | signature) and the
low-light gate's reference) and its sweeps of the inference policy on validation photos."""

import numpy as np
import pytest

import training.calibrate as calibrate
from qground.builder import config_nano
from qground.inference import QGroundEngine
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
    """Images of the training split yield the signature of undistorted cells and of cells wholly inside a jitter mask,
    and the gate's reference is the clean cells' 75th percentile. (With the jitter families of
    ``training.data.distortions`` — curved and long trajectories — jittered cells no longer read higher than clean
    ones, so validation decides whether the gate is kept.)"""
    (tmp_path / "images").mkdir()
    for index in range(24):
        synth.write_one((tmp_path, index, "train", 0, synth.MAX_SIDE, 0, False))
    clean, jittered = motion_evidence(tmp_path)
    assert clean.size > 100 and jittered.size > 20 and (clean > 0).all() and (jittered > 0).all()
    assert motion_reference(clean) == round(float(np.quantile(clean, 0.75)), 2)


def test_contrast_evidence_reads_the_low_light_regions_of_the_training_photos(tmp_path):
    """One log contrast per low-light region of the training split (> 0: content); the gate is their 10th
    percentile. A split without low light refuses."""
    (tmp_path / "images").mkdir()
    for index in range(24):
        synth.write_one((tmp_path, index, "train", 0, synth.MAX_SIDE, 0, False))
    regions = sum((tmp_path / "gt" / f"train_{i:06d}" / "low_light.png").exists() for i in range(24))
    levels = contrast_evidence(tmp_path, config_nano())
    assert regions >= 3 and levels.shape == (regions,) and (levels > 0).all()
    assert contrast_reference(levels) == round(float(np.quantile(levels, 0.1)), 2)
    with pytest.raises(ValueError, match="no low-light regions"):
        contrast_evidence(tmp_path, config_nano(), limit=0)


def test_policy_sweeps_choose_on_validation_and_record_the_sweep(tiny, monkeypatch, tmp_path):
    """``policy_sweep`` runs the engine with one policy field changed per value and leaves its policy as it was (also
    when a run fails); ``Calibration`` keeps the value with the best mIoU (the lower one on a tie), runs the engine by
    it from then on, records the sweep under the field's name ("chosen", extras, "sweep" keyed "0.5" / "true") and
    does not rerun the value the policy already holds."""
    model, _, processor = tiny
    engine = QGroundEngine(model, processor)
    runs = []

    def summary(engine, data, strictness, limit, label):
        policy = engine.policy
        runs.append((policy.flip_average, policy.mask_refine_radius, strictness))
        if policy.mask_refine_radius > 4:
            raise RuntimeError("out of memory")
        return {"mIoU": {0.0: 0.4, 2.0: 0.6, 4.0: 0.6}[policy.mask_refine_radius] + 0.1 * policy.flip_average}

    monkeypatch.setattr(calibrate, "_summary", summary)
    base = engine.policy
    assert calibrate.policy_sweep(engine, tmp_path, "mask_refine_radius", (0.0, 2.0), 0.0) == {
        0.0: {"mIoU": 0.4},
        2.0: {"mIoU": 0.6},
    }
    assert engine.policy == base
    with pytest.raises(RuntimeError, match="out of memory"):
        calibrate.policy_sweep(engine, tmp_path, "mask_refine_radius", (8.0,), 0.0)
    assert engine.policy == base
    cal = calibrate.Calibration(engine, tmp_path, None)
    assert cal.keep("flip_average", cal.sweep("flip_average", (False, True))) is True
    assert engine.policy == base.replace(flip_average=True)
    assert cal.record["flip_average"] == {"chosen": True, "sweep": {"false": {"mIoU": 0.4}, "true": {"mIoU": 0.5}}}
    runs.clear()
    cal.keep("mask_refine_radius", cal.sweep("mask_refine_radius", (0.0, 2.0, 4.0)), {"eps": 0.01})
    assert runs == [(True, 2.0, 0.0), (True, 4.0, 0.0)]  # radius 0, the policy's, was summarized already
    assert engine.policy == base.replace(flip_average=True, mask_refine_radius=2.0)
    sweep = {"0": {"mIoU": 0.5}, "2": {"mIoU": 0.7}, "4": {"mIoU": 0.7}}
    assert cal.record["mask_refine_radius"] == {"chosen": 2.0, "eps": 0.01, "sweep": sweep}


def test_a_gate_is_kept_only_for_a_real_gain_on_validation():
    def summary(miou: float, clean: float = 0.95) -> dict:
        return {"mIoU": miou, "clean_rate": clean}

    assert calibrate.choose_gate({0.0: summary(0.4570), 5.3: summary(0.4571)}) == 0.0  # +0.0001: noise, off
    assert calibrate.choose_gate({0.0: summary(0.40), 5.3: summary(0.41)}) == 5.3  # +0.01: kept
    assert calibrate.choose_gate({0.0: summary(0.40, 0.80), 5.3: summary(0.40, 0.95)}) == 5.3  # fewer false alarms
    assert calibrate.choose_gate({0.0: summary(0.41), 5.3: summary(0.40)}) == 0.0


def test_a_tie_within_noise_goes_to_the_higher_clean_rate():
    """The criterion does not see the clean rate above 0.9: of the values within 0.005 of the best score, the one that
    leaves more clean photos clean wins; equally clean, the best score; then the lowest value."""

    def summary(miou: float, clean: float | None = None) -> dict:
        return {"mIoU": miou, "clean_rate": clean}

    assert calibrate.choose({False: summary(0.5215, 0.913), True: summary(0.5211, 0.923)}) is True
    assert calibrate.choose({False: summary(0.530, 0.913), True: summary(0.5211, 0.923)}) is False  # a real loss
    assert calibrate.choose({0.25: summary(0.525, 0.91), 0.5: summary(0.527, 0.91)}) == 0.5  # equally clean
    assert calibrate.choose({2.0: summary(0.527), 4.0: summary(0.527)}) == 2.0
    assert calibrate.choose({2.0: summary(0.553, 0.865), 3.0: summary(0.522, 0.913)}) == 3.0  # 0.518 against 0.522
    assert calibrate.choose_gate({0.0: summary(0.4570, 0.90), 5.3: summary(0.4571, 0.99)}) == 0.0  # a gate: no gain


@pytest.mark.parametrize(("gain", "chosen"), [(0.0001, 0.0), (0.01, 0.5)])
def test_the_jitter_posterior_is_blended_in_only_for_a_real_gain(tiny, monkeypatch, tmp_path, gain, chosen):
    """The posterior's weight in jitter masks costs the motion-blur signature map, so like a gate it is kept only when
    validation gains ``GATE_MIN_GAIN`` from it: +0.0001 is noise and leaves it off; +0.01 keeps the best weight."""
    model, _, processor = tiny
    engine = QGroundEngine(model, processor)
    rng = np.random.default_rng(0)
    monkeypatch.setattr(calibrate, "motion_evidence", lambda train: (rng.normal(4, 1, 4000), rng.normal(6, 1, 400)))

    def summary(engine, data, strictness, limit, label):
        return {"mIoU": 0.5 + gain * (engine.policy.jitter_signature_weight == 0.5), "clean_rate": 0.95}

    monkeypatch.setattr(calibrate, "_summary", summary)
    cal = calibrate.Calibration(engine, tmp_path, None)
    cal.latest = summary(engine, tmp_path, 0.0, None, "")
    calibrate.choose_jitter(cal, tmp_path, (0.0, 0.5, 1.0))
    assert engine.policy.jitter_signature_weight == chosen
    assert cal.record["jitter_signature_weight"]["chosen"] == chosen
    assert set(cal.record["jitter_signature_weight"]["sweep"]) == {"0", "0.5", "1"}
