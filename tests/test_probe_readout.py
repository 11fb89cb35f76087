"""The readout probe that compares pretrained towers before their stages (``training.probe_readout``)."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from qground.builder import build_model
from qground.checkpoint import save_checkpoint
from qground.processor import QGroundProcessor
from qground.taxonomy import CLASS_NAMES
from training.data import synth
from training.pretrain_vision import build_tensors, pool_targets
from training.probe_readout import auc, main, probe


@pytest.fixture(scope="module")
def readout_model(tiny):
    _, tokenizer, _ = tiny
    config = dataclasses.replace(tiny[0].config, readout=True, global_token=True)
    return build_model(config, seed=0), tokenizer


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("val")
    synth.write_dataset(folder, num=10, split="val", seed=3, comparisons=2, max_side=96)
    return folder


def test_auc_counts_pairs_and_half_ties():
    assert auc(np.array([0.9, 0.8, 0.1, 0.2]), np.array([1, 1, 0, 0])) == 1.0
    assert auc(np.array([0.1, 0.2, 0.9, 0.8]), np.array([1, 1, 0, 0])) == 0.0
    assert auc(np.array([0.5, 0.5]), np.array([1, 0])) == 0.5
    assert auc(np.array([0.9, 0.3, 0.5]), np.array([1, 0, 1])) == 1.0  # 0.9 > 0.3, 0.5 > 0.3
    assert auc(np.array([0.9, 0.3, 0.2]), np.array([1, 0, 1])) == 0.5
    assert auc(np.array([0.9, 0.3]), np.array([1, 1])) is None


def _scripted(logits_of):
    """``readout.logits`` replaced by one that answers batch after batch from ``logits_of(start, stop)``."""
    position = [0]

    def logits(hidden):
        start = position[0]
        position[0] += len(hidden)
        return logits_of(start, position[0])

    return logits


def test_an_oracle_readout_scores_one_and_a_silent_one_zero(readout_model, data, monkeypatch):
    model, tokenizer = readout_model
    processor = QGroundProcessor(tokenizer, model.config)
    _, masks, sizes, glob = build_tensors(processor, data)
    y, _ = pool_targets(masks, sizes, model.config.vision.patch_size, model.readout.sub)
    k = len(CLASS_NAMES)
    present = [name for c, name in enumerate(CLASS_NAMES) if (y.view(len(y), k, -1, *y.shape[2:])[:, c] > 0.5).any()]
    assert present  # the synthetic set has masks to find

    truth = torch.logit(y.clamp(1e-4, 1 - 1e-4))
    presence = torch.where(glob[:, :k] > 0.5, 5.0, -5.0)
    monkeypatch.setattr(model.readout, "logits", _scripted(lambda a, b: (truth[a:b], presence[a:b])))
    oracle = probe(model, processor, data, batch=4)
    assert oracle["images"] == len(y) == 10
    assert all(oracle["iou"][name] == 1.0 for name in present)
    assert all(v in (None, 1.0) for v in oracle["auc"].values())

    silent = (torch.full_like(truth, -9.0), torch.full_like(presence, -9.0))
    monkeypatch.setattr(model.readout, "logits", _scripted(lambda a, b: (silent[0][a:b], silent[1][a:b])))
    none = probe(model, processor, data, batch=4)
    assert all(none["iou"][name] == 0.0 for name in present)
    assert all(v in (None, 0.5) for v in none["auc"].values())


def test_the_command_reads_a_checkpoint_and_can_jpeg_every_image(readout_model, data, tmp_path, capsys, monkeypatch):
    model, tokenizer = readout_model
    folder = save_checkpoint(model, tokenizer, tmp_path / "tower")
    seen = []
    preprocess = QGroundProcessor.preprocess_image

    def spy(self, image, *args, **kwargs):
        seen.append(image)
        return preprocess(self, image, *args, **kwargs)

    monkeypatch.setattr(QGroundProcessor, "preprocess_image", spy)
    assert main(["--model", str(folder), "--data", str(data), "--jpeg", "90"]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert result["jpeg"] == 90 and result["images"] == 10
    assert set(result["iou"]) == set(CLASS_NAMES) and 0.0 <= result["mean_iou"] <= 1.0
    assert len(seen) == 10 and all(not isinstance(image, str) for image in seen)  # decoded after the JPEG save
    with pytest.raises(SystemExit):
        main(["--model", str(folder), "--data", str(data), "--jpeg", "0"])
    with pytest.raises(ValueError, match="readout"):
        plain = build_model(dataclasses.replace(model.config, readout=False, global_token=False), seed=0)
        probe(plain, QGroundProcessor(tokenizer, plain.config), data)


def test_several_folders_are_one_set_each_image_with_its_own_folders_severity(readout_model, data, tmp_path):
    """``build_tensors`` over several folders (the vision set and its large images): their images in order, each
    image's targets from its own folder's ``meta.json`` although image ids repeat across folders."""
    model, tokenizer = readout_model
    processor = QGroundProcessor(tokenizer, model.config)
    other = tmp_path / "other"
    shutil.copytree(data, other)
    meta = json.loads((other / "meta.json").read_text())
    for m in meta["images"]:
        m["severity"] = {name: 3 if s < 3 else 1 for name, s in m["severity"].items()}
    (other / "meta.json").write_text(json.dumps(meta))
    x1, _, _, g1 = build_tensors(processor, data)
    x2, _, _, g2 = build_tensors(processor, other)
    x, _, sizes, g = build_tensors(processor, [data, str(other)])
    assert torch.equal(x, torch.cat([x1, x2])) and torch.equal(g, torch.cat([g1, g2])) and len(sizes) == 20
    assert not torch.equal(g1, g2)  # the same ids, told apart by their folder
