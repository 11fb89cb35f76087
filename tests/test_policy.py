"""The inference policy saved beside the weights (``inference_policy.json``): its defaults, its file, its checks
against the model, how checkpoints and the engine get it."""

import json

import pytest

from qground.builder import ASSETS, config_nano
from qground.checkpoint import CheckpointError, load_policy, save_checkpoint
from qground.config import ConfigError
from qground.inference import QGroundEngine
from qground.policy import POLICY_NAME, InferencePolicy

CHOSEN = {
    "default_strictness": 3.0,
    "overexposure_needs_clipping": True,
    "readout_mask_weight": 0.75,
    "flip_average": True,
    "mask_refine_radius": 6.0,
    "mask_refine_eps": 0.02,
    "constrained_answers": True,
    "answers_follow_readout": True,
}


def test_the_default_policy_runs_the_model_as_trained(tiny):
    """No strictness, no gate, no blend, one view, masks only upsampled: it fits a model without a readout."""
    policy = InferencePolicy()
    assert policy.default_strictness == 0.0 and not policy.overexposure_needs_clipping
    assert policy.readout_mask_weight == policy.mask_refine_radius == 0.0
    assert not policy.flip_average
    policy.check_model(tiny[0].config)
    assert QGroundEngine(tiny[0], tiny[2]).policy == policy


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"default_strictness": -1.0}, "default_strictness must be between 0 and 8"),
        ({"default_strictness": float("nan")}, "default_strictness must be between 0 and 8"),
        ({"readout_mask_weight": 1.5}, "readout_mask_weight must be between 0 and 1"),
        ({"readout_mask_weight": float("nan")}, "readout_mask_weight must be between 0 and 1"),
        ({"mask_refine_radius": -2.0}, "mask_refine_radius must be ≥ 0"),
        ({"mask_refine_radius": float("nan")}, "mask_refine_radius must be ≥ 0"),
        ({"mask_refine_eps": 0.0}, "mask_refine_eps must be > 0"),
        ({"version": 3}, "inference_policy.json version 3 is newer than this qground's"),
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
    InferencePolicy(mask_refine_radius=size, flip_average=True).check_model(model.config)
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
    assert json.loads((tmp_path / POLICY_NAME).read_text()) == {"version": 2, **CHOSEN, "calibration": record}
    data = policy.to_dict() | {"sharpen": True}
    (tmp_path / POLICY_NAME).write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"inference_policy.json: unknown field\(s\) \['sharpen'\]"):
        InferencePolicy.load(tmp_path)
    (tmp_path / POLICY_NAME).write_text(json.dumps(policy.to_dict() | {"version": 3}))
    with pytest.raises(ConfigError, match="version 3 is newer"):
        InferencePolicy.load(tmp_path)
    (tmp_path / POLICY_NAME).write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        InferencePolicy.load(tmp_path)


def test_a_version_1_policy_loads_without_its_retired_gates_when_they_are_off(tmp_path):
    """Version 1 files (the shipped v18 and every calibration before 2026-12-07) also hold the region gates and the
    jitter signature blend, since removed: at their off values (0) they load as version 2 without them (the centre
    and scale of the blend, read only with it, whatever they are); a gate turned on is refused, named."""
    retired = {"jitter_min_motion_signature": 0.0, "low_light_min_log_contrast": 0.0, "jitter_signature_weight": 0.0}
    old = {"version": 1, **CHOSEN, **retired, "jitter_signature_center": 5.36, "jitter_signature_scale": 3.13}
    (tmp_path / POLICY_NAME).write_text(json.dumps(old))
    loaded = InferencePolicy.load(tmp_path)
    assert loaded == InferencePolicy(**CHOSEN) and loaded.version == 2
    for name in ("jitter_min_motion_signature", "jitter_signature_weight"):
        (tmp_path / POLICY_NAME).write_text(json.dumps(old | {name: 0.5}))
        with pytest.raises(ConfigError, match=f"inference_policy.json: this version 1 policy turns on {name}, removed"):
            InferencePolicy.load(tmp_path)
    (tmp_path / POLICY_NAME).write_text(json.dumps(old | {"version": 2}))
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['jitter_min_motion_signature'"):
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
