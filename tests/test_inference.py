"""KV-cached generation, streaming, answer parsing and masks at the original size."""

import io

import pytest
import torch
from PIL import Image

from conftest import iou
from qground.inference import GenerationSettings, decode
from qground.masks import merge
from qground.prompts import Turn
from qground.tokenizer import seg_tokens


def test_overfit_model_grounds_its_photos(trained_tiny, overfit_batch):
    for img, truth in overfit_batch[0]:
        result = trained_tiny.ground(img)
        assert set(result.masks) == set(truth)
        for name, mask in truth.items():
            assert result.masks[name].shape == mask.shape == (img.height, img.width)
            assert iou(result.masks[name], mask) >= 0.9
            assert 0.5 < result.scores[name] <= 1.0
        assert "[SEG" not in result.text and "The segmentation results are:" in result.text
        assert result.raw_text.count("[SEG0]") == len(truth)
        assert {"preprocess", "generate", "masks", "total"} <= set(result.timings)


def test_cached_generation_matches_uncached_reference(trained_tiny, overfit_batch):
    engine = trained_tiny
    for img, _ in overfit_batch[0]:
        cached = engine.ground(img, settings=GenerationSettings(use_cache=True))
        plain = engine.ground(img, settings=GenerationSettings(use_cache=False))
        assert cached.token_ids == plain.token_ids
        assert cached.masks.keys() == plain.masks.keys()
        for name in cached.masks:
            assert iou(cached.masks[name], plain.masks[name]) >= 0.999


def test_predicting_states_match_a_full_forward(trained_tiny, overfit_batch):
    """The state recorded for token t equals the full teacher-forced pass's state at t - 1."""
    engine = trained_tiny
    model = engine.model
    sample = engine.processor([overfit_batch[0][0][0]], [Turn("Please segment out distorted regions in the image.")])
    ids = sample["input_ids"][None]
    feats = model.encode_images(sample["pixel_values"])
    steps = list(decode(model, ids, feats, GenerationSettings(max_new_tokens=12)))
    full = torch.cat([ids, torch.tensor([[t for t, *_ in steps]])], dim=1)
    with torch.no_grad():
        hidden = model.language_model(inputs_embeds=model.embed(full, feats.tokens)).last_hidden_state[0]
    for i, (_, state, _) in enumerate(steps):
        assert torch.allclose(state, hidden[ids.shape[1] - 1 + i], atol=1e-4)


def test_streaming_yields_growing_text_then_result(trained_tiny, overfit_batch):
    items = list(
        trained_tiny.stream([overfit_batch[0][1][0]], [Turn("Please segment out distorted regions in the image.")])
    )
    *texts, result = items
    assert len(texts) > 1 and all(isinstance(t, str) for t in texts)
    assert all(b.startswith(a.rstrip(",")) or len(b) >= len(a) for a, b in zip(texts, texts[1:]))
    assert texts[-1] == result.text and set(result.masks) == {"blur", "low light"}


def test_masks_at_original_size_for_exif_rotated_photo(trained_tiny, overfit_batch):
    img, truth = overfit_batch[0][0]  # 48×80, noise top-left
    stored = img.transpose(Image.Transpose.ROTATE_90)  # what a camera writes before orientation 6
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    stored.save(buf, format="JPEG", quality=98, exif=exif.tobytes())
    result = trained_tiny.ground(buf.getvalue())
    assert result.image_size == (48, 80)
    assert result.masks["noise"].shape == (48, 80)
    assert iou(result.masks["noise"], truth["noise"]) >= 0.8


def test_parsing_maps_typos_and_merges_repeats(trained_tiny):
    """Feed the parser a hand-written answer: class words with typos, a repeated class, a nameless group."""
    engine = trained_tiny
    model, tok = engine.model, engine.tokenizer
    group = seg_tokens(model.config).group_text()
    answer = f"The segmentation results are: nosie {group} , over exposure {group} , noisy {group}"
    tokens = tok(answer, add_special_tokens=False).input_ids
    states = [torch.randn(model.config.llm.hidden_size) for _ in tokens]
    sample = engine.processor([Image.new("RGB", (30, 20), "gray")], [Turn("x")])
    feats = model.encode_images(sample["pixel_values"])
    result = engine._finish(tokens, states, feats, sample["metas"][0], [])
    assert set(result.masks) == {"noise", "overexposure"}
    assert all(m.shape == (20, 30) and m.dtype == bool for m in result.masks.values())
    assert result.text == "The segmentation results are: nosie, over exposure, noisy"
    nameless = tok(f"{group}", add_special_tokens=False).input_ids
    result = engine._finish(nameless, [states[0]] * len(nameless), feats, sample["metas"][0], [])
    assert result.masks == {} and result.warnings


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_new_tokens": 0}, "max new tokens"),
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 0.0}, "top-p"),
        ({"min_new_tokens": 9, "max_new_tokens": 4}, "min new tokens"),
        ({"strictness": -0.5}, "strictness must be between 0 and 8"),
        ({"strictness": 8.5}, "strictness must be between 0 and 8"),
        ({"strictness": float("nan")}, "strictness"),
    ],
)
def test_settings_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GenerationSettings(**kwargs)


def test_sampling_is_seeded_and_min_tokens_respected(trained_tiny, overfit_batch):
    img = overfit_batch[0][0][0]
    s = GenerationSettings(temperature=1.5, top_p=0.9, seed=3, max_new_tokens=20, min_new_tokens=20)
    a, b = trained_tiny.ground(img, settings=s), trained_tiny.ground(img, settings=s)
    assert a.token_ids == b.token_ids and len(a.token_ids) == 20


def test_merge_ors_a_class_and_scores_its_mean_probability_inside():
    """``merge``: a mask is logits > 0; its score is the mean probability over it (read in row stripes: odd heights
    and rows past a stripe count the same), rows of one class are OR-ed keeping the higher score, no name is left
    out and counted, an empty mask scores 0."""
    torch.manual_seed(0)
    logits = torch.randn(4, 131, 37) * 3 - 1
    logits[3] = -1.0
    out = merge(logits, ["blur", "noise", "blur", "jitter"])
    for name, rows in (("noise", [1]), ("blur", [0, 2])):
        masks = [(logits[i] > 0).numpy() for i in rows]
        assert (out.masks[name] == (masks[0] | masks[-1])).all()
        best = max(float(torch.sigmoid(logits[i][logits[i] > 0]).mean()) for i in rows)
        assert out.scores[name] == pytest.approx(best, abs=1e-6)
    assert out.scores["jitter"] == 0.0 and not out.masks["jitter"].any()
    assert merge(logits[:1], [None]).unnamed == 1
