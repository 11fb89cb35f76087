"""The inference policy saved beside the weights (``inference_policy.json``): its defaults, its file, its checks
against the model, how checkpoints and the engine get it."""

import json

import pytest

from qground.builder import ASSETS, config_nano
from qground.checkpoint import CheckpointError, load_policy, save_checkpoint
from qground.config import ConfigError
from qground.inference import QGroundEngine
from qground.policy import LOG_CONTRAST, MOTION_SIGNATURE, POLICY_NAME, InferencePolicy

CHOSEN = {
    "default_strictness": 3.0,
    "overexposure_needs_clipping": True,
    "jitter_min_motion_signature": 5.5,
    "low_light_min_log_contrast": 7.9,
    "readout_mask_weight": 0.75,
    "jitter_signature_weight": 0.5,
    "jitter_signature_center": 6.8,
    "jitter_signature_scale": 1.7,
    "flip_average": True,
    "mask_refine_radius": 6.0,
    "mask_refine_eps": 0.02,
    "constrained_answers": True,
    "answers_follow_readout": True,
}


def test_the_default_policy_runs_the_model_as_trained(tiny):
    """No strictness, no gate, no blend, one view, masks only upsampled: it fits a model without a readout and asks
    the processor for no evidence map."""
    policy = InferencePolicy()
    assert policy.default_strictness == 0.0 and not policy.overexposure_needs_clipping
    assert policy.jitter_min_motion_signature == policy.low_light_min_log_contrast == 0.0
    assert policy.readout_mask_weight == policy.jitter_signature_weight == policy.mask_refine_radius == 0.0
    assert not policy.flip_average and policy.evidence_maps == frozenset()
    policy.check_model(tiny[0].config)
    assert QGroundEngine(tiny[0], tiny[2]).policy == policy


def test_evidence_maps_follow_the_gates_and_blends_that_read_them():
    assert InferencePolicy(jitter_min_motion_signature=1.0).evidence_maps == {MOTION_SIGNATURE}
    assert InferencePolicy(jitter_signature_weight=0.5).evidence_maps == {MOTION_SIGNATURE}
    assert InferencePolicy(low_light_min_log_contrast=1.0).evidence_maps == {LOG_CONTRAST}
    assert InferencePolicy(**CHOSEN).evidence_maps == {MOTION_SIGNATURE, LOG_CONTRAST}
    others = {"default_strictness": 2.0, "readout_mask_weight": 0.5, "flip_average": True, "mask_refine_radius": 2.0}
    assert InferencePolicy(overexposure_needs_clipping=True, **others).evidence_maps == frozenset()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"default_strictness": -1.0}, "default_strictness must be between 0 and 8"),
        ({"default_strictness": float("nan")}, "default_strictness must be between 0 and 8"),
        ({"readout_mask_weight": 1.5}, "readout_mask_weight must be between 0 and 1"),
        ({"jitter_signature_weight": -0.1}, "jitter_signature_weight must be between 0 and 1"),
        ({"jitter_min_motion_signature": -1.0}, "jitter_min_motion_signature must be ≥ 0"),
        ({"low_light_min_log_contrast": float("nan")}, "low_light_min_log_contrast must be ≥ 0"),
        ({"mask_refine_radius": -2.0}, "mask_refine_radius must be ≥ 0"),
        ({"jitter_signature_center": float("inf")}, "jitter_signature_center finite"),
        ({"jitter_signature_scale": 0.0}, "jitter_signature_scale must be > 0"),
        ({"mask_refine_eps": 0.0}, "mask_refine_eps must be > 0"),
        ({"version": 2}, "inference_policy.json version 2 is newer than this qground's"),
    ],
)
def test_values_are_validated(changes, message):
    with pytest.raises(ConfigError, match=message):
        InferencePolicy(**changes)
    with pytest.raises(ConfigError, match=message):
        InferencePolicy().replace(**changes)


def test_the_model_must_honour_the_policy(tiny):
    """What needs a readout is refused, all named, for a model without one; a refinement radius beyond the model's
    input size is refused; the engine keeps the policy it had when it refuses a new one."""
    model, _, processor = tiny
    needs = InferencePolicy(default_strictness=2.0, overexposure_needs_clipping=True, readout_mask_weight=0.5)
    with pytest.raises(
        ConfigError, match="default_strictness, overexposure_needs_clipping, readout_mask_weight need a model with"
    ):
        needs.check_model(model.config)
    needs.check_model(config_nano())
    size = model.config.image_size
    InferencePolicy(mask_refine_radius=size, flip_average=True, jitter_signature_weight=0.5).check_model(model.config)
    with pytest.raises(ConfigError, match=f"mask_refine_radius {size + 1.0} exceeds the model's input size {size}"):
        InferencePolicy(mask_refine_radius=size + 1.0).check_model(model.config)
    engine = QGroundEngine(model, processor, policy=InferencePolicy(flip_average=True))
    with pytest.raises(ConfigError, match="default_strictness need a model with a readout"):
        engine.set_policy(engine.policy.replace(default_strictness=1.0))
    assert engine.policy == InferencePolicy(flip_average=True)


def test_the_policy_file_round_trips_with_its_calibration_record(tmp_path):
    """Saved as ``inference_policy.json``; the calibration record comes back but two policies that differ only in it
    are equal. A folder without the file runs as trained; unknown fields, damaged JSON and newer versions are
    refused with the file named."""
    record = {"criterion": "mIoU", "default_strictness": {"chosen": 3.0, "sweep": {"0": {"mIoU": 0.5}}}}
    policy = InferencePolicy(**CHOSEN, calibration=record)
    assert InferencePolicy.load(tmp_path) == InferencePolicy()
    assert policy.save(tmp_path) == tmp_path / POLICY_NAME
    loaded = InferencePolicy.load(tmp_path)
    assert loaded == policy and loaded.calibration == record and loaded == InferencePolicy(**CHOSEN)
    assert json.loads((tmp_path / POLICY_NAME).read_text()) == {"version": 1, **CHOSEN, "calibration": record}
    data = policy.to_dict() | {"sharpen": True}
    (tmp_path / POLICY_NAME).write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"inference_policy.json: unknown field\(s\) \['sharpen'\]"):
        InferencePolicy.load(tmp_path)
    (tmp_path / POLICY_NAME).write_text(json.dumps(policy.to_dict() | {"version": 2}))
    with pytest.raises(ConfigError, match="version 2 is newer"):
        InferencePolicy.load(tmp_path)
    (tmp_path / POLICY_NAME).write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        InferencePolicy.load(tmp_path)


def test_checkpoints_carry_their_policy(tiny, tmp_path):
    """``load_policy``: a registry model without a shipped checkpoint runs as trained, the shipped nano by its file, a
    folder by its own (or as trained without one); a damaged file is a checkpoint error. ``load_engine`` attaches
    it."""
    from qground.service import load_engine

    model, tokenizer, _ = tiny
    assert load_policy("qground-tiny") == InferencePolicy()
    nano = load_policy("qground-nano")
    assert nano == InferencePolicy.load(ASSETS / "qground-nano") and nano.default_strictness > 0
    folder = save_checkpoint(model, tokenizer, tmp_path / "ckpt")
    assert load_policy(folder) == InferencePolicy()
    policy = InferencePolicy(flip_average=True, mask_refine_radius=2.0)
    policy.save(folder)
    assert load_policy(folder) == policy and load_policy(str(folder)) == policy
    assert load_engine(str(folder)).policy == policy
    (folder / POLICY_NAME).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_policy(folder)
