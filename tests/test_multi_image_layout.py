"""multi_image_global_only: in a several-image prompt each image contributes only its whole-image token."""

import dataclasses

import pytest
import torch

from conftest import photo
from qground.builder import build_model, config_nano
from qground.config import QGroundConfig
from qground.inference import GenerationSettings, QGroundEngine
from qground.processor import QGroundProcessor
from qground.prompts import Turn


@pytest.fixture(scope="module")
def compact(tiny):
    model, tokenizer, _ = tiny
    config = dataclasses.replace(model.config, global_token=True, multi_image_global_only=True, image_ordinals=4)
    model = build_model(config, seed=0).eval()
    return model, tokenizer, QGroundProcessor(tokenizer, config)


def test_config_counts_and_validation(compact):
    config = compact[0].config
    n = config.num_image_tokens
    assert config.tokens_per_image(1) == n and config.tokens_per_image(2) == config.tokens_per_image(4) == 1
    assert [config.images_in(c) for c in (0, n, 2, 3, n - 1)] == [0, 1, 2, 3, n - 1]
    for bad in (1, n + 1, 2 * n):
        with pytest.raises(ValueError, match=f"{bad} image tokens fit no number of images"):
            config.images_in(bad)
    with pytest.raises(ValueError, match="multi_image_global_only needs global_token"):
        dataclasses.replace(config, global_token=False)
    assert QGroundConfig.from_dict(config.to_dict()).multi_image_global_only
    assert config_nano().multi_image_global_only


def test_processor_lays_out_one_token_per_image(compact):
    model, _, processor = compact
    config, image = model.config, model.config.token_ids.image
    one, _ = processor.encode([Turn("Describe it.", None)], 1)
    three, _ = processor.encode([Turn("Which image is noisier?", None)], 3)
    assert one.count(image) == config.num_image_tokens and three.count(image) == 3
    with pytest.raises(ValueError, match=f"at most {config.num_image_tokens - 1} images per prompt"):
        processor.encode([Turn("?", None)], config.num_image_tokens)


def test_embed_takes_each_images_last_token_only_when_several(compact):
    model = compact[0]
    config, image = model.config, model.config.token_ids.image
    t, d = config.num_image_tokens, config.llm.hidden_size
    ids = torch.tensor([[1] + [image] * t + [2, 2], [1, image, 5, image] + [2] * (t - 1)])
    tokens = torch.randn(3, t, d)
    embeds = model.embed(ids, tokens)
    ordinal = model.projector.ordinal.weight.detach()
    assert torch.allclose(embeds[0, 1 : 1 + t], tokens[0] + ordinal[0])
    assert torch.allclose(embeds[1, 1], tokens[1, -1] + ordinal[0])
    assert torch.allclose(embeds[1, 3], tokens[2, -1] + ordinal[1])
    with pytest.raises(ValueError, match="image tokens of 3 image"):
        model.embed(ids, tokens[:2])


def test_compare_end_to_end_and_trains(compact):
    """A two-image prompt runs through the training forward (finite loss, gradients reach φv) and the engine."""
    model, _, processor = compact
    images = [photo(40, 56, 1), photo(48, 48, 2)]
    sample = processor(images, [Turn("Which image is noisier?", "The first image.")])
    batch = processor.collate([sample])
    model.train()
    out = model(batch["input_ids"], batch["pixel_values"], batch["attention_mask"], batch["labels"])
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and model.projector.linear_2.weight.grad.abs().sum() > 0
    model.zero_grad()
    model.eval()
    engine = QGroundEngine(model, processor)
    result = engine.chat(images, [Turn("Which image is noisier?", None)], GenerationSettings(max_new_tokens=4))
    assert isinstance(result.text, str) and len(result.token_ids) >= 1 and result.masks == {}
