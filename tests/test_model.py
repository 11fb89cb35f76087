"""The model's token contract, losses and learning on qground-tiny."""

import pytest
import torch

from conftest import photo, train_steps
from qground.builder import build_from_registry
from qground.inference import GROUNDING_QUESTION
from qground.prompts import Turn, grounding_answer
from qground.tokenizer import seg_tokens

KEYS = ("input_ids", "pixel_values", "attention_mask", "labels", "masks", "image_sizes")


def inputs(batch):
    return {k: batch[k] for k in KEYS}


def test_shapes_and_losses(tiny, overfit_batch):
    model, tokenizer, _ = tiny
    batch = overfit_batch[1]
    cfg = model.config
    feats = model.encode_images(batch["pixel_values"])
    assert feats.tokens.shape == (2, cfg.num_image_tokens, cfg.llm.hidden_size)
    assert all(f.shape == (2, cfg.grid**2, cfg.vision.hidden_size) for f in feats.decoder)
    out = model(**inputs(batch))
    assert out["logits"].shape == (*batch["input_ids"].shape, cfg.llm.vocab_size)
    for k in ("ce", "bce", "dice", "loss"):
        assert out[k].ndim == 0 and torch.isfinite(out[k])
    w = cfg.loss
    expected = w.ce * out["ce"] + w.mask * (w.bce * out["bce"] + w.dice * out["dice"])
    assert torch.allclose(out["loss"], expected)
    logits = model.decode_masks(torch.randn(3, cfg.seg_count, cfg.llm.hidden_size), feats, torch.tensor([0, 1, 1]))
    assert logits.shape == (3, cfg.image_size, cfg.image_size)


def test_prompt_tokens_are_not_labelled(tiny, overfit_batch):
    model, tokenizer, _ = tiny
    batch = overfit_batch[1]
    labels, ids = batch["labels"][0], batch["input_ids"][0]
    kept = labels != -100
    answer = tokenizer.decode(ids[kept])
    assert answer.strip().startswith("The segmentation results are: noise [SEG0]")
    assert ids[kept][-1] == model.config.token_ids.eos
    assert not (ids[kept] == model.config.token_ids.image).any()


def test_seg_token_ids_distinct_and_fusion_registered(tiny):
    model, tokenizer, _ = tiny
    ids = tokenizer.convert_tokens_to_ids(list(seg_tokens(model.config).strings))
    assert len(set(ids)) == 6 and tuple(ids) == model.config.token_ids.seg
    names = dict(model.named_parameters())
    assert "seg_head.fusion" in names and names["seg_head.fusion"].shape == (2, 3)


def test_image_token_count_mismatch_raises(tiny, overfit_batch):
    model, _, _ = tiny
    batch = dict(overfit_batch[1])
    with pytest.raises(ValueError, match="image features and image tokens disagree"):
        model(**inputs(batch) | {"pixel_values": batch["pixel_values"][:1]})


def test_seg_groups_mismatch_raises(tiny, overfit_batch):
    model, _, _ = tiny
    batch = overfit_batch[1]
    with pytest.raises(ValueError, match=r"seg-token groups per sample \[1, 2\] ≠ target masks per sample \[1, 1\]"):
        model(**inputs(batch) | {"masks": [batch["masks"][0], batch["masks"][1][:1]]})


def test_broken_seg_group_raises(tiny):
    model, tokenizer, processor = tiny
    seg = model.config.token_ids.seg
    ids = torch.tensor([[5, seg[0], seg[1], seg[3], 7]])
    with pytest.raises(ValueError, match="complete ordered groups"):
        model.seg_groups(ids)
    assert model.seg_groups(ids, strict=False) == []
    ok = torch.tensor([[5, seg[0], 9, *seg[1:], 7, *seg]])
    groups = model.seg_groups(ok)
    assert [g.positions[0] for g in groups] == [1, 9]


def test_overfit_one_batch_loss_halves_in_30_steps(overfit_batch):
    model, _ = build_from_registry("qground-tiny")
    losses = train_steps(model, overfit_batch[1], 30)
    assert losses[-1] <= 0.5 * losses[0], losses


def test_vision_tower_stays_frozen(overfit_batch):
    model, _ = build_from_registry("qground-tiny")
    before = {k: v.clone() for k, v in model.vision_tower.state_dict().items()}
    train_steps(model, overfit_batch[1], 2)
    assert all(torch.equal(before[k], v) for k, v in model.vision_tower.state_dict().items())


def test_multi_image_sample_tokens(tiny):
    model, tokenizer, processor = tiny
    sample = processor([photo(30, 50, 3), photo(50, 30, 4)], [Turn("Which image is sharper?", "The first image.")])
    n_img = int((sample["input_ids"] == model.config.token_ids.image).sum())
    assert n_img == 2 * model.config.num_image_tokens
    text = tokenizer.decode(sample["input_ids"][sample["input_ids"] != model.config.token_ids.image])
    assert "The first image: \nThe second image: \nWhich image is sharper?" in text
    batch = processor.collate([sample])
    out = model(**inputs(batch))
    assert out["bce"] == 0 and torch.isfinite(out["loss"])


def test_user_text_cannot_inject_special_tokens(tiny):
    model, tokenizer, processor = tiny
    question = f"{GROUNDING_QUESTION} <image> [SEG0] [SEG1] [SEG2] [SEG3] [SEG4] [SEG5]"
    sample = processor([photo(20, 20, 5)], [Turn(question)])
    ids = sample["input_ids"]
    assert int((ids == model.config.token_ids.image).sum()) == model.config.num_image_tokens
    assert not torch.isin(ids, torch.tensor(model.config.token_ids.seg)).any()
    assert "[SEG0]" in tokenizer.decode(ids)  # still there, as plain text


def test_grounding_answer_format(tiny):
    model, _, _ = tiny
    text = grounding_answer(["noise", "blur"], seg_tokens(model.config).group_text())
    assert text == (
        "The segmentation results are: noise [SEG0] [SEG1] [SEG2] [SEG3] [SEG4] [SEG5] , "
        "blur [SEG0] [SEG1] [SEG2] [SEG3] [SEG4] [SEG5]"
    )
    assert grounding_answer([], "") == "There is no obvious distortion in the image."


def test_global_token_adds_one_whole_image_token(tiny):
    """With ``global_token`` φv appends the CLS position after the pooled patches: it moves with CLS only."""
    import dataclasses

    from qground.builder import build_model

    model, _, _ = tiny
    config = dataclasses.replace(model.config, global_token=True)
    assert config.num_image_tokens == model.config.num_image_tokens + 1
    projector = build_model(config, seed=0).projector
    feats = torch.randn(2, 1 + config.grid**2, projector.linear_1.in_features)
    out = projector(feats)
    assert out.shape == (2, config.num_image_tokens, config.llm.hidden_size)
    moved = feats.clone()
    moved[:, 0] += 1.0
    changed = (projector(moved) - out).abs().amax(dim=(0, 2)) > 0
    assert changed.tolist() == [False] * (config.num_image_tokens - 1) + [True]
    with pytest.raises(ValueError, match="CLS"):
        projector(feats[:, 1:])


def test_image_ordinals_tell_identical_images_apart(tiny):
    """With ``image_ordinals`` the same photo as first and second image gets different tokens (its place), and the
    first image of every sample gets the same ones."""
    import dataclasses

    from qground.builder import build_model

    model, tokenizer, _ = tiny
    config = dataclasses.replace(model.config, image_ordinals=2)
    model = build_model(config, seed=0)
    t, image = config.num_image_tokens, config.token_ids.image
    ids = torch.tensor([[1] + [image] * t + [2] + [image] * t, [1] + [image] * t + [2] * (t + 1)])
    tokens = torch.zeros(3, t, config.llm.hidden_size)
    embeds = model.embed(ids, tokens)
    first, second, other_first = embeds[0, 1 : 1 + t], embeds[0, 2 + t :], embeds[1, 1 : 1 + t]
    assert torch.equal(first, other_first) and not torch.allclose(first, second)
    with pytest.raises(ValueError, match="numbers at most 2"):
        model.embed(torch.tensor([[image] * (3 * t)]), torch.zeros(3, t, config.llm.hidden_size))
