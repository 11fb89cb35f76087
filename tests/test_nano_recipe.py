"""The qground-nano recipe (``python -m training.nano``) end to end at toy scale: synthetic data, tokenizer + random
model, vision pretraining, stages 0–3 under DeepSpeed, the strictness chosen on validation photos, a loadable result;
a rerun redoes nothing."""

import json
import shutil

import pytest
import torch
from PIL import Image

from qground.checkpoint import load_model, load_policy
from qground.inference import QGroundEngine
from qground.policy import POLICY_NAME
from qground.processor import QGroundProcessor
from training import nano, pretrain_vision
from training.config import load_config


def test_recipe_runs_every_step_and_resumes(tmp_path, monkeypatch):
    argv = ["--out", str(tmp_path), "--train-images", "10", "--eval-images", "4", "--val-images", "4"]
    argv += ["--vision-images", "12", "--vision-epochs", "1"]
    argv += ["--scale", "0.004", "--workers", "1"]
    pretrained = []  # the vision pretraining's arguments
    real = pretrain_vision.main
    monkeypatch.setattr(pretrain_vision, "main", lambda args: pretrained.append(args) or real(args))
    assert nano.main(argv) == 0
    assert len(pretrained) == 1 and "--symmetries" in pretrained[0]  # as the shipped tower was trained
    assert "--crops" not in pretrained[0]  # v16 record: not shipped
    assert len(json.loads((tmp_path / "data" / "train" / "compare.json").read_text())) == 30
    vision = json.loads((tmp_path / "data" / "vision" / "meta.json").read_text())["images"]
    train = json.loads((tmp_path / "data" / "train" / "meta.json").read_text())["images"]
    assert len(vision) == 12 and vision[:10] == train  # the vision set extends the train split's images
    image = "images/train_000009.png"
    assert (tmp_path / "data" / "vision" / image).samefile(tmp_path / "data" / "train" / image)  # linked, not made
    assert load_config(tmp_path / "stage3" / "train_config.yaml").model == str(tmp_path / "stage2" / "final")
    assert set(json.loads((tmp_path / "timings.json").read_text())) >= {"synth_val", "vision", "stage3", "calibrate"}
    final = tmp_path / "stage3" / "final"
    assert not (final / "calibration.json").exists()  # the inference policy holds the choices and their record
    calibration = json.loads((final / POLICY_NAME).read_text())["calibration"]
    assert set(calibration["default_strictness"]["sweep"]) == {"0", "1", "2", "3", "4", "5", "6"}
    assert "jitter_signature_weight" in calibration  # P(jitter | signature) fitted on the training photos, or why not
    assert set(calibration["flip_average"]["sweep"]) == {"false", "true"}  # one view or two, chosen on validation
    assert set(calibration["mask_refine_radius"]["sweep"]) == {"0", "2", "4", "6", "8"}  # mask edges on the photo

    model, tokenizer = load_model(str(final), device="cpu", dtype=torch.float32)
    assert model.config.base_model_id is None  # full weights: the shipped config names no local training folder
    policy = load_policy(str(final))
    assert policy.default_strictness == calibration["default_strictness"]["chosen"]
    assert policy.constrained_answers  # every answer a sentence of the answer grammar
    for field in ("overexposure_needs_clipping", "readout_mask_weight", "flip_average", "mask_refine_radius"):
        assert getattr(policy, field) == calibration[field]["chosen"], field
    engine = QGroundEngine(model, QGroundProcessor(tokenizer, model.config), policy=policy)
    image = Image.open(tmp_path / "data" / "eval" / "images" / "eval_000000.png")
    result = engine.ground(image)
    assert all(mask.shape == (image.height, image.width) for mask in result.masks.values())

    timings = json.loads((tmp_path / "timings.json").read_text())
    before = {p: p.stat().st_mtime_ns for p in final.iterdir()}
    assert nano.main(argv) == 0  # every step's output exists: nothing is redone, the timings are kept
    assert {p: p.stat().st_mtime_ns for p in final.iterdir()} == before
    assert json.loads((tmp_path / "timings.json").read_text()) == timings

    def killed(argv):  # the run is stopped during the calibration
        raise KeyboardInterrupt

    shutil.rmtree(final)
    monkeypatch.setattr("training.calibrate.main", killed)
    with pytest.raises(KeyboardInterrupt):
        nano.main(argv)
    kept = json.loads((tmp_path / "timings.json").read_text())
    assert kept["stage3"] != timings["stage3"] and kept["vision"] == timings["vision"]  # stage 3's new time was kept
