"""``training.calibrate``'s sweeps of the inference policy on validation photos and its choice among them."""

import pytest

import training.calibrate as calibrate
from qground.inference import QGroundEngine


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
