"""The shipped qground-nano: loads with no network, stays small, and really grounds a held-out photo."""

import functools
import json

import numpy as np
import pytest
from PIL import Image

from qground.builder import ASSETS
from qground.checkpoint import load_model, load_policy
from qground.inference import GenerationSettings, QGroundEngine
from qground.policy import LOG_CONTRAST, MOTION_SIGNATURE, POLICY_NAME, InferencePolicy
from qground.processor import QGroundProcessor
from qground.prompts import Turn
from training.data import synth

NANO = ASSETS / "qground-nano"


def held_out_example() -> synth.Generated:
    """The first held-out image (eval photos, seed 0 — the split `training.nano` evaluates on) with exactly one
    distortion at severity 3 covering at least a quarter of the image; chosen by that rule, not by model output."""
    for index in range(200):
        g = synth.generate(index, "eval", seed=0)
        if len(g.masks) == 1 and next(iter(g.severity.values())) == 3 and next(iter(g.masks.values())).mean() >= 0.25:
            return g
    raise AssertionError("no qualifying held-out example")


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


def test_nano_grounds_a_held_out_photo(nano):
    g = held_out_example()
    assert g.photo in {p.name for p in synth.photos("eval")}
    ((name, truth),) = g.masks.items()
    result = nano.ground(Image.fromarray(g.image), settings=GenerationSettings(strictness=0.0))
    assert name in result.masks, (name, result.text)
    pred = result.masks[name]
    assert pred.shape == truth.shape
    iou = float((pred & truth).sum() / (pred | truth).sum())
    assert iou >= 0.5, (name, iou, result.text)


def test_nano_describes_the_distortion(nano):
    g = held_out_example()
    ((name, _),) = g.masks.items()
    question = [Turn("Describe the quality of this image.")]
    answer = nano.chat([Image.fromarray(g.image)], question, GenerationSettings(strictness=0.0)).text
    assert name in answer, answer


def test_nano_compares_held_out_photos(nano):
    """Six held-out pairs, chosen by rule (not by model output): the first six images with one distortion at severity
    3 covering at least a quarter of the image, each beside one of the first six clean images, distorted one first in
    every other pair; the question asks for that distortion. The answer names the distorted image, and the choice
    head's probabilities rank it first."""
    distorted, clean = [], []
    for index in range(400):
        g = synth.generate(index, "eval", seed=0)
        one = len(g.masks) == 1 and next(iter(g.severity.values())) == 3
        if one and next(iter(g.masks.values())).mean() >= 0.25:
            distorted.append(g)
        elif not g.masks:
            clean.append(g)
        if len(distorted) >= 6 and len(clean) >= 6:
            break
    right = 0
    for k, (bad, good) in enumerate(zip(distorted[:6], clean[:6])):
        truth = k % 2
        pair = [good, bad] if truth else [bad, good]
        result = nano.chat([Image.fromarray(g.image) for g in pair], [Turn(synth.QUESTIONS[next(iter(bad.masks))])])
        (probs,) = result.choices
        assert len(probs) == 2 and abs(sum(probs) - 1) < 1e-5, result.raw_text
        right += result.text == f"The {('first', 'second')[truth]} image." and probs[truth] > probs[1 - truth]
    assert right >= 5, right


def test_strictness_keeps_clean_held_out_photos_clean(nano):
    """The first 12 clean held-out images: as trained (strictness 0) the nano draws masks on half of them or more; at
    the maximum strictness 8 on at most one (coffee's cast shadow, which both views read as low light), and it still
    finds the held-out example's severe distortion."""
    clean = [g for g in (synth.generate(i, "eval", seed=0) for i in range(60)) if not g.masks][:12]
    assert len(clean) == 12

    def flagged(strictness: float) -> int:
        settings = GenerationSettings(strictness=strictness)
        return sum(bool(nano.ground(Image.fromarray(g.image), settings=settings).masks) for g in clean)

    assert flagged(0.0) >= 6 and flagged(8.0) <= 1
    g = held_out_example()
    ((name, truth),) = g.masks.items()
    pred = nano.ground(Image.fromarray(g.image), settings=GenerationSettings(strictness=8.0)).masks[name]
    assert float((pred & truth).sum() / (pred | truth).sum()) >= 0.5


def test_strictness_from_the_command_line_and_the_app(nano, tmp_path):
    """``ground --strictness`` and the app's /ground reach the model: a clean held-out image that the nano flags as
    trained gets no mask at strictness 5; the app shows the strictness slider for this readout model."""
    from gradio_client import Client, handle_file

    from conftest import served_app
    from qground.__main__ import main
    from qground.app import build_demo

    flagged = next(
        g
        for g in (synth.generate(i, "eval", seed=0) for i in range(60))
        if not g.masks and nano.ground(Image.fromarray(g.image), settings=GenerationSettings(strictness=0.0)).masks
    )
    Image.fromarray(flagged.image).save(tmp_path / "clean.png")
    for strictness, expect_masks in (("0", True), ("5", False)):
        out = tmp_path / f"out{strictness}"
        assert main(["ground", str(tmp_path / "clean.png"), "--out", str(out), "--strictness", strictness]) == 0
        masks = [p for p in (out / "clean").iterdir() if p.name not in ("overlay.png", "result.json")]
        assert bool(masks) == expect_masks, (strictness, masks)
        assert json.loads((out / "clean" / "result.json").read_text())["strictness"] == float(strictness)
    default = nano.policy.default_strictness
    assert main(["ground", str(tmp_path / "clean.png"), "--out", str(tmp_path / "default")]) == 0
    assert json.loads((tmp_path / "default" / "clean" / "result.json").read_text())["strictness"] == default
    slider = next(b for b in build_demo(nano).blocks.values() if getattr(b, "elem_id", None) == "strictness")
    assert slider.visible and slider.maximum == 8 and slider.value == default
    with served_app(nano, tmp_path / "gradio") as url:
        client = Client(url, verbose=False)
        for strictness, expect_masks in ((0.0, True), (5.0, False)):
            annotated, *_ = client.predict(handle_file(tmp_path / "clean.png"), "", strictness, api_name="/ground")
            assert bool(annotated["annotations"]) == expect_masks, strictness
        left_out = client.predict(handle_file(tmp_path / "clean.png"), "", api_name="/ground")
        at_default = client.predict(handle_file(tmp_path / "clean.png"), "", default, api_name="/ground")
        assert left_out[1:3] == at_default[1:3], "left out, the strictness is the model's default"


def test_the_shipped_default_strictness_was_chosen_on_validation_photos():
    """``training.calibrate`` chose it and the readout mask weight on the val split (photos neither trained on nor held
    out) by mIoU; the jitter and low-light gates, read off the training photos, are recorded with validation mIoU with
    and without them; so are the mirrored view and the mask refinement radius."""
    policy = json.loads((NANO / POLICY_NAME).read_text())
    record = policy["calibration"]  # recorded before the policy had a file of its own: the strictness sweep on top
    evidence = InferencePolicy.load(NANO).evidence_maps
    assert record["chosen"] == policy["default_strictness"] and record["criterion"] == "mIoU"
    best = max(record["sweep"].values(), key=lambda summary: summary["mIoU"])
    assert best["mIoU"] == record["sweep"][f"{policy['default_strictness']:g}"]["mIoU"]
    assert len(record["sweep"]) == 7
    blends = record["readout_mask_weight"]
    assert blends["chosen"] == policy["readout_mask_weight"] and len(blends["sweep"]) == 5
    best = max(blends["sweep"].values(), key=lambda summary: summary["mIoU"])
    assert best["mIoU"] == blends["sweep"][f"{policy['readout_mask_weight']:g}"]["mIoU"]
    gates = record["jitter_min_motion_signature"]
    assert MOTION_SIGNATURE in evidence and gates["chosen"] == policy["jitter_min_motion_signature"]
    best = max(gates["sweep"].values(), key=lambda summary: summary["mIoU"])
    assert best["mIoU"] == gates["sweep"][f"{policy['jitter_min_motion_signature']:g}"]["mIoU"]
    motion = record["jitter_signature_weight"]
    assert motion["chosen"] == policy["jitter_signature_weight"] and len(motion["sweep"]) == 5
    assert (motion["center"], motion["scale"]) == (policy["jitter_signature_center"], policy["jitter_signature_scale"])
    best = max(motion["sweep"].values(), key=lambda summary: summary["mIoU"])
    assert best["mIoU"] == motion["sweep"][f"{policy['jitter_signature_weight']:g}"]["mIoU"]
    assert motion["sweep"]["0"] == gates["sweep"][f"{policy['jitter_min_motion_signature']:g}"]  # the shipped gate
    dark = record["low_light_min_log_contrast"]  # read off the training photos, recorded with and without
    assert LOG_CONTRAST in evidence and dark["chosen"] == policy["low_light_min_log_contrast"] > 0
    assert set(dark["sweep"]) == {"0", f"{dark['chosen']:g}"} and dark["reference"]["quantile"] == 0.1
    assert dark["sweep"]["0"] == motion["sweep"][f"{policy['jitter_signature_weight']:g}"]  # as chosen before
    views = record["flip_average"]
    assert views["chosen"] == policy["flip_average"] and set(views["sweep"]) == {"false", "true"}
    best = max(views["sweep"].values(), key=lambda summary: summary["mIoU"])
    assert best["mIoU"] == views["sweep"][str(policy["flip_average"]).lower()]["mIoU"]
    assert views["sweep"]["false"] == dark["sweep"][f"{dark['chosen']:g}"]  # as chosen before
    refined = record["mask_refine_radius"]
    assert refined["chosen"] == policy["mask_refine_radius"] and len(refined["sweep"]) == 5
    assert refined["eps"] == policy["mask_refine_eps"]
    best = max(refined["sweep"].values(), key=lambda summary: summary["mIoU"])
    assert best["mIoU"] == refined["sweep"][f"{policy['mask_refine_radius']:g}"]["mIoU"]
    assert refined["sweep"]["0"] == views["sweep"][str(policy["flip_average"]).lower()]  # as chosen before
    assert {p.name for p in synth.photos("val")}.isdisjoint(p.name for p in synth.PHOTOS if p.split != "val")
    from training.push import model_card

    card = model_card(NANO, "org/qground-nano")
    assert f"| default detection strictness | {policy['default_strictness']:g} (0 = as trained; chosen on" in card
    assert f"| readout mask weight | {policy['readout_mask_weight']:g} (masks: decoder and readout coverage" in card
    assert "| comparisons | a choice head picks the answer's image" in card
    assert policy["overexposure_needs_clipping"] and "| overexposure gate | at strictness above 0" in card
    gate = policy["jitter_min_motion_signature"]
    assert f"| jitter gate | at strictness above 0, jitter needs a motion-blur signature of at least {gate:g}" in card
    assert f"at weight {policy['jitter_signature_weight']:g} (fitted on the training photos" in card
    gate = policy["low_light_min_log_contrast"]
    assert (
        f"| low-light gate | at strictness above 0, low light needs a median log contrast of at least {gate:g}" in card
    )
    assert ("| test-time views | each image is also read mirrored" in card) == policy["flip_average"]
    assert f"| mask edges | guided filter on the photo (radius {policy['mask_refine_radius']:g} model-input" in card


@functools.cache
def only_and_clean(name: str) -> tuple[list[synth.Generated], list[synth.Generated]]:
    """Held-out images chosen by rule: every one of the first 300 whose only distortion is class ``name``, and the
    first 40 clean ones."""
    distorted, clean = [], []
    for index in range(300):
        g = synth.generate(index, "eval", seed=0)
        if set(g.masks) == {name}:
            distorted.append(g)
        elif not g.masks and len(clean) < 40:
            clean.append(g)
    assert len(distorted) >= 10 and len(clean) == 40
    return distorted, clean


def test_the_motion_signature_draws_jitter_masks_closer_to_the_truth(nano):
    """On the held-out jitter-only images (``only_and_clean("jitter")``), the shipped jitter masks, which blend in
    P(jitter | motion-blur signature), overlap the truth more (IoU accumulated over the images) than the same
    model's masks without the signature: the native-resolution signature sees shake the 128-px input has lost."""
    jittered, _ = only_and_clean("jitter")
    shipped = nano.policy
    assert shipped.jitter_signature_weight > 0

    def jitter_iou(w: float) -> float:
        nano.set_policy(shipped.replace(jitter_signature_weight=w))
        settings = GenerationSettings(strictness=nano.policy.default_strictness)
        inter = union = 0
        for g in jittered:
            truth = g.masks["jitter"]
            masks = nano.ground(Image.fromarray(g.image), settings=settings).masks
            pred = masks.get("jitter", np.zeros_like(truth))
            inter, union = inter + (pred & truth).sum(), union + (pred | truth).sum()
        return float(inter / union)

    try:
        blended, plain = jitter_iou(shipped.jitter_signature_weight), jitter_iou(0.0)
    finally:
        nano.set_policy(shipped)
    assert blended >= plain + 0.05, (blended, plain)


def test_mask_refinement_lays_held_out_masks_closer_to_the_truth(nano):
    """On the first 40 held-out images with a distortion (chosen by that rule), the shipped masks, guided-filtered on
    the photo (``mask_refine_radius``), overlap the truth more (IoU accumulated over images and classes) than the same
    model's masks only upsampled from the 128-px model input."""
    shipped = nano.policy
    radius = shipped.mask_refine_radius
    assert radius > 0
    examples = [g for g in (synth.generate(i, "eval", seed=0) for i in range(80)) if g.masks][:40]
    settings = GenerationSettings(strictness=shipped.default_strictness)

    def accumulated_iou(r: float) -> float:
        nano.set_policy(shipped.replace(mask_refine_radius=r))
        inter = union = 0
        for g in examples:
            masks = nano.ground(Image.fromarray(g.image), settings=settings).masks
            for name in set(masks) | set(g.masks):
                pred, truth = masks.get(name), g.masks.get(name)
                pred = np.zeros_like(truth) if pred is None else pred
                truth = np.zeros_like(pred) if truth is None else truth
                inter, union = inter + (pred & truth).sum(), union + (pred | truth).sum()
        return float(inter / union)

    try:
        refined, plain = accumulated_iou(radius), accumulated_iou(0.0)
    finally:
        nano.set_policy(shipped)
    assert refined >= plain + 0.01, (refined, plain)


def naming(nano, images: list[synth.Generated], name: str, **changes) -> int:
    """How many of ``images`` the shipped nano draws a ``name`` mask on at its default strictness, with ``changes``
    to its inference policy (undone afterwards)."""
    before = nano.policy
    nano.set_policy(before.replace(**changes))
    try:
        settings = GenerationSettings(strictness=nano.policy.default_strictness)
        return sum(name in nano.ground(Image.fromarray(g.image), settings=settings).masks for g in images)
    finally:
        nano.set_policy(before)


def test_the_jitter_gate_keeps_motion_blur_and_drops_false_alarms(nano):
    """On the held-out jitter-only and clean images (``only_and_clean("jitter")``), at the default strictness the
    shipped jitter gate (a motion-blur signature where the readout covers jitter) still finds nearly all the jitter,
    and draws far fewer jitter masks on the clean photos than the same model without the gate."""
    jittered, clean = only_and_clean("jitter")
    gate = nano.policy.jitter_min_motion_signature
    assert gate > 0
    found, found_ungated = (naming(nano, jittered, "jitter", jitter_min_motion_signature=m) for m in (gate, 0.0))
    alarms, alarms_ungated = (naming(nano, clean, "jitter", jitter_min_motion_signature=m) for m in (gate, 0.0))
    assert found >= len(jittered) - 2 and found >= found_ungated - 1, (found, found_ungated, len(jittered))
    assert alarms_ungated >= 4 and alarms <= alarms_ungated // 3, (alarms, alarms_ungated)


def test_the_low_light_gate_keeps_underexposure_and_drops_false_alarms(nano):
    """On the held-out low-light-only and clean images (``only_and_clean("low light")``), at the default strictness the
    shipped low-light gate (steep log contrast where the readout covers low light) still finds nearly all the low
    light, and draws fewer low-light masks on the clean photos than the same model without the gate."""
    darkened, clean = only_and_clean("low light")
    gate = nano.policy.low_light_min_log_contrast
    assert gate > 0
    found, found_ungated = (naming(nano, darkened, "low light", low_light_min_log_contrast=m) for m in (gate, 0.0))
    alarms, alarms_ungated = (naming(nano, clean, "low light", low_light_min_log_contrast=m) for m in (gate, 0.0))
    assert found >= found_ungated - 2 and found >= len(darkened) - 5, (found, found_ungated, len(darkened))
    assert alarms_ungated >= 8 and alarms <= alarms_ungated - 4, (alarms, alarms_ungated)  # measured: 23/24, 8/13
