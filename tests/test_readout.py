"""The distortion readout: φv's input in readout mode, frozen in every stage, saved with the heads, trained with the
vision tower."""

import dataclasses

import pytest
import torch

from qground.builder import build_model
from qground.checkpoint import HEADS_NAME, load_model, save_checkpoint
from qground.config import CONFIG_NAME, ConfigError
from qground.modeling import QGroundModel
from qground.modeling.projector import group_margins
from qground.modeling.qground import ImageFeatures
from qground.processor import QGroundProcessor
from qground.taxonomy import CLASS_NAMES
from training.stages import set_trainable


@pytest.fixture(scope="module")
def readout_model(tiny):
    _, tokenizer, _ = tiny
    config = dataclasses.replace(tiny[0].config, readout=True, global_token=True, image_ordinals=4, group_margins=True)
    return build_model(config, seed=0), tokenizer


def test_readout_layout(readout_model):
    model, _ = readout_model
    g, n = model.config.grid, len(CLASS_NAMES)
    hidden = torch.randn(3, 1 + g * g, model.config.vision.hidden_size)
    scores = model.readout(hidden)
    dense, whole = model.readout.logits(hidden)
    assert scores.shape == (3, 1 + g * g, n * 4) and dense.shape == (3, n * 4, g, g) and whole.shape == (3, 3 * n)
    assert torch.allclose(scores[:, 0, : 3 * n], whole.sigmoid()) and not scores[:, 0, 3 * n :].any()
    assert torch.allclose(scores[:, 1:].transpose(1, 2).reshape(3, -1, g, g), dense.sigmoid())
    with pytest.raises(ValueError, match="square patch map"):
        model.readout(hidden[:, :-1])


def test_phi_v_reads_the_readout(readout_model, overfit_batch):
    """In readout mode φv's tokens depend on the readout's scores (changing its weights changes them) and nothing
    else of the tower's output reaches the LLM; the decoder still gets the hidden states."""
    model, _ = readout_model
    pixels = overfit_batch[1]["pixel_values"]
    cfg = model.config
    feats = model.encode_images(pixels)
    assert feats.tokens.shape == (2, cfg.num_image_tokens, cfg.llm.hidden_size)
    assert feats.decoder[0].shape == (2, cfg.grid**2, cfg.vision.hidden_size)
    assert model.projector.linear_1.in_features == model.readout.width
    saved = model.readout.dense.bias.detach().clone()
    with torch.no_grad():
        model.readout.dense.bias += 1.0
    moved = model.encode_images(pixels)
    with torch.no_grad():
        model.readout.dense.bias.copy_(saved)
    changed = (moved.tokens - feats.tokens).abs().amax(dim=(0, 2)) > 0
    assert changed.tolist() == [True] * (cfg.num_image_tokens - 1) + [False]  # the whole-image token reads CLS
    assert torch.equal(moved.decoder[0], feats.decoder[0])


def test_readout_is_frozen_in_every_stage(readout_model):
    model, _ = readout_model
    model = build_model(model.config, seed=0)
    for groups in (["projector"], ["projector", "llm", "seg_head", "pixel_decoder"]):
        names = set_trainable(model, groups, model.config.lora)
        assert names and not any(n.startswith("readout.") for n in names)
        assert not any(p.requires_grad for p in model.readout.parameters())


def test_config_and_parts_must_agree(readout_model):
    model, _ = readout_model
    with pytest.raises(ValueError, match="config.readout is True but a readout was not given"):
        QGroundModel(model.config, model.llava, model.seg_head, model.pixel_decoder)


def test_readout_checkpoint_round_trip(readout_model, overfit_batch, tmp_path):
    model, tokenizer = readout_model
    with torch.no_grad():
        model.readout.whole.bias.fill_(0.5)  # not the initialization
    folder = save_checkpoint(model, tokenizer, tmp_path / "ckpt")
    from safetensors.torch import load_file

    assert {"readout.dense.weight", "readout.whole.bias", "projector.compare.0.weight"} <= set(
        load_file(folder / HEADS_NAME)
    )
    assert (folder / CONFIG_NAME).exists()
    loaded, _ = load_model(folder, device="cpu", dtype=torch.float32)
    assert loaded.config.readout and loaded.config.group_margins
    pixels = overfit_batch[1]["pixel_values"]
    ids = torch.tensor([[1] + [model.config.token_ids.image] * (2 * model.config.num_image_tokens)])
    assert torch.equal(loaded.embed(ids, loaded.encode_images(pixels)), model.embed(ids, model.encode_images(pixels)))


def test_pretraining_trains_and_keeps_the_readout(readout_model, tmp_path):
    from training.data import synth
    from training.pretrain_vision import pretrain

    model, tokenizer = readout_model
    model = build_model(model.config, seed=0)
    synth.write_dataset(tmp_path, num=12, split="train", seed=1, comparisons=2, max_side=96)
    before = model.readout.dense.weight.detach().clone()
    losses = pretrain(model, QGroundProcessor(tokenizer, model.config), tmp_path, epochs=4, batch=4, lr=3e-3)
    assert losses[-1] < losses[0]
    assert not torch.equal(model.readout.dense.weight, before)
    assert not any(p.requires_grad for p in [*model.readout.parameters(), *model.vision_tower.parameters()])


def test_slots_tell_token_places_apart(readout_model):
    """The readout's scores carry no position: the same scores everywhere still give each token slot its own
    embedding (so the LLM can say where), and a model without ``readout`` has no slots."""
    model, _ = readout_model
    cfg = model.config
    same = torch.full((1, 1 + cfg.grid**2, model.readout.width), 0.5)
    tokens = model.projector(same)[0]
    assert tokens.shape == (cfg.num_image_tokens, cfg.llm.hidden_size)
    assert all(not torch.allclose(tokens[i], tokens[j]) for i in range(len(tokens)) for j in range(i))
    plain = build_model(dataclasses.replace(cfg, readout=False, group_margins=False), seed=0)
    assert plain.projector.slot is None


def test_group_margins():
    """Per sample: the image with the most of a score is the only one with a positive first margin, the one with the
    least the only one with a positive second margin; a sample's only image gets zeros."""
    evidence = torch.tensor([[0.1, 0.5], [0.3, 0.2], [0.3, 0.0], [0.9, 0.9], [0.2, 0.4], [0.6, 0.1]])
    m = group_margins(evidence, [3, 1, 2])
    assert m.shape == (6, 4)
    expected = [
        [0.1 - 0.3, 0.5 - 0.2, 0.3 - 0.1, 0.0 - 0.5],
        [0.0, 0.2 - 0.5, 0.1 - 0.3, 0.0 - 0.2],
        [0.0, 0.0 - 0.5, 0.1 - 0.3, 0.2 - 0.0],
        [0.0, 0.0, 0.0, 0.0],
        [0.2 - 0.6, 0.4 - 0.1, 0.6 - 0.2, 0.1 - 0.4],
        [0.6 - 0.2, 0.1 - 0.4, 0.2 - 0.6, 0.4 - 0.1],
    ]
    assert torch.allclose(m, torch.tensor(expected))
    with pytest.raises(ValueError, match="per_sample counts 5 images but evidence holds 6"):
        group_margins(evidence, [3, 2])


def test_group_margins_reach_only_the_whole_image_tokens(readout_model, overfit_batch):
    """With ``group_margins`` the evidence of a prompt's other images changes each image's whole-image token (and
    nothing else); a single-image prompt never depends on the rest of the batch."""
    model, _ = readout_model
    config = model.config
    feats = model.encode_images(overfit_batch[1]["pixel_values"][[0, 1, 0]])
    assert feats.evidence.shape == (3, len(CLASS_NAMES) + 1)
    assert torch.allclose(feats.evidence[:, -1], feats.evidence[:, :-1].sum(1))
    t, image = config.num_image_tokens, config.token_ids.image
    ids = torch.tensor([[1] + [image] * (2 * t), [1, 2] + [image] * t + [2] * (t - 1)])  # two images, then one
    embeds = model.embed(ids, feats)
    other = ImageFeatures(feats.tokens, feats.decoder, feats.evidence.clone())
    other.evidence[1, 0] += 0.5  # the second image of sample 0 gets more blur
    moved = model.embed(ids, other)
    changed = (moved - embeds).abs().amax(-1) > 0
    assert changed[0].nonzero().flatten().tolist() == [t, 2 * t]  # both images' last (whole-image) token
    other.evidence[2] += 0.3  # sample 1's only image
    assert torch.equal(model.embed(ids, other)[1], embeds[1])
    two = torch.tensor([[1] + [image] * (2 * t)])
    zeros = torch.zeros(2, t, config.llm.hidden_size)
    noisy, clean = torch.zeros(1, len(CLASS_NAMES) + 1), torch.zeros(1, len(CLASS_NAMES) + 1)
    noisy[0, 4] = noisy[0, -1] = 0.6
    ordinal = model.projector.ordinal.weight
    as_first = model.embed(two, ImageFeatures(zeros, (), torch.cat([noisy, clean])))[0, t] - ordinal[0]
    as_second = model.embed(two, ImageFeatures(zeros, (), torch.cat([clean, noisy])))[0, 2 * t] - ordinal[1]
    assert not torch.allclose(as_first, as_second)  # "the noisiest" is told apart by place, not only by ordinal
    with pytest.raises(ValueError, match="carry no evidence"):
        model.embed(ids, ImageFeatures(feats.tokens, feats.decoder))
    with pytest.raises(ConfigError, match="needs readout, global_token and image_ordinals"):
        dataclasses.replace(config, readout=False)
