"""The distortion readout: φv's input in readout mode, frozen in every stage, saved with the heads, trained with the
vision tower."""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from qground.builder import build_model
from qground.checkpoint import HEADS_NAME, load_model, save_checkpoint
from qground.config import CONFIG_NAME, ConfigError, QGroundConfig
from qground.inference import GenerationSettings, QGroundEngine
from qground.masks import blend_readout, to_original_frame
from qground.modeling import QGroundModel
from qground.modeling.qground import mirror
from qground.policy import InferencePolicy, clipped_white, readout_thresholds
from qground.processor import ImageMeta, QGroundProcessor
from qground.prompts import Turn
from qground.taxonomy import CLASS_NAMES
from qground.tokenizer import seg_tokens
from training.stages import set_trainable


@pytest.fixture(scope="module")
def readout_model(tiny):
    _, tokenizer, _ = tiny
    config = dataclasses.replace(tiny[0].config, readout=True, global_token=True)
    return build_model(config, seed=0), tokenizer


def rebuilt(model: QGroundModel, config: QGroundConfig | None = None, **changes) -> QGroundModel:
    """``model``'s modules (shared, not copied) under ``config`` (default: its own) with ``changes``."""
    config = dataclasses.replace(config or model.config, **changes)
    return QGroundModel(config, model.llava, model.seg_head, model.pixel_decoder, model.readout)


def gate(
    model: QGroundModel, strictness: float, pixels: torch.Tensor, policy: InferencePolicy | None = None
) -> torch.Tensor | None:
    """The ``thresholds`` ``encode_images`` takes: ``policy``'s (default: the as-trained one) at ``strictness``."""
    return readout_thresholds(policy or InferencePolicy(), model.config, strictness, pixels)


@pytest.fixture
def thresholds(readout_model, monkeypatch) -> list:
    """The ``threshold`` (detection strictness gate) of every ``readout.scores`` call made while the test runs."""
    readout = readout_model[0].readout
    seen, scores = [], readout.scores

    def spy(dense, whole, threshold=None):
        seen.append(threshold)
        return scores(dense, whole, threshold)

    monkeypatch.setattr(readout, "scores", spy)
    return seen


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


def test_strictness_hides_the_evidence_of_classes_the_readout_is_not_sure_of(readout_model, tiny, overfit_batch):
    """A threshold per class: in each image, every score of class k (its three whole-image scores and its coverage of
    every patch) becomes 0 when its presence logit is below threshold_k; the others stay as they are. None: as trained.
    A model without a readout refuses strictness."""
    model, _ = readout_model
    g, n, sub2 = model.config.grid, len(CLASS_NAMES), model.readout.sub**2
    hidden = torch.randn(4, 1 + g * g, model.config.vision.hidden_size)
    dense, whole = model.readout.logits(hidden)
    plain = model.readout(hidden)
    threshold = whole[:, :n].median(dim=0).values  # some images keep a class, others lose it
    gated = model.readout(hidden, threshold)
    keep = whole[:, :n] >= threshold
    assert keep.any() and not keep.all()
    for m in range(4):
        for k in range(n):
            whole_cols = [k, n + k, 2 * n + k]
            patch_cols = slice(k * sub2, (k + 1) * sub2)
            for got, want in (
                (gated[m, 0, whole_cols], plain[m, 0, whole_cols]),
                (gated[m, 1:, patch_cols], plain[m, 1:, patch_cols]),
            ):
                assert torch.equal(got, want if keep[m, k] else torch.zeros_like(want)), (m, k)
    assert torch.equal(model.readout(hidden, -1e9), plain) and not model.readout(hidden, 1e9).any()
    per_image = threshold.repeat(4, 1)  # (M, K): one image asked for the impossible, the others as before
    per_image[0] = 1e9
    by_image = model.readout(hidden, per_image)
    assert not by_image[0].any() and torch.equal(by_image[1:], gated[1:])
    plain, pixels = tiny[0], overfit_batch[1]["pixel_values"]
    with pytest.raises(ValueError, match="readout gates and coverage need a model with a distortion readout"):
        plain.encode_images(pixels, thresholds=gate(plain, 1.0, pixels))
    with pytest.raises(ValueError, match="readout gates and coverage need a model with a distortion readout"):
        plain.encode_images(pixels, keep_coverage=True)
    with pytest.raises(ValueError, match="strictness needs a model with a distortion readout"):
        GenerationSettings(strictness=1.0).check_model(readout=False)
    with pytest.raises(ConfigError, match="default_strictness need a model with a readout"):
        QGroundEngine(plain, tiny[2], policy=InferencePolicy(default_strictness=1.0))


def test_strictness_is_scaled_by_the_readout_confidence(readout_model, overfit_batch, thresholds):
    """With ``readout_confidence`` c, class k needs a presence logit of s × c_k / mean(c) (a class the readout is
    less sure of needs less); without it, s for every class; at 0 the readout is not gated."""
    model, _ = readout_model
    pixels = overfit_batch[1]["pixel_values"]
    confident = rebuilt(model, readout_confidence=(6.0, 2.0, 6.0, 4.0, 7.0))
    confident.encode_images(pixels, thresholds=gate(confident, 3.0, pixels))
    model.encode_images(pixels, thresholds=gate(model, 3.0, pixels))
    model.encode_images(pixels)
    model.encode_images(pixels, thresholds=gate(model, 0.0, pixels))
    assert thresholds[0].shape == thresholds[1].shape == (len(pixels), len(CLASS_NAMES))  # per image and class
    assert torch.allclose(thresholds[0], 3.0 * torch.tensor([6.0, 2.0, 6.0, 4.0, 7.0]) / 5.0)
    assert torch.allclose(thresholds[1], torch.full((5,), 3.0)) and thresholds[2] is None and thresholds[3] is None
    with pytest.raises(ConfigError, match="readout_confidence must hold 5 positive logits"):
        dataclasses.replace(model.config, readout_confidence=(1.0, -1.0, 1.0, 1.0, 1.0))
    with pytest.raises(ConfigError, match="readout_confidence needs readout: true"):
        dataclasses.replace(model.config, readout=False, readout_confidence=(1.0,) * 5)


def test_overexposure_needs_a_clipped_white_pixel(readout_model, thresholds):
    """With ``overexposure_needs_clipping`` the strictness gate asks an image that clips nowhere for an unreachable
    overexposure presence logit; an image with a clipped white pixel, and every other class, keep the plain gate;
    at strictness 0 nothing is gated. The padding (the mean color) never counts as clipped."""
    model, tokenizer = readout_model
    policy = InferencePolicy(overexposure_needs_clipping=True)
    processor = QGroundProcessor(tokenizer, model.config)
    pale = np.full((40, 60, 3), 245, np.uint8)  # bright, but in range
    blown = pale.copy()
    blown[5:25, 10:40] = 255
    tinted = pale.copy()
    tinted[5:25, 10:40] = (255, 255, 200)  # two channels clipped: a saturated highlight, not white
    pixels = torch.stack([processor.preprocess_image(Image.fromarray(a))[0] for a in (pale, blown, tinted)])
    assert clipped_white(pixels, model.config).tolist() == [False, True, False]
    model.encode_images(pixels, thresholds=gate(model, 2.0, pixels, policy))
    model.encode_images(pixels, thresholds=gate(model, 0.0, pixels, policy))
    over, plain = CLASS_NAMES.index("overexposure"), torch.full((len(CLASS_NAMES),), 2.0)
    gated = thresholds[0]
    assert gated.shape == (3, len(CLASS_NAMES)) and torch.equal(gated[1], plain)
    for m in (0, 2):
        assert gated[m, over] == float("inf") and torch.equal(gated[m, :over], plain[:over])
        assert torch.equal(gated[m, over + 1 :], plain[over + 1 :])
    assert thresholds[1] is None
    with pytest.raises(ConfigError, match="overexposure_needs_clipping need a model with a readout"):
        policy.check_model(dataclasses.replace(model.config, readout=False))


def test_the_tower_takes_its_own_channels_only(readout_model):
    """Image tensors with more or fewer channels than the tower reads are refused, both counts named."""
    model, tokenizer = readout_model
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), np.uint8))
    pixels, _ = QGroundProcessor(tokenizer, model.config).preprocess_image(photo)
    assert pixels.shape == (model.config.vision.num_channels, model.config.image_size, model.config.image_size)
    batch = pixels[None]
    with pytest.raises(ValueError, match="image tensors have 4 channels; this model's tower takes 3"):
        model.encode_images(torch.cat([batch, batch[:, :1]], dim=1))
    with pytest.raises(ValueError, match="image tensors have 2 channels; this model's tower takes 3"):
        model.encode_images(batch[:, :-1])


def test_strictness_applies_to_one_image_prompts_only(readout_model, overfit_photo_files, thresholds):
    """Comparisons rank images by their evidence as read: with several images the engine does not gate the readout,
    and the result records strictness 0; with one image it does and records the setting, or, when the request names
    none, the policy's ``default_strictness``."""
    model, tokenizer = readout_model
    engine = QGroundEngine(model, QGroundProcessor(tokenizer, model.config))
    settings = GenerationSettings(max_new_tokens=2, strictness=4.0)
    one = engine.chat([Image.open(overfit_photo_files[0])], [Turn("Is it sharp?")], settings)
    two = engine.chat([Image.open(p) for p in overfit_photo_files], [Turn("Which image is sharper?")], settings)
    assert torch.allclose(thresholds[0], torch.full((5,), 4.0)) and thresholds[1] is None
    assert one.strictness == 4.0 and two.strictness == 0.0
    engine.set_policy(InferencePolicy(default_strictness=3.0))
    unnamed = GenerationSettings(max_new_tokens=2)
    assert unnamed.strictness is None
    default = engine.chat([Image.open(overfit_photo_files[0])], [Turn("Is it sharp?")], unnamed)
    assert default.strictness == 3.0 and torch.allclose(thresholds[2], torch.full((5,), 3.0))
    assert engine.strictness(unnamed, 2) == 0.0 and engine.strictness(settings, 1) == 4.0


def test_the_engine_gates_by_its_policy_at_the_strictness_it_runs_at(readout_model, overfit_photo_files, monkeypatch):
    """The engine asks ``readout_thresholds`` for its policy's thresholds with the prompt's pixel values and the
    strictness it runs at, and hands them to the readout; at strictness 0 there are none."""
    import qground.inference

    model, tokenizer = readout_model
    policy = InferencePolicy(overexposure_needs_clipping=True)
    engine = QGroundEngine(model, QGroundProcessor(tokenizer, model.config), policy=policy)
    seen = []

    def spy(policy, config, strictness, pixels):
        seen.append((policy, strictness, pixels))
        return readout_thresholds(policy, config, strictness, pixels)

    monkeypatch.setattr(qground.inference, "readout_thresholds", spy)
    photo = Image.open(overfit_photo_files[0])
    engine.chat([photo], [Turn("Is it sharp?")], GenerationSettings(max_new_tokens=2, strictness=4.0))
    engine.chat([photo], [Turn("Is it sharp?")], GenerationSettings(max_new_tokens=2, strictness=0.0))
    (used, strictness, pixels), (_, zero, _) = seen
    assert used is policy and strictness == 4.0 and zero == 0.0
    assert torch.equal(pixels, engine.processor.preprocess_image(photo)[0][None])
    assert readout_thresholds(policy, model.config, 0.0, pixels) is None


def test_coverage_map_lays_the_sub_cells_out_in_the_input_frame(readout_model):
    """``coverage`` (M, classes, g·sub, g·sub): pixel (y, x) of the map is sub-cell (y mod sub, x mod sub) of patch
    (y // sub, x // sub)."""
    model, _ = readout_model
    g, sub = model.config.grid, model.readout.sub
    hidden = torch.randn(2, 1 + g * g, model.config.vision.hidden_size)
    dense, _ = model.readout.logits(hidden)
    cover = model.readout.coverage(dense)
    assert cover.shape == (2, len(CLASS_NAMES), g * sub, g * sub)
    for m, k, y, x in ((0, 0, 0, 0), (1, 3, 5, 2), (1, 4, g * sub - 1, g * sub - 2)):
        channel = k * sub * sub + (y % sub) * sub + x % sub
        assert torch.isclose(cover[m, k, y, x], dense[m, channel, y // sub, x // sub].sigmoid())


def test_masks_blend_the_decoder_with_the_readout_coverage(readout_model, overfit_batch, tiny):
    """``blend_readout``: logits of (1 − w)·σ(decoder) + w·coverage of the row's class (bilinear to S × S); w = 0,
    class −1 and no coverage leave the decoder's logits as they are. ``encode_images`` keeps the coverage only when
    asked (``keep_coverage``), which the engine does only for a policy that blends (w > 0); a model without a readout
    has none to keep."""
    model, tokenizer = readout_model
    pixels = overfit_batch[1]["pixel_values"]
    assert model.encode_images(pixels).coverage is None
    engine = QGroundEngine(model, QGroundProcessor(tokenizer, model.config))
    sizes = [tuple(v) for v in overfit_batch[1]["image_sizes"].tolist()]
    sample = {"pixel_values": pixels, "metas": [ImageMeta(size, size) for size in sizes]}
    assert engine.encode(sample, 0.0).coverage is None  # the policy's weight is 0
    s, sub = model.config.image_size, model.readout.sub
    logits = torch.randn(3, s, s)
    image, classes = torch.tensor([0, 1, 1]), torch.tensor([2, -1, 4])
    for w in (0.5, 1.0):
        engine.set_policy(InferencePolicy(readout_mask_weight=w))
        feats = engine.encode(sample, 0.0)
        assert feats.coverage.shape == (2, len(CLASS_NAMES), model.config.grid * sub, model.config.grid * sub)
        assert torch.equal(feats.coverage, model.encode_images(pixels, keep_coverage=True).coverage)
        assert torch.equal(blend_readout(logits, feats.coverage[image], classes, 0.0), logits)  # weight 0
        assert torch.equal(blend_readout(logits, None, classes, w), logits)
        cover = torch.nn.functional.interpolate(feats.coverage, size=(s, s), mode="bilinear")  # (M, classes, S, S)
        out = blend_readout(logits, feats.coverage[image], classes, w)
        assert torch.equal(out[1], logits[1])
        for row, (m, k) in ((0, (0, 2)), (2, (1, 4))):
            want = (1 - w) * logits[row].sigmoid() + w * cover[m, k]
            assert torch.allclose(out[row].sigmoid(), want, atol=1e-5)
    with pytest.raises(ConfigError, match="readout_mask_weight must be between 0 and 1"):
        InferencePolicy(readout_mask_weight=1.5)
    with pytest.raises(ConfigError, match="readout_mask_weight need a model with a readout"):
        InferencePolicy(readout_mask_weight=0.5).check_model(dataclasses.replace(model.config, readout=False))
    with pytest.raises(ConfigError, match="readout_mask_weight need a model with a readout"):
        QGroundEngine(tiny[0], tiny[2], policy=InferencePolicy(readout_mask_weight=0.5))


def test_mirror_flips_each_content_window_only():
    maps = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    sizes = [(5, 8), (8, 3)]
    out = mirror(maps, sizes)
    for i, (h, w) in enumerate(sizes):
        assert torch.equal(out[i, :, :h, :w], maps[i, :, :h, :w].flip(-1))
        assert torch.equal(out[i, :, h:], maps[i, :, h:]) and torch.equal(out[i, :, :, w:], maps[i, :, :, w:])
    assert torch.equal(mirror(out, sizes), maps)
    with pytest.raises(ValueError, match="1 content sizes for 2 images"):
        mirror(maps, sizes[:1])


def test_flip_average_reads_each_image_and_its_mirror(readout_model, overfit_batch, monkeypatch):
    """With content sizes (the engine's ``flip_average``), the readout's whole-image logits (what the gate, φv's
    whole-image token and the choice keys read) are the mean of the image's and its mirror's; the coverage (kept for
    the readout's mask blend) and the decoder's mask probabilities are the means of both views' maps, the mirror's
    mirrored back; φv's patch tokens and the decoder's own patch maps stay the image's. Without content sizes
    (training) nothing changes."""
    model, _ = readout_model
    pixels = overfit_batch[1]["pixel_values"]
    sizes = [tuple(v) for v in overfit_batch[1]["image_sizes"].tolist()]
    wholes, scores = [], model.readout.scores

    def spy(dense, whole, threshold=None):
        wholes.append(whole)
        return scores(dense, whole, threshold)

    monkeypatch.setattr(model.readout, "scores", spy)
    both = model.encode_images(pixels, sizes, keep_coverage=True)
    own = model.encode_images(pixels, keep_coverage=True)  # no sizes: one view
    mirrored = model.encode_images(mirror(pixels, sizes), keep_coverage=True)
    assert torch.allclose(wholes[0], (wholes[1] + wholes[2]) / 2, atol=1e-6)
    s = model.config.image_size

    def full(cover: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(cover, size=(s, s), mode="bilinear", align_corners=False)

    assert both.coverage.shape == (2, len(CLASS_NAMES), s, s)
    assert torch.allclose(both.coverage, (full(own.coverage) + mirror(full(mirrored.coverage), sizes)) / 2, atol=1e-6)
    assert torch.equal(both.tokens[:, :-1], own.tokens[:, :-1]) and not torch.equal(both.tokens, own.tokens)
    assert torch.equal(both.decoder[0], own.decoder[0]) and torch.allclose(both.mirrored[0], mirrored.decoder[0])
    assert own.mirrored is None and own.content_sizes is None  # training: one view
    states = torch.randn(3, model.config.seg_count, model.config.llm.hidden_size)
    image = torch.tensor([1, 0, 1])
    got = model.decode_masks(states, both, image).sigmoid()
    a = model.decode_masks(states, own, image).sigmoid()
    b = mirror(model.decode_masks(states, mirrored, image).sigmoid(), [sizes[i] for i in image.tolist()])
    assert torch.allclose(got, (a + b) / 2, atol=1e-5)


def test_the_engine_gives_the_model_its_images_content_sizes(readout_model, overfit_photo_files, monkeypatch):
    """With ``flip_average`` the engine hands the model its images' content sizes (two views); without, none."""
    model, tokenizer = readout_model
    seen, encode = [], model.encode_images

    def spy(pixel_values, content_sizes=None, thresholds=None, keep_coverage=False, image_sizes=None):
        features = encode(pixel_values, content_sizes, thresholds, keep_coverage, image_sizes)
        seen.append((content_sizes, features.mirrored is not None))
        return features

    monkeypatch.setattr(model, "encode_images", spy)
    engine = QGroundEngine(model, QGroundProcessor(tokenizer, model.config), policy=InferencePolicy(flip_average=True))
    photos = [Image.open(p) for p in overfit_photo_files]
    engine.chat(photos, [Turn("Which image is sharper?")], GenerationSettings(max_new_tokens=2))
    engine.set_policy(engine.policy.replace(flip_average=False))
    engine.chat(photos, [Turn("Which image is sharper?")], GenerationSettings(max_new_tokens=2))
    want = [engine.processor.content_size((p.height, p.width)) for p in photos]
    assert seen == [(want, True), (None, False)]


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

    assert {"readout.dense.weight", "readout.whole.bias"} <= set(load_file(folder / HEADS_NAME))
    assert (folder / CONFIG_NAME).exists()
    loaded, _ = load_model(folder, device="cpu", dtype=torch.float32)
    assert loaded.config.readout
    pixels = overfit_batch[1]["pixel_values"]
    assert torch.equal(loaded.encode_images(pixels).tokens, model.encode_images(pixels).tokens)


@pytest.mark.parametrize(("symmetries", "crops"), [(False, 0.0), (True, 0.0), (True, 1.0)])
def test_pretraining_trains_and_keeps_the_readout(readout_model, tmp_path, symmetries, crops):
    from training.data import synth
    from training.pretrain_vision import pretrain

    model, tokenizer = readout_model
    model = build_model(model.config, seed=0)
    synth.write_dataset(tmp_path, num=12, split="train", seed=1, comparisons=2, max_side=96)
    before = model.readout.dense.weight.detach().clone()
    processor = QGroundProcessor(tokenizer, model.config)
    losses = pretrain(model, processor, tmp_path, epochs=4, batch=4, lr=3e-3, symmetries=symmetries, crops=crops)
    assert losses[-1] < losses[0]
    assert not torch.equal(model.readout.dense.weight, before)
    assert not any(p.requires_grad for p in [*model.readout.parameters(), *model.vision_tower.parameters()])
    assert model.config.readout_confidence is None or len(model.config.readout_confidence) == len(CLASS_NAMES)


def test_confidence_is_the_median_presence_logit_of_positive_images(readout_model, overfit_batch):
    from training.pretrain_vision import confidence

    model, _ = readout_model
    n = len(CLASS_NAMES)
    x = overfit_batch[1]["pixel_values"].repeat(3, 1, 1, 1)  # (6, C, S, S)
    present = torch.tensor([[1, 1, 1, 1, 1], [1, 0, 1, 0, 1], [0, 1, 1, 1, 0]] * 2, dtype=torch.float32)
    saved = model.readout.whole.bias.detach().clone()
    try:
        with torch.no_grad():
            whole = model.readout.logits(model.vision_tower(x).last_hidden_state)[1]
            model.readout.whole.bias[:n] += 1.0 - whole[:, :n].min()  # every presence logit ≥ 1
            whole = model.readout.logits(model.vision_tower(x).last_hidden_state)[1]
        got = confidence(model.vision_tower, model.readout, x, present)
        assert got == tuple(round(float(whole[present[:, k] > 0, k].median()), 3) for k in range(n))
        present[:, 2] = 0  # a class no image has: no confidence
        assert confidence(model.vision_tower, model.readout, x, present) is None
    finally:
        with torch.no_grad():
            model.readout.whole.bias.copy_(saved)


def test_slots_tell_token_places_apart(readout_model):
    """The readout's scores carry no position: the same scores everywhere still give each token slot its own
    embedding (so the LLM can say where), and a model without ``readout`` has no slots."""
    model, _ = readout_model
    cfg = model.config
    same = torch.full((1, 1 + cfg.grid**2, model.readout.width), 0.5)
    tokens = model.projector(same)[0]
    assert tokens.shape == (cfg.num_image_tokens, cfg.llm.hidden_size)
    assert all(not torch.allclose(tokens[i], tokens[j]) for i in range(len(tokens)) for j in range(i))
    plain = build_model(dataclasses.replace(cfg, readout=False), seed=0)
    assert plain.projector.slot is None


def test_readout_checkpoint_loads_quietly_and_checks_its_keys(readout_model, tmp_path, capfd):
    """Its LLaVA weights leave the projector out by design: loading prints no report about that, but any other
    missing weight is an error."""
    from safetensors.torch import load_file, save_file

    from qground.checkpoint import FULL_WEIGHTS, CheckpointError

    model, tokenizer = readout_model
    folder = save_checkpoint(model, tokenizer, tmp_path / "ckpt")
    capfd.readouterr()
    load_model(folder, device="cpu", dtype=torch.float32)
    assert "multi_modal_projector" not in capfd.readouterr().err
    state = load_file(folder / FULL_WEIGHTS)
    dropped = next(k for k in state if k.endswith("layers.0.self_attn.o_proj.weight"))
    del state[dropped]
    save_file(state, folder / FULL_WEIGHTS, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="does not fit qground_config.json: missing or unexpected"):
        load_model(folder, device="cpu", dtype=torch.float32)


def test_the_engine_draws_blended_masks(readout_model):
    """The engine's masks go through the blend with the class each answer names: at weight 1 the noise mask is where
    the readout's noise coverage is above one half."""
    model, tokenizer = readout_model
    engine = QGroundEngine(
        model, QGroundProcessor(tokenizer, model.config), policy=InferencePolicy(readout_mask_weight=1.0)
    )
    group = seg_tokens(model.config).group_text()
    tokens = tokenizer(f"The segmentation results are: noise {group}", add_special_tokens=False).input_ids
    states = [torch.randn(model.config.llm.hidden_size) for _ in tokens]
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8))
    sample = engine.processor([photo], [Turn("x")])
    meta = sample["metas"][0]
    feats = engine.encode(sample, 0.0)
    result = engine._finish(tokens, states, feats, meta, [])
    s = model.config.image_size
    cover = torch.nn.functional.interpolate(feats.coverage[:, 4:5], size=(s, s), mode="bilinear")[:, 0]
    expected = to_original_frame(torch.logit(cover, eps=1e-6), meta)[0] > 0
    assert expected.shape == (20, 30) and expected.any() and not expected.all()
    assert set(result.masks) == {"noise"} and np.array_equal(result.masks["noise"], expected.numpy())
