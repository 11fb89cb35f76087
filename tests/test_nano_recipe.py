"""The qground-nano recipe (``python -m training.nano``) end to end at toy scale: synthetic data, tokenizer + random
model, vision pretraining, stages 0–3 under DeepSpeed, the strictness chosen on validation photos, a loadable result;
a rerun redoes nothing."""

import json
import shutil

import pytest
import torch
from PIL import Image

from qground.builder import build_from_registry
from qground.checkpoint import load_model, load_policy, save_checkpoint
from qground.inference import QGroundEngine
from qground.lexicon import Lexicon
from qground.policy import POLICY_NAME
from qground.processor import QGroundProcessor
from training import nano, pretrain_vision
from training.config import load_config


def test_recipe_runs_every_step_and_resumes(tmp_path, monkeypatch, tiny_wordnet):
    argv = ["--out", str(tmp_path), "--train-images", "10", "--eval-images", "4", "--val-images", "4"]
    argv += ["--wordnet", str(tiny_wordnet)]
    argv += ["--vision-images", "12", "--vision-epochs", "1", "--refine-large", "2", "--refine-epochs", "1"]
    argv += ["--scale", "0.004", "--workers", "1"]
    pretrained = []  # the vision pretraining's arguments
    real = pretrain_vision.main
    monkeypatch.setattr(pretrain_vision, "main", lambda args: pretrained.append(args) or real(args))
    assert nano.main(argv) == 0
    assert len(pretrained) == 2 and "--symmetries" in pretrained[0]  # as the shipped tower was trained
    assert "--crops" not in pretrained[0]  # v16 record: not shipped
    assert "--lr" not in pretrained[0]  # training.pretrain_vision's own default learning rate
    refine = pretrained[1]  # the stage-3 tower trained further on large photos too (v18 record)
    assert refine[refine.index("--model") + 1] == str(tmp_path / "stage3" / "final")
    large = [str(tmp_path / "data" / "train"), str(tmp_path / "data" / "vision_large")]
    assert refine[refine.index("--data") + 1 :][:2] == large and "--symmetries" in refine
    assert refine[refine.index("--lr") + 1] == "0.0003" and refine[refine.index("--crops") + 1] == "0.5"
    assert json.loads((tmp_path / "data" / "vision_large" / "meta.json").read_text())["large"] is True
    assert len(json.loads((tmp_path / "data" / "train" / "compare.json").read_text())) == 30
    vision = json.loads((tmp_path / "data" / "vision" / "meta.json").read_text())["images"]
    train = json.loads((tmp_path / "data" / "train" / "meta.json").read_text())["images"]
    assert len(vision) == 12 and vision[:10] == train  # the vision set extends the train split's images
    image = "images/train_000009.png"
    assert (tmp_path / "data" / "vision" / image).samefile(tmp_path / "data" / "train" / image)  # linked, not made
    assert load_config(tmp_path / "stage3" / "train_config.yaml").model == str(tmp_path / "stage2" / "final")
    steps = set(json.loads((tmp_path / "timings.json").read_text()))
    assert steps >= {"synth_val", "synth_vision_large", "vision", "stage3", "refine", "decoder", "calibrate"}
    assert not (tmp_path / "stage3" / "final" / POLICY_NAME).exists()  # only the final model is calibrated
    final = tmp_path / "decoder" / "merged"
    assert not (final / "calibration.json").exists()  # the inference policy holds the choices and their record
    calibration = json.loads((final / POLICY_NAME).read_text())["calibration"]
    assert set(calibration["default_strictness"]["sweep"]) == {"0", "1", "2", "3", "4", "5", "6"}
    assert set(calibration["overexposure_needs_clipping"]["sweep"]) == {"false", "true"}
    assert set(calibration["flip_average"]["sweep"]) == {"false", "true"}  # one view or two, chosen on validation
    assert set(calibration["mask_refine_radius"]["sweep"]) == {"0", "2", "4", "6", "8"}  # mask edges on the photo
    assert Lexicon.load(final).synonyms["murky"] == "dark"  # the question lexicon, from the WordNet given

    model, tokenizer = load_model(str(final), device="cpu", dtype=torch.float32)
    assert model.config.base_model_id is None  # full weights: the shipped config names no local training folder
    refined, _ = load_model(str(tmp_path / "refined"), device="cpu", dtype=torch.float32)
    stage3, _ = load_model(str(tmp_path / "stage3" / "final"), device="cpu", dtype=torch.float32)
    for name, kept in (("vision_tower", refined), ("readout", refined), ("projector", stage3)):
        mine, theirs = getattr(model, name).state_dict(), getattr(kept, name).state_dict()
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs), name
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

    shutil.rmtree(tmp_path / "decoder")
    monkeypatch.setattr("training.calibrate.main", killed)
    with pytest.raises(KeyboardInterrupt):
        nano.main(argv)
    kept = json.loads((tmp_path / "timings.json").read_text())
    assert kept["decoder"] != timings["decoder"] and kept["refine"] == timings["refine"]  # the new time was kept
    with pytest.raises(SystemExit):  # the refinement trains the stage-3 tower: not with a tower put into a model
        nano.main([*argv, "--llm-from", str(final)])


def test_a_tower_trained_further_on_large_images_goes_into_a_trained_model(tmp_path, monkeypatch, tiny_wordnet):
    """``--vision-large N``: the tower also trains on N large images (``synth --large``). ``--vision-from DIR``: it
    starts from DIR's tower and readout, at ``--vision-lr``, and no random init is made (refused without
    ``--llm-from``: stages 0–3 build a new model from a random init). ``--llm-from DIR``: DIR's φv, LLM and choice
    head are kept with the new tower and readout, only the seg head and pixel decoder train (no stage 0–3), and the
    result is saved with every weight and calibrated (docs/experiments/2026-12-06-nano-v17.md,
    2026-12-07-nano-v18.md)."""
    start = save_checkpoint(*build_from_registry("qground-nano"), tmp_path / "start")
    argv = ["--out", str(tmp_path), "--train-images", "8", "--eval-images", "4", "--val-images", "4"]
    argv += ["--vision-images", "8", "--vision-epochs", "1", "--vision-large", "4", "--vision-lr", "2e-4"]
    argv += ["--scale", "0.004", "--workers", "1", "--vision-from", str(start), "--wordnet", str(tiny_wordnet)]
    with pytest.raises(SystemExit):
        nano.main(argv)
    argv += ["--llm-from", str(start)]
    starts, pretrained = [], []
    real_pretrain, real_main = pretrain_vision.pretrain, pretrain_vision.main

    def pretrain(model, *args, **kwargs):
        starts.append({k: v.clone() for k, v in model.vision_tower.state_dict().items()})
        return real_pretrain(model, *args, **kwargs)

    monkeypatch.setattr(pretrain_vision, "pretrain", pretrain)
    monkeypatch.setattr(pretrain_vision, "main", lambda args: pretrained.append(args) or real_main(args))
    assert nano.main(argv) == 0
    data = pretrained[0][pretrained[0].index("--data") + 1 :][:2]
    assert data == [str(tmp_path / "data" / "vision"), str(tmp_path / "data" / "vision_large")]
    assert pretrained[0][pretrained[0].index("--model") + 1] == str(start) and not (tmp_path / "init").exists()
    assert pretrained[0][pretrained[0].index("--lr") + 1] == "0.0002"
    assert json.loads((tmp_path / "data" / "vision_large" / "meta.json").read_text())["large"] is True
    assert not (tmp_path / "stage0").exists() and not (tmp_path / "stage3").exists()
    final = tmp_path / "decoder" / "merged"
    assert (final / POLICY_NAME).exists()
    model, _ = load_model(str(final), device="cpu", dtype=torch.float32)
    assert model.config.base_model_id is None  # every weight saved: it does not lean on the run's folders
    init, _ = load_model(str(start), device="cpu", dtype=torch.float32)
    assert all(torch.equal(v, starts[0][k]) for k, v in init.vision_tower.state_dict().items())  # trained further
    vision, _ = load_model(str(tmp_path / "vision"), device="cpu", dtype=torch.float32)
    swapped, _ = load_model(str(tmp_path / "swapped"), device="cpu", dtype=torch.float32)
    assert model.config.readout_confidence == vision.config.readout_confidence
    for name, kept in (("vision_tower", vision), ("readout", vision), ("projector", init), ("choice_head", init)):
        mine, theirs = getattr(model, name).state_dict(), getattr(kept, name).state_dict()
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs), name
    llm = model.llava.model.language_model.state_dict()
    assert all(torch.equal(v, init.llava.model.language_model.state_dict()[k]) for k, v in llm.items())
    trained = model.pixel_decoder.state_dict()
    assert any(not torch.equal(v, swapped.pixel_decoder.state_dict()[k]) for k, v in trained.items())

    tiny = save_checkpoint(*build_from_registry("qground-tiny"), tmp_path / "tiny")
    with pytest.raises(ValueError, match="cannot put .* tower into"):  # a tower of another architecture is refused
        nano.swap_vision(start, tiny, tmp_path / "refused")
