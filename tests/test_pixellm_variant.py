"""The opt-in PixelLM variants of the model (``docs/pixellm.md``): PixelLM's pixel decoder, φv's hidden width, the
vision tower's key-padding mask, the LLM's mask over padded image tokens, the sampled vocabulary; saved and loaded
through our checkpoint layout, in fp32 and bf16. Today's models are unchanged by them."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from PIL import Image

from qground.builder import build_model, build_tokenizer, config_tiny
from qground.checkpoint import load_model, projector_in_llava, save_checkpoint
from qground.config import ConfigError, DecoderConfig, QGroundConfig
from qground.inference import GenerationSettings, QGroundEngine, decode
from qground.modeling import PixelDecoder, PixelLMDecoder
from qground.modeling.qground import patch_validity
from qground.processor import QGroundProcessor
from qground.prompts import Turn


def pixellm_tiny() -> QGroundConfig:
    """``config_tiny`` with every PixelLM variant on: 64-px input, 8-px patches (8 × 8 grid), 16 image tokens."""
    base = config_tiny()
    decoder = dataclasses.replace(
        base.decoder, style="pixellm", input_hidden=128, input_dim=64, level_weights=(0.5, 0.5)
    )
    return dataclasses.replace(
        base,
        decoder=decoder,
        feature_layers=(3,),
        projector_hidden=128,
        vision_padding_mask=True,
        llm_image_padding_mask=True,
        resample="bilinear",
        size_rounding="half_up",
    )


@pytest.fixture(scope="module")
def pixellm_model():
    tokenizer, config = build_tokenizer(pixellm_tiny())
    return build_model(config), tokenizer


def test_config_round_trips_and_validates(tmp_path):
    config = pixellm_tiny()
    config.save(tmp_path)
    assert QGroundConfig.load(tmp_path) == config
    for decoder, message in [
        (DecoderConfig(style="pixellm"), "input_hidden"),
        (DecoderConfig(style="sam"), "decoder.style"),
        (DecoderConfig(input_hidden=8, input_dim=8), "input_hidden"),
    ]:
        with pytest.raises(ConfigError, match=message):
            dataclasses.replace(config, decoder=decoder)
    with pytest.raises(ConfigError, match="llm_image_padding_mask"):
        dataclasses.replace(config_tiny(), llm_image_padding_mask=True, readout=True)


def test_parts_follow_the_config(pixellm_model):
    model, _ = pixellm_model
    assert isinstance(model.pixel_decoder, PixelLMDecoder)
    assert model.projector.linear_1.weight.shape == (128, 32)  # φv: Dv → hidden 128 → 64
    assert model.projector.linear_2.weight.shape == (64, 128)
    assert not projector_in_llava(model.config)
    default = build_model(build_tokenizer(config_tiny())[1])
    assert isinstance(default.pixel_decoder, PixelDecoder) and projector_in_llava(default.config)


def test_patch_validity_counts_cells_holding_content():
    valid = patch_validity([(38, 64), (64, 1)], grid=8, cell=8)
    assert valid.shape == (2, 8, 8)
    assert int(valid[0].sum()) == 5 * 8 and int(valid[1].sum()) == 8  # ceil(38/8) rows; one column


def _pixels(config, h: int, w: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.zeros(1, 3, config.image_size, config.image_size)
    pixels[:, :, :h, :w] = torch.randn(1, 3, h, w, generator=g)
    return pixels


def test_vision_mask_keeps_padding_out_of_valid_features(pixellm_model):
    model, _ = pixellm_model
    config = model.config
    pixels = _pixels(config, 38, 64, seed=0)
    noisy = pixels.clone()
    noisy[:, :, 40:] = torch.randn(1, 3, 24, 64)  # rows 40+: patches of grid row 5+ hold no content (38 px)
    layer = config.decoder.layers[0]
    valid = torch.cat([torch.ones(1, dtype=torch.bool), patch_validity([(38, 64)], config.grid, 8).flatten()])

    def states(x, mask: bool):
        model.config = dataclasses.replace(config, vision_padding_mask=mask)
        try:
            with torch.no_grad():
                return model.vision_tower(x, output_hidden_states=True, **_mask_kwargs(model, mask)).hidden_states
        finally:
            model.config = config

    for mask in (True, False):
        a, b = states(pixels, mask)[layer][0], states(noisy, mask)[layer][0]
        assert torch.equal(a[valid], b[valid]) == mask


def _mask_kwargs(model, mask: bool) -> dict:
    """The tower's attention mask as ``encode_images`` builds it, through its public path."""
    if not mask:
        return {}
    captured = {}
    original = model.vision_tower.forward

    def spy(*args, **kwargs):
        captured.update(kwargs)
        return original(*args, **kwargs)

    model.vision_tower.forward = spy
    try:
        model.encode_images(torch.zeros(1, 3, 64, 64), image_sizes=[(38, 64)])
    finally:
        del model.vision_tower.forward
    return {"attention_mask": captured["attention_mask"]}


def test_llm_mask_hides_padded_image_tokens_and_cache_matches_full_reruns(pixellm_model):
    model, tokenizer = pixellm_model
    processor = QGroundProcessor(tokenizer, model.config)
    image = Image.new("RGB", (50, 30), (120, 80, 40))  # content 64 × 38: 3 of 4 token rows valid
    sample = processor([image], [Turn("How is the quality of this image?")])
    ids = sample["input_ids"][None]
    features = model.encode_images(sample["pixel_values"], image_sizes=[(38, 64)])
    assert int(features.token_mask.sum()) == 12
    settings = GenerationSettings(max_new_tokens=6)
    cached = list(decode(model, ids, features, settings))
    full = list(decode(model, ids, features, dataclasses.replace(settings, use_cache=False)))
    assert [t for t, _, _ in cached] == [t for t, _, _ in full]
    for (_, a, _), (_, b, _) in zip(cached, full):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # perturbing the padded image tokens changes nothing the text positions see
    changed = dataclasses.replace(features, tokens=features.tokens.clone())
    changed.tokens[0, ~features.token_mask[0]] += 5.0
    again = list(decode(model, ids, changed, settings))
    for (_, a, _), (_, b, _) in zip(cached, again):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    unmasked = dataclasses.replace(changed, token_mask=None)
    moved = list(decode(model, ids, unmasked, settings))
    assert not torch.allclose(cached[0][1], moved[0][1])


def test_sampled_vocab_is_never_exceeded(pixellm_model):
    model, tokenizer = pixellm_model
    limit = 40
    model.config = dataclasses.replace(model.config, llm=dataclasses.replace(model.config.llm, sampled_vocab=limit))
    try:
        with torch.no_grad():
            model.llava.lm_head.weight[limit:] += 10.0  # rows above the limit would win every argmax
        engine = QGroundEngine(model, QGroundProcessor(tokenizer, model.config))
        result = engine.ground(Image.new("RGB", (40, 40)), settings=GenerationSettings(max_new_tokens=5))
        assert result.token_ids and max(result.token_ids) < limit
    finally:
        with torch.no_grad():
            model.llava.lm_head.weight[limit:] -= 10.0
        model.config = dataclasses.replace(model.config, llm=dataclasses.replace(model.config.llm, sampled_vocab=0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_saved_variant_loads_and_grounds(pixellm_model, tmp_path, dtype):
    model, tokenizer = pixellm_model
    folder = save_checkpoint(model, tokenizer, tmp_path / "pixellm-tiny")
    loaded, loaded_tok = load_model(folder, device="cpu", dtype=dtype)
    assert loaded.config == model.config
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a.to(dtype), b.to(dtype)), k
    engine = QGroundEngine(loaded, QGroundProcessor(loaded_tok, loaded.config))
    features = engine.encode(engine.processor([Image.new("RGB", (50, 30))], [Turn("q")]), 0.0)
    logits = loaded.decode_masks(torch.randn(2, 6, 64, dtype=dtype), features, torch.zeros(2, dtype=torch.long))
    assert logits.shape == (2, 64, 64) and torch.isfinite(logits).all()
