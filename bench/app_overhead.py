"""What the app adds around the model, and how fast masks are drawn.

1. ``/ground`` through the app vs the bare engine: the app runs on loopback and ``gradio_client`` sends one photo and
   receives everything (streamed answer, overlay PNG, mask PNGs, masks zip, table); the bare call is
   ``engine.ground(path)`` on the same file; also with the client keeping file links instead of downloading, and
   ``/describe`` (text only) for the fixed cost of a Gradio round trip. Medians of 9 interleaved rounds after a warm-up
   round; target ratio ≤ 1.15.
   Engine: the shipped ``qground-nano`` when it loads, else a tiny model overfit to one photo (as in tests/conftest.py,
   about 30 s of training) so that it answers and segments like a trained model.
2. Drawing three class masks over a 12 MP (4000×3000) photo: ``qground.visualize.overlay`` vs a matplotlib figure of
   the same overlay (``imshow`` of the photo + one RGBA ``imshow`` per mask, rendered with ``savefig`` to a raw RGBA
   buffer at the photo's size). Medians of 5; targets ≤ 150 ms and ≥ 3× faster.

Run: ``python -m bench.app_overhead``
"""

from __future__ import annotations

import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

PHOTO_SIZE = (640, 480)  # (W, H) of the /ground photo
ROUNDS = 9


def median_seconds(fn, rounds: int) -> float:
    """Median wall time of ``fn()`` over ``rounds`` runs, after one warm-up run."""
    fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved_medians(fns: list, rounds: int) -> list[float]:
    """Median wall time of each function, run in turn ``rounds`` times after one warm-up round (interleaving spreads
    the load of other processes over all of them)."""
    times: list[list[float]] = [[] for _ in fns]
    for round_ in range(rounds + 1):
        for fn, spent in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            if round_:
                spent.append(time.perf_counter() - t0)
    return [statistics.median(spent) for spent in times]


def photo(width: int, height: int, seed: int) -> Image.Image:
    """A smooth random color photo."""
    small = np.random.default_rng(seed).integers(0, 255, size=(6, 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)


def trained_engine():
    """``(engine, photo)``: qground-nano and a test photo, or a tiny model overfit to one photo with a 'noise' box."""
    import torch

    from qground.builder import build_from_registry
    from qground.checkpoint import CheckpointError
    from qground.inference import GROUNDING_QUESTION, QGroundEngine
    from qground.processor import QGroundProcessor
    from qground.prompts import Turn, grounding_answer
    from qground.service import load_engine
    from qground.tokenizer import seg_tokens

    image = photo(*PHOTO_SIZE, seed=1)
    try:
        return load_engine("qground-nano"), image
    except (CheckpointError, OSError) as err:
        print(f"qground-nano unavailable ({err}); overfitting qground-tiny to one photo instead", file=sys.stderr)
    torch.manual_seed(0)
    model, tokenizer = build_from_registry("qground-tiny")
    processor = QGroundProcessor(tokenizer, model.config)
    mask = np.zeros((PHOTO_SIZE[1], PHOTO_SIZE[0]), dtype=bool)
    mask[: PHOTO_SIZE[1] // 2, : PHOTO_SIZE[0] // 2] = True
    answer = grounding_answer(["noise"], seg_tokens(model.config).group_text())
    batch = processor.collate([processor([image], [Turn(GROUNDING_QUESTION, answer)], masks=[mask])])
    params = [p for n, p in model.named_parameters() if not n.startswith("llava.model.vision_tower")]
    optimizer = torch.optim.Adam(params, lr=3e-3)
    model.train()
    keys = ("input_ids", "pixel_values", "attention_mask", "labels", "masks", "image_sizes")
    for _ in range(150):
        loss = model(**{k: batch[k] for k in keys})["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return QGroundEngine(model.eval(), processor, name="qground-tiny-overfit"), image


def bench_ground(engine, image: Image.Image, folder: Path) -> None:
    from gradio_client import Client, handle_file

    from app import build_demo

    path = folder / "photo.png"
    image.save(path)
    result = engine.ground(str(path))
    print(f"engine answer: {result.text!r}, masks: {sorted(result.masks)}")
    demo = build_demo(engine)
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True)
    try:
        fetching = Client(url, verbose=False, download_files=str(folder / "downloads"))
        links_only = Client(url, verbose=False, download_files=False)
        bare, full, links, text = interleaved_medians(
            [
                lambda: engine.ground(str(path)),
                lambda: fetching.predict(handle_file(str(path)), "", api_name="/ground"),
                lambda: links_only.predict(handle_file(str(path)), "", api_name="/ground"),
                lambda: links_only.predict(handle_file(str(path)), "", api_name="/describe"),
            ],
            ROUNDS,
        )
    finally:
        demo.close()
    size = f"{image.width}×{image.height}"
    print(f"bare engine.ground {size}: {bare * 1000:.0f} ms")
    for what, seconds in (
        ("/ground, client downloads overlay + masks + zip", full),
        ("/ground, client keeps file links (download_files=False)", links),
        ("/describe (same generation, text only)", text),
    ):
        print(f"{what}: {seconds * 1000:.0f} ms = +{(seconds - bare) * 1000:.0f} ms, ratio {seconds / bare:.2f}")
    print("target ratio for /ground: <= 1.15")


def matplotlib_overlay(rgb: np.ndarray, masks: dict[str, np.ndarray], alpha: float) -> np.ndarray:
    """The same tint drawn the usual matplotlib way: a figure at the photo size, the photo, one RGBA layer per mask."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from qground.taxonomy import DISTORTION_COLORS
    from qground.visualize import hex_to_rgb

    h, w = rgb.shape[:2]
    figure = Figure(figsize=(w / 100, h / 100), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_axes((0, 0, 1, 1))
    axes.set_axis_off()
    axes.imshow(rgb, interpolation="nearest")
    for name, mask in masks.items():
        layer = np.zeros((h, w, 4), dtype=np.float32)
        layer[..., :3] = np.array(hex_to_rgb(DISTORTION_COLORS[name])) / 255.0
        layer[..., 3] = mask * alpha
        axes.imshow(layer, interpolation="nearest")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="raw", dpi=100)
    return np.frombuffer(buffer.getvalue(), dtype=np.uint8).reshape(h, w, 4)[..., :3]


def bench_overlay() -> None:
    from qground.visualize import overlay

    h, w = 3000, 4000
    rgb = np.asarray(photo(w, h, seed=2))
    yy, xx = np.mgrid[:h, :w]
    masks = {
        "blur": (yy - 900) ** 2 + (xx - 1200) ** 2 < 700**2,
        "noise": (yy > 1800) & (xx < 2500),
        "low light": (yy < 1200) & (xx > 2600),
    }
    ours = median_seconds(lambda: overlay(rgb, masks, alpha=0.45, outline=False), 5)
    ours_outlined = median_seconds(lambda: overlay(rgb, masks, alpha=0.45), 5)
    reference = median_seconds(lambda: matplotlib_overlay(rgb, masks, alpha=0.45), 5)
    drawn, theirs = overlay(rgb, masks, alpha=0.45, outline=False), matplotlib_overlay(rgb, masks, alpha=0.45)
    differ = np.abs(drawn.astype(int) - theirs.astype(int)).max(axis=2) > 2
    print(
        f"overlay 12 MP, 3 masks: visualize.overlay {ours * 1000:.0f} ms ({ours_outlined * 1000:.0f} ms with outlines) "
        f"vs matplotlib figure {reference * 1000:.0f} ms -> {reference / ours:.1f}x faster "
        f"(targets <= 150 ms, >= 3x); pixels differing by > 2 levels: {differ.mean() * 100:.2f} %"
    )


def main() -> None:
    bench_overlay()
    engine, image = trained_engine()
    with tempfile.TemporaryDirectory() as tmp:
        bench_ground(engine, image, Path(tmp))


if __name__ == "__main__":
    main()
