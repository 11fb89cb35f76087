"""The shipped qground-nano: loads with no network, stays small, grounds held-out photos, and answers every question
the app offers, and questions in wordings it was never trained on, in finished sentences naming the right class."""

import dataclasses
import functools
import json

import numpy as np
import pytest
from PIL import Image

from qground.builder import ASSETS
from qground.checkpoint import load_model, load_policy
from qground.evaluate import is_finished_sentence, named_classes
from qground.inference import GenerationSettings, QGroundEngine
from qground.policy import POLICY_NAME, RETIRED_OFF
from qground.processor import QGroundProcessor
from qground.prompts import Turn
from qground.questions import COMPARE_PRESETS, QUESTIONS
from qground.taxonomy import CLASS_NAMES
from training.calibrate import choose
from training.data import synth

NANO = ASSETS / "qground-nano"
# what each preset of the Compare tab asks for: the image without these classes is the right answer
PRESET_CLASSES = {
    "Overall quality": set(CLASS_NAMES),
    "Sharpness": {"blur", "jitter"},
    "Noise": {"noise"},
    "Exposure": {"overexposure", "low light"},
}


@functools.cache
def examples() -> tuple[dict[str, synth.Generated], list[synth.Generated]]:
    """Held-out images (eval photos coffee and grace_hopper, seed 0; the tests leave the downloaded pool out), chosen
    by rule, not by model output: per class the first image whose only distortion is that class at severity 3 over
    at least 40 % of the image, and the first 12 clean images."""
    by_class: dict[str, synth.Generated] = {}
    clean: list[synth.Generated] = []
    for index in range(600):
        g = synth.generate(index, "eval", seed=0)
        if not g.masks:
            clean.append(g)
        elif len(g.masks) == 1:
            ((name, mask),) = g.masks.items()
            if g.severity[name] == 3 and mask.mean() >= 0.4:
                by_class.setdefault(name, g)
        if len(by_class) == len(CLASS_NAMES) and len(clean) >= 12:
            return by_class, clean[:12]
    raise AssertionError(f"held-out examples missing: {set(CLASS_NAMES) - set(by_class)}, {len(clean)} clean")


@pytest.fixture(scope="module")
def nano():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        model, tokenizer = load_model("qground-nano")
        policy = load_policy("qground-nano")
    return QGroundEngine(model, QGroundProcessor(tokenizer, model.config), name="qground-nano", policy=policy)


def test_shipped_files_are_small_and_safe():
    files = list(NANO.iterdir())
    assert sum(f.stat().st_size for f in files) <= 30 * 2**20
    assert {f.suffix for f in files} <= {".json", ".safetensors", ".txt", ".jinja", ".md"}
    assert json.loads((NANO / "qground_config.json").read_text())["base_model_id"] is None  # full weights
    names = {f.name for f in files}
    assert POLICY_NAME in names and "calibration.json" not in names  # how it is run, its record inside
    config, policy = (json.loads((NANO / name).read_text()) for name in ("qground_config.json", POLICY_NAME))
    assert not set(config) & set(policy)  # the architecture and how it is run, apart
    assert policy["constrained_answers"]


def _iou(pred: np.ndarray | None, truth: np.ndarray) -> float:
    pred = np.zeros_like(truth) if pred is None else pred
    return float((pred & truth).sum() / (pred | truth).sum())


def test_nano_grounds_held_out_examples_as_trained_and_at_its_default(nano):
    """As trained (strictness 0) and at the default strictness (5), which validation chose to keep 9 in 10 clean
    photos clean, the masks of at least 4 of the 5 examples overlap their truth (IoU ≥ 0.4; all 5 at both on
    2026-12-06 with v5, overexposure the lowest at 0.43; v3 kept only blur at its default 6)."""
    by_class, _ = examples()

    def found(strictness: float) -> set[str]:
        settings = GenerationSettings(strictness=strictness)
        hits = set()
        for name, g in by_class.items():
            masks = nano.ground(Image.fromarray(g.image), settings=settings).masks
            assert all(m.shape == g.masks[name].shape for m in masks.values())
            if _iou(masks.get(name), g.masks[name]) >= 0.4:
                hits.add(name)
        return hits

    assert len(found(0.0)) >= 4
    assert len(found(nano.policy.default_strictness)) >= 4


def test_every_question_the_app_offers_gets_a_finished_sentence_naming_the_right_class(nano):
    """The chat tab's two buttons (QUESTIONS["describe"], QUESTIONS["ground"]) on each held-out example, as trained
    (strictness 0), and each preset of the Compare tab on pairs of a clean held-out photo and an example with a class
    that preset is about. Every answer is a finished sentence; both buttons name exactly the example's class (and
    ground it) in at least 4 of the 5 examples (measured on 2026-12-05 with v5: all but overexposure, also called low
    light; v3: 3); the presets pick the right image in at least 16 of the 20 ordered pairs (v5: 18, v3: 12)."""
    by_class, clean = examples()
    settings = GenerationSettings(strictness=0.0)
    named = []
    for name, g in by_class.items():
        image = Image.fromarray(g.image)
        assessed = nano.ground(image, QUESTIONS["describe"], settings).text
        grounded = nano.ground(image, QUESTIONS["ground"], settings)
        assert is_finished_sentence(assessed) and is_finished_sentence(grounded.text), (assessed, grounded.text)
        if named_classes(assessed) == {name} and named_classes(grounded.text) == {name} and name in grounded.masks:
            named.append(name)
    assert len(named) >= 4, named
    assert is_finished_sentence(nano.ground(Image.fromarray(clean[0].image), QUESTIONS["describe"]).text)
    right = total = 0
    for preset, question in COMPARE_PRESETS.items():
        for k, name in enumerate(sorted(PRESET_CLASSES[preset])):
            good, bad = Image.fromarray(clean[k].image), Image.fromarray(by_class[name].image)
            for truth, pair in ((0, [good, bad]), (1, [bad, good])):
                text = nano.chat(pair, [Turn(question)]).text
                assert is_finished_sentence(text), (preset, text)
                right += text == f"The {('first', 'second')[truth]} image."
                total += 1
    assert right >= 16, (right, total)


HELD_OUT_WORDINGS = (  # in none of the training phrasing families (training.data.questions)
    "hey, what do you make of this picture?",
    "Be honest: is this photo usable?",
    "What would a photographer criticize here?",
    "Rate this shot and tell me why.",
)


def test_questions_in_wordings_never_trained_on_get_finished_sentences(nano):
    """Every answer is a finished sentence, and most name exactly the true classes: all 24 on 2026-12-06 with v5 at
    its default strictness 5 (16 at strictness 3, v3: 4; over the held-out split's 300 questions v5 0.53, v3 0.45;
    the target is 0.70)."""
    by_class, clean = examples()
    named = total = 0
    for g in [*by_class.values(), clean[0]]:
        for question in HELD_OUT_WORDINGS:
            text = nano.ground(Image.fromarray(g.image), question).text
            assert is_finished_sentence(text), (question, text)
            named += named_classes(text) == set(g.masks)
            total += 1
    assert named >= 20, (named, total)


def test_a_follow_up_assessment_names_what_the_masks_drew(nano):
    """The chat tab's "Assess" right after "Ground distortions" (the issue: a blur mask, then "no obvious
    distortion"), at the default strictness and as trained (0), on the held-out examples and six clean photos: the
    assessment names exactly the classes the grounding answer drew masks for, whatever they are. That takes
    ``answers_follow_readout`` with answers naming all the readout's classes (v3 without the policy: 2 of these 11
    disagree; v5 with answers allowed any of them: the overexposure example's grounding drew overexposure alone and
    the assessment named low light too; both measured on 2026-12-05)."""
    by_class, clean = examples()
    for settings in (GenerationSettings(), GenerationSettings(strictness=0.0)):
        for g in [*by_class.values(), *clean[:6]]:
            image = Image.fromarray(g.image)
            grounded = nano.ground(image, settings=settings)
            turns = [Turn(QUESTIONS["ground"], grounded.raw_text), Turn(QUESTIONS["describe"])]
            assessed = nano.chat([image], turns, settings)
            assert named_classes(assessed.text) == set(grounded.masks), (settings, grounded.text, assessed.text)


def test_a_photo_darkened_to_15_percent_is_low_light_everywhere(nano):
    """A clean held-out photo at 15 % of its brightness: the model names low light and its mask covers most of it."""
    _, clean = examples()
    dark = Image.fromarray((clean[1].image.astype(np.float32) * 0.15).round().astype(np.uint8))
    result = nano.ground(dark)
    assert "low light" in result.masks and result.masks["low light"].mean() >= 0.7, result.text
    assert "low light" in named_classes(nano.ground(dark, QUESTIONS["describe"]).text)


def test_noise_on_a_12_mp_photo_is_read_at_the_photo_own_resolution(nano):
    """Four held-out clean photos enlarged to 4000 px (bicubic, so smooth at the pixel scale) with white noise of
    σ = 0.04 added at that size, as a 12 MP camera's: the detail channels read them at their own resolution
    (``detail_max_side`` and ``noise_max_side``) and the model names noise on at least 3; read on the photo shrunk to
    1280 px, the noise is averaged down to a third of its amplitude and the model names it on none. The same photos
    without the noise get no noise."""
    _, clean = examples()
    capped = QGroundEngine(
        nano.model,
        QGroundProcessor(nano.tokenizer, dataclasses.replace(nano.config, detail_max_side=1280, noise_max_side=0)),
        policy=nano.policy,
    )
    rng = np.random.default_rng(0)
    found = {"native": 0, "capped": 0}
    for g in clean[:4]:
        h, w = g.image.shape[:2]
        size = (round(w * 4000 / max(h, w)), round(h * 4000 / max(h, w)))
        big = np.asarray(Image.fromarray(g.image).resize(size, Image.Resampling.BICUBIC), np.float32) / 255
        noisy = Image.fromarray((np.clip(big + rng.normal(0, 0.04, big.shape), 0, 1) * 255 + 0.5).astype(np.uint8))
        found["native"] += "noise" in nano.ground(noisy).masks
        found["capped"] += "noise" in capped.ground(noisy).masks
        assert "noise" not in nano.ground(Image.fromarray((big * 255 + 0.5).astype(np.uint8))).masks
    assert found["native"] >= 3 and found["capped"] == 0, found


def test_every_setting_of_the_shipped_policy_is_the_best_of_its_validation_sweep():
    """``training.calibrate`` chose each setting on the validation split (photo sources and distortion families never
    trained on) by ``choose`` (the best ``score``, mIoU less the clean-rate shortfall; within noise of it, the
    cleanest). The gates since removed (``RETIRED_OFF``), swept by the calibration that made it, were left off."""
    policy = json.loads((NANO / POLICY_NAME).read_text())
    record = policy["calibration"]
    assert record["criterion"].startswith("mIoU - max(0, 0.9 - clean rate)")
    fields = [k for k in record if k not in ("data", "criterion")]
    assert {"default_strictness", "overexposure_needs_clipping", "readout_mask_weight", "flip_average"} <= set(fields)
    for field in fields:
        if field in RETIRED_OFF:
            assert record[field]["chosen"] == RETIRED_OFF[field] and field not in policy, field
            continue
        chosen, sweep = record[field]["chosen"], record[field]["sweep"]
        key = str(chosen).lower() if isinstance(chosen, bool) else f"{chosen:g}"
        assert policy[field] == chosen and key in sweep, field
        values = {(k == "true") if isinstance(chosen, bool) else float(k): v for k, v in sweep.items()}
        assert choose(values) == chosen, field


def test_strictness_from_the_command_line_and_the_app(nano, tmp_path):
    """``ground --strictness`` reaches the model and is recorded in result.json; without it the model's default
    applies; the app shows the strictness slider at that default; at the maximum strictness no clean held-out photo
    gets more masks than as trained."""
    from qground.__main__ import main
    from qground.app import build_demo

    by_class, clean = examples()
    Image.fromarray(by_class["noise"].image).save(tmp_path / "noisy.png")
    for strictness in ("0", "8"):
        out = tmp_path / f"out{strictness}"
        assert main(["ground", str(tmp_path / "noisy.png"), "--out", str(out), "--strictness", strictness]) == 0
        assert json.loads((out / "noisy" / "result.json").read_text())["strictness"] == float(strictness)
    default = nano.policy.default_strictness
    assert main(["ground", str(tmp_path / "noisy.png"), "--out", str(tmp_path / "default")]) == 0
    assert json.loads((tmp_path / "default" / "noisy" / "result.json").read_text())["strictness"] == default
    slider = next(b for b in build_demo(nano).blocks.values() if getattr(b, "elem_id", None) == "strictness")
    assert slider.visible and slider.maximum == 8 and slider.value == default

    def flagged(strictness: float) -> int:
        settings = GenerationSettings(strictness=strictness)
        return sum(bool(nano.ground(Image.fromarray(g.image), settings=settings).masks) for g in clean)

    assert flagged(8.0) <= flagged(0.0)
