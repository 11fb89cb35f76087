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

``--quick``: the same on a 160×120 /ground photo and a 400×300 overlay, medians of 2 (seconds with qground-nano).

Run: ``python -m bench.app_overhead [--quick]``
"""

from __future__ import annotations

import argparse
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


def trained_engine(size: tuple[int, int]):
    """``(engine, photo)``: qground-nano and a (W, H) test photo, or a tiny model overfit to one photo with a 'noise'
    box."""
    import torch

    from qground.builder import build_from_registry
    from qground.checkpoint import CheckpointError
    from qground.inference import GROUNDING_QUESTION, QGroundEngine
    from qground.processor import QGroundProcessor
    from qground.prompts import Turn, grounding_answer
    from qground.service import load_engine
    from qground.tokenizer import seg_tokens

    image = photo(*size, seed=1)
    try:
        return load_engine("qground-nano"), image
    except (CheckpointError, OSError) as err:
        print(f"qground-nano unavailable ({err}); overfitting qground-tiny to one photo instead", file=sys.stderr)
    torch.manual_seed(0)
    model, tokenizer = build_from_registry("qground-tiny")
    processor = QGroundProcessor(tokenizer, model.config)
    mask = np.zeros((size[1], size[0]), dtype=bool)
    mask[: size[1] // 2, : size[0] // 2] = True
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


def bench_ground(engine, image: Image.Image, folder: Path, rounds: int) -> None:
    from gradio_client import Client, handle_file

    from qground.app import build_demo

    path = folder / "photo.png"
    image.save(path)
    result = engine.ground(str(path))
    print(f"engine answer: {result.text!r}, masks: {sorted(result.masks)}")
    demo = build_demo(engine)
    _, url, _ = demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
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
            rounds,
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


def bench_overlay(w: int, h: int, rounds: int) -> None:
    from qground.visualize import overlay

    rgb = np.asarray(photo(w, h, seed=2))
    yy, xx = np.mgrid[:h, :w]
    masks = {
        "blur": (yy - 0.3 * h) ** 2 + (xx - 0.3 * w) ** 2 < (0.175 * w) ** 2,
        "noise": (yy > 0.6 * h) & (xx < 0.625 * w),
        "low light": (yy < 0.4 * h) & (xx > 0.65 * w),
    }
    ours = median_seconds(lambda: overlay(rgb, masks, alpha=0.45, outline=False), rounds)
    ours_outlined = median_seconds(lambda: overlay(rgb, masks, alpha=0.45), rounds)
    reference = median_seconds(lambda: matplotlib_overlay(rgb, masks, alpha=0.45), rounds)
    drawn, theirs = overlay(rgb, masks, alpha=0.45, outline=False), matplotlib_overlay(rgb, masks, alpha=0.45)
    differ = np.abs(drawn.astype(int) - theirs.astype(int)).max(axis=2) > 2
    print(
        f"overlay {w * h / 1e6:.2g} MP ({w}×{h}), 3 masks: visualize.overlay {ours * 1000:.0f} ms "
        f"({ours_outlined * 1000:.0f} ms with outlines) vs matplotlib figure {reference * 1000:.0f} ms "
        f"-> {reference / ours:.1f}x faster (targets <= 150 ms, >= 3x); "
        f"pixels differing by > 2 levels: {differ.mean() * 100:.2f} %"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.app_overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small photos, medians of 2")
    quick = parser.parse_args(argv).quick
    bench_overlay(*((400, 300, 2) if quick else (4000, 3000, 5)))
    engine, image = trained_engine((160, 120) if quick else (640, 480))
    with tempfile.TemporaryDirectory() as tmp:
        bench_ground(engine, image, Path(tmp), 2 if quick else 9)


if __name__ == "__main__":
    main()
