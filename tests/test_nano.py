"""The shipped qground-nano: loads with no network, stays small, and really grounds a held-out photo."""

import pytest
from PIL import Image

from qground.builder import ASSETS
from qground.checkpoint import load_model
from qground.inference import QGroundEngine
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
    return QGroundEngine(model, QGroundProcessor(tokenizer, model.config), name="qground-nano")


def test_shipped_files_are_small_and_safe():
    files = list(NANO.iterdir())
    assert sum(f.stat().st_size for f in files) <= 30 * 2**20
    assert {f.suffix for f in files} <= {".json", ".safetensors", ".txt", ".jinja"}


def test_nano_grounds_a_held_out_photo(nano):
    g = held_out_example()
    assert g.photo in {p.name for p in synth.photos("eval")}
    ((name, truth),) = g.masks.items()
    result = nano.ground(Image.fromarray(g.image))
    assert name in result.masks, (name, result.text)
    pred = result.masks[name]
    assert pred.shape == truth.shape
    iou = float((pred & truth).sum() / (pred | truth).sum())
    assert iou >= 0.5, (name, iou, result.text)


def test_nano_describes_the_distortion(nano):
    g = held_out_example()
    ((name, _),) = g.masks.items()
    answer = nano.chat([Image.fromarray(g.image)], [Turn("Describe the quality of this image.")]).text
    assert name in answer, answer
