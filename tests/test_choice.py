"""The choice head end to end on a qground-tiny config with ``choice_head``: config and tokenizer binding, the
training loss and its checks, the readers' conversion of one-image answers, decoding that names the picked image, the
checkpoint round trip, and the trainable group."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from qground.__main__ import main as cli_main
from qground.builder import build_model, build_tokenizer, config_tiny
from qground.checkpoint import apply_lora, load_model, save_checkpoint
from qground.config import ConfigError, QGroundConfig, TokenIds
from qground.inference import GenerationSettings, QGroundEngine
from qground.naming import parse_choice, question_options
from qground.processor import QGroundProcessor
from qground.prompts import Turn
from qground.tokens import CHOICE_ANSWER, CHOICE_TOKEN
from training.config import ConfigError as TrainConfigError
from training.config import DataSource
from training.data.dataset import as_choice, read_source
from training.data.sample import Sample
from training.stages import set_trainable
from training.train import BATCH_KEYS

QUESTIONS = {"Which image is noisier?": np.argmax, "Which image is smoother?": np.argmin}
ORDINALS = ("first", "second", "third")


def noisy(sigma: float, rng: np.random.Generator) -> Image.Image:
    return Image.fromarray(np.clip(128 + rng.normal(0, sigma, (32, 32, 3)), 0, 255).astype(np.uint8))


def group(seed: int) -> tuple[list[Image.Image], str, int]:
    """2–3 photos of different noise levels, a question and the image it asks for."""
    rng = np.random.default_rng(seed)
    levels = rng.permutation(np.linspace(0, 100, 6))[: int(rng.integers(2, 4))]
    question = list(QUESTIONS)[seed % 2]
    return [noisy(v, rng) for v in levels], question, int(QUESTIONS[question](levels))


@pytest.fixture(scope="module")
def chooser():
    tokenizer, config = build_tokenizer(dataclasses.replace(config_tiny(), choice_head=True))
    model = build_model(config)
    return model, tokenizer, QGroundProcessor(tokenizer, config)


@pytest.fixture(scope="module")
def trained(chooser):
    """The chooser trained on 16 comparison groups until it answers them (all parts but the frozen tower)."""
    model, _, processor = chooser
    groups = [group(seed) for seed in range(16)]
    batch = processor.collate([processor(im, [Turn(q, CHOICE_ANSWER)], choices=[c]) for im, q, c in groups])
    params = [p for n, p in model.named_parameters() if not n.startswith("llava.model.vision_tower")]
    opt = torch.optim.Adam(params, lr=3e-3)
    model.train()
    losses = []
    for _ in range(60):
        out = model(**{k: batch[k] for k in BATCH_KEYS})
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["choice"].detach()))
    model.eval()
    return model, groups, losses


def test_config_and_tokenizer_bind_the_choice_token(chooser, tmp_path):
    model, tokenizer, _ = chooser
    ids = model.config.token_ids
    assert tokenizer.convert_tokens_to_ids(CHOICE_TOKEN) == ids.choice
    assert ids.choice not in (ids.image, *ids.seg, ids.pad, ids.bos, ids.eos)
    model.config.save(tmp_path)
    assert QGroundConfig.load(tmp_path) == model.config
    with pytest.raises(ConfigError, match="choice_head needs a \\[CHOICE\\] token id"):
        dataclasses.replace(model.config, token_ids=dataclasses.replace(ids, choice=-1))
    with pytest.raises(ConfigError, match="no choice_head"):
        dataclasses.replace(model.config, choice_head=False)
    plain = build_tokenizer(config_tiny())[1]
    assert plain.token_ids.choice == -1 and isinstance(plain.token_ids, TokenIds)


def test_choice_loss_and_its_checks(chooser):
    model, _, processor = chooser
    images, question, target = group(0)
    sample = processor(images, [Turn(question, CHOICE_ANSWER)], choices=[target])
    batch = processor.collate([sample, processor(images[:1], [Turn("Describe it.", "Fine.")])])
    out = model(**{k: batch[k] for k in BATCH_KEYS})
    assert float(out["choice"].detach()) > 0
    w = model.config.loss
    expected = w.ce * out["ce"] + w.mask * (w.bce * out["bce"] + w.dice * out["dice"]) + w.choice * out["choice"]
    assert torch.allclose(out["loss"], expected)
    inputs = {k: batch[k] for k in BATCH_KEYS if k != "choices"}
    with pytest.raises(ValueError, match="1 \\[CHOICE\\] token\\(s\\) but 0 choice target"):
        model(**inputs, choices=[torch.tensor([], dtype=torch.long)] * 2)
    with pytest.raises(ValueError, match="choice target 7 but the prompt holds"):
        model(**inputs, choices=[torch.tensor([7]), torch.tensor([], dtype=torch.long)])


def test_model_without_a_choice_head_refuses_targets(tiny, overfit_batch):
    model, _, _ = tiny
    batch = overfit_batch[1]
    inputs = {k: batch[k] for k in BATCH_KEYS if k != "choices"}
    with pytest.raises(ValueError, match="no choice head"):
        model(**inputs, choices=[torch.tensor([0])] * len(batch["masks"]))


def test_trained_choice_is_decoded_as_the_picked_image(chooser, trained):
    model, _, processor = chooser
    model_t, groups, losses = trained
    assert losses[-1] < 0.1 * losses[0]
    engine = QGroundEngine(model_t, processor)
    right = 0
    for images, question, target in groups:
        result = engine.chat(images, [Turn(question)], GenerationSettings(max_new_tokens=8))
        assert len(result.choices) == 1 and len(result.choices[0]) == len(images)
        assert abs(sum(result.choices[0]) - 1) < 1e-5
        picked = int(np.argmax(result.choices[0]))
        assert result.text == f"The {ORDINALS[picked]} image."  # the text names what the head picked
        assert CHOICE_TOKEN in result.raw_text
        right += picked == target
    assert right >= 15


def test_choice_token_is_never_generated_without_images(chooser, trained):
    model_t, _, _ = trained
    _, _, processor = chooser
    engine = QGroundEngine(model_t, processor)
    result = engine.chat([], [Turn("Which image is noisier?")], GenerationSettings(max_new_tokens=8))
    assert model_t.config.token_ids.choice not in result.token_ids and result.choices == []


def test_checkpoint_round_trip_keeps_the_choice_head(trained, chooser, tmp_path, capsys):
    model_t, groups, _ = trained
    _, tokenizer, processor = chooser
    save_checkpoint(model_t, tokenizer, tmp_path / "ckpt")
    loaded, tok = load_model(tmp_path / "ckpt", device="cpu", dtype=torch.float32)
    for a, b in zip(model_t.choice_head.parameters(), loaded.choice_head.parameters(), strict=True):
        assert torch.equal(a, b)
    images, question, _ = groups[3]
    settings = GenerationSettings(max_new_tokens=8)
    before = QGroundEngine(model_t, processor).chat(images, [Turn(question)], settings)
    after = QGroundEngine(loaded, QGroundProcessor(tok, loaded.config)).chat(images, [Turn(question)], settings)
    assert after.text == before.text and np.allclose(after.choices, before.choices, atol=1e-5)

    paths = []  # the command line prints the answer and the head's probabilities
    for k, image in enumerate(images):
        image.save(tmp_path / f"{k}.png")
        paths.append(str(tmp_path / f"{k}.png"))
    assert cli_main(["compare", *paths, "--question", question, "--model", str(tmp_path / "ckpt")]) == 0
    *_, answer, probs = capsys.readouterr().out.splitlines()
    assert answer == before.text
    assert probs == "choice probability: " + ", ".join(
        f"{ORDINALS[k]} image {p:.2f}" for k, p in enumerate(before.choices[0])
    )


def test_choice_head_is_a_trainable_group_and_lora_trains_its_token_row():
    tokenizer, config = build_tokenizer(dataclasses.replace(config_tiny(), choice_head=True))
    model = build_model(config)
    names = set_trainable(model, ["choice_head"], config.lora)
    assert names and all(n.startswith("choice_head.") for n in names)
    apply_lora(model, config.lora)
    ids = config.token_ids
    for name in ("embed_tokens.token_adapter", "lm_head.token_adapter"):  # image, seg and choice rows train
        adapter = next(m for n, m in model.named_modules() if n.endswith(name))
        assert adapter.token_indices["default"] == [ids.image, *ids.seg, ids.choice]


def test_readers_turn_one_image_answers_into_choices(tmp_path):
    def sample(question, answer, n=3):
        return Sample(id="x", images=[tmp_path / f"{k}.png" for k in range(n)], turns=[Turn(question, answer)])

    free = as_choice(sample("Which image is noisier?", "The third image."))
    assert free.turns[0].answer == CHOICE_ANSWER and free.choices == [2]
    mcq = "Which image is sharper?\nA. The second image\nB. The first image\nAnswer with the option's letter."
    assert as_choice(sample(mcq, "B", 2)).choices == [0]  # the letter goes through the options
    long = sample("Which is better?", "The second image is sharper, but the first one has better colors.")
    assert as_choice(long) == long  # reasons are kept as text
    single = sample("Which image is noisier?", "The first image.", 1)
    assert as_choice(single) == single

    records = [
        {
            "id": "c0",
            "image": [f"{k}.png" for k in range(2)],
            "conversations": [
                {"from": "human", "value": "The first image: <image>\nThe second image: <image>\nWhich is darker?"},
                {"from": "gpt", "value": "The second image."},
            ],
        }
    ]
    for k in range(2):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{k}.png")
    (tmp_path / "c.json").write_text(json.dumps(records))
    src = DataSource("c", "coinstruct", str(tmp_path / "c.json"), str(tmp_path), choice_answers=True)
    (read,) = read_source(src, 0.0).samples
    assert read.choices == [1] and read.turns[0].answer == CHOICE_ANSWER
    with pytest.raises(TrainConfigError, match="choice_answers needs a conversation format"):
        DataSource("q", "qground100k", "q.json", ".", choice_answers=True).validate()


def test_multiple_choice_answers_lead_with_the_picked_option_letter(chooser, trained):
    """When the question lists options, the answer starts with the letter of the option naming the image the choice
    head picked ("B. The first image."), which the eval reads like the place word; free-form answers are unchanged."""
    model_t, groups, _ = trained
    _, tokenizer, processor = chooser
    engine = QGroundEngine(model_t, processor)
    choice = model_t.config.token_ids.choice
    tokens = tokenizer("The", add_special_tokens=False)["input_ids"] + [choice]
    tokens += tokenizer("image.", add_special_tokens=False)["input_ids"]
    assert engine.display_text(tokens, [[0.2, 0.7, 0.1]], {0: "C", 1: "A", 2: "B"}) == "A. The second image."
    assert engine.display_text(tokens, [[0.2, 0.7, 0.1]], {0: "C"}) == "The second image."  # option not listed
    assert engine.display_text(tokens, [[0.2, 0.7, 0.1]]) == "The second image."
    for images, question, _ in groups[:4]:
        order = np.random.default_rng(len(images)).permutation(len(images))
        options = "\n".join(f"{'ABC'[k]}. The {ORDINALS[i]} image" for k, i in enumerate(order))
        mcq = f"{question}\n{options}\nAnswer with the option's letter from the given choices directly."
        result = engine.chat(images, [Turn(mcq)], GenerationSettings(max_new_tokens=8))
        picked = int(np.argmax(result.choices[0]))
        letter = "ABC"[list(order).index(picked)]
        assert result.text == f"{letter}. The {ORDINALS[picked]} image."
        assert parse_choice(result.text, len(images), question_options(mcq, len(images))) == picked


def test_readout_keys_score_each_image_on_its_own_evidence(tmp_path):
    """With ``choice_keys`` "readout" the keys are the images' whole-image readout scores: (n, 3·classes) rows of
    ``features.evidence``, the same for an image whatever the other images of the prompt; the head trains to answer
    the comparisons, survives a checkpoint round trip, and the config refuses the keys without a readout."""
    base = dataclasses.replace(config_tiny(), readout=True, global_token=True, choice_head=True, choice_keys="readout")
    tokenizer, config = build_tokenizer(base)
    torch.manual_seed(0)
    model = build_model(config)
    processor = QGroundProcessor(tokenizer, config)
    assert model.choice_head.key.in_features == 15
    groups = [group(seed) for seed in range(16)]
    batch = processor.collate([processor(im, [Turn(q, CHOICE_ANSWER)], choices=[c]) for im, q, c in groups])
    features = model.encode_images(batch["pixel_values"])
    assert features.evidence.shape == (len(batch["pixel_values"]), 15)
    n0 = len(groups[0][0])
    keys = model.image_keys(batch["input_ids"][1], torch.zeros(batch["input_ids"].shape[1], 64), features, n0)
    alone = model.encode_images(processor([groups[1][0][0]], [Turn("?")])["pixel_values"]).evidence
    assert keys.shape == (len(groups[1][0]), 15) and torch.allclose(keys[0], alone[0], atol=1e-5)

    params = [p for n, p in model.named_parameters() if not n.startswith(("llava.model.vision_tower", "readout."))]
    opt = torch.optim.Adam(params, lr=3e-3)
    model.train()
    for _ in range(60):
        out = model(**{k: batch[k] for k in BATCH_KEYS})
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    model.eval()
    engine = QGroundEngine(model, processor)
    answers = [engine.chat(im, [Turn(q)], GenerationSettings(max_new_tokens=8)) for im, q, _ in groups]
    assert sum(int(np.argmax(a.choices[0])) == c for a, (_, _, c) in zip(answers, groups)) >= 14

    save_checkpoint(model, tokenizer, tmp_path / "ckpt")
    loaded, tok = load_model(tmp_path / "ckpt", device="cpu", dtype=torch.float32)
    assert loaded.config.choice_keys == "readout"
    images, question, _ = groups[5]
    again = QGroundEngine(loaded, QGroundProcessor(tok, loaded.config)).chat(
        images, [Turn(question)], GenerationSettings(max_new_tokens=8)
    )
    assert np.allclose(again.choices, answers[5].choices, atol=1e-5)
    with pytest.raises(ConfigError, match="choice_keys 'readout' needs choice_head: true and readout: true"):
        dataclasses.replace(config, readout=False)
    with pytest.raises(ConfigError, match="choice_keys must be one of"):
        dataclasses.replace(config, choice_keys="pixels")
