"""What the app adds around the model over Gradio's own minimum, and how fast masks are drawn.

1. ``/ground`` of the app vs a Gradio floor: in the same run, on loopback, ``gradio_client`` (downloading every file
   it receives, as a browser does) sends the same photo files to
   (a) the app's public ``/ground`` (``qground.app.build_demo``: streamed answer, overlay PNG with outlines, mask PNGs,
       masks zip with ``result.json``, table), and
   (b) a trivial ``gr.Blocks`` endpoint of the same shape (image filepath + textbox + slider in; AnnotatedImage +
       Textbox + Dataframe + File out) whose handler does the same work the most direct way, without the service
       layer: open the file with PIL, ``engine.ground`` at the same strictness, return ``(photo, [(mask × 0.5,
       class)])``, the answer, ``[class, area %, where, score]`` rows and a zip of the mask PNGs written directly.
   The bare ``engine.ground`` on the same file is timed too (what Gradio itself costs = floor − bare). Requests are
   interleaved (the order alternates per round), after a warm-up round; medians per photo size; printed ratio
   app / floor, target ≤ 1.3.
   Photos: JPEGs made from the repository's own photos (``training.data.synth.load_photo``) cropped and scaled to
   640×480, 1600×1200 and 4000×3000 (12 MP), one region distorted with a ``training.data.distortions`` family that
   qground-nano finds (so that masks are drawn, encoded and sent); rounds cycle over three such photos per size.
   Engine: the shipped ``qground-nano`` when it loads, else a tiny model overfit to the first photo (as in
   tests/conftest.py, about 30 s of training) so that it answers and segments like a trained model.
2. Drawing three class masks over a 12 MP (4000×3000) photo: ``qground.visualize.overlay`` vs a matplotlib figure of
   the same overlay (``imshow`` of the photo + one RGBA ``imshow`` per mask, rendered with ``savefig`` to a raw RGBA
   buffer at the photo's size). Medians of 5; targets ≤ 150 ms and ≥ 3× faster.

``--quick``: one 160×120 photo for /ground (street: qground-nano draws its mask), a 400×300 overlay, medians of 2
(seconds with qground-nano).

Run: ``python -m bench.app_overhead [--quick]``
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

TARGET_RATIO = 1.3  # app / Gradio floor
FULL_SIZES = ((640, 480), (1600, 1200), (4000, 3000))


@dataclass(frozen=True)
class PhotoSpec:
    """A repository photo (``training.data.synth.load_photo`` name) with ``family`` (a ``training.data.distortions``
    key) applied at ``strength`` inside ``box`` (x0, y0, x1, y1 as fractions of the image)."""

    name: str
    family: str
    strength: float
    box: tuple[float, float, float, float]


# photos of the held-out splits where qground-nano finds the distortion at 640×480 to 4000×3000
PHOTOS = (
    PhotoSpec("coffee", "noise/gaussian", 0.7, (0.0, 0.0, 0.5, 0.5)),
    PhotoSpec("street", "overexposure/gain", 0.7, (0.0, 0.0, 0.5, 0.5)),
    PhotoSpec("motorcycle", "noise/poisson", 0.8, (0.4, 0.3, 1.0, 0.9)),
    PhotoSpec("china", "overexposure/clip", 0.8, (0.0, 0.2, 0.6, 1.0)),
)


def distorted_photo(spec: PhotoSpec, size: tuple[int, int], seed: int = 0) -> Image.Image:
    """``spec``'s photo center-cropped to the aspect of ``size`` (W, H), scaled to it (bicubic), with its box
    distorted (the family applied to the box only, at full size)."""
    from training.data import distortions, synth

    source = synth.load_photo(spec.name)
    w, h = size
    sh, sw = source.shape[:2]
    if sw * h > sh * w:  # too wide: crop the sides
        cw = sh * w // h
        source = source[:, (sw - cw) // 2 : (sw - cw) // 2 + cw]
    else:
        ch = sw * h // w
        source = source[(sh - ch) // 2 : (sh - ch) // 2 + ch]
    rgb = np.asarray(Image.fromarray(source).resize(size, Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
    x0, y0, x1, y1 = (int(round(f * n)) for f, n in zip(spec.box, (w, h, w, h)))
    family = next(f for f in distortions.FAMILIES if f.key == spec.family)
    rgb = rgb.copy()
    rgb[y0:y1, x0:x1] = family.apply(rgb[y0:y1, x0:x1], spec.strength, np.random.default_rng(seed))
    return Image.fromarray((np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))


def photo_files(folder: Path, size: tuple[int, int], specs=PHOTOS, quality: int = 92) -> list[Path]:
    """``specs`` as JPEG files of ``size`` in ``folder`` (``<name>-<W>x<H>.jpg``)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for spec in specs:
        path = folder / f"{spec.name}-{size[0]}x{size[1]}.jpg"
        distorted_photo(spec, size).save(path, quality=quality)
        paths.append(path)
    return paths


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
    """Median wall time of each function ``fn(round)``, all run in turn ``rounds`` times after one warm-up round; the
    order alternates (forwards, backwards) so that neither always runs right after the other (interleaving spreads
    the load of other processes over all of them)."""
    times: list[list[float]] = [[] for _ in fns]
    for round_ in range(rounds + 1):
        order = list(range(len(fns)))
        for k in order if round_ % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            fns[k](round_)
            if round_:
                times[k].append(time.perf_counter() - t0)
    return [statistics.median(spent) for spent in times]


def smooth_photo(width: int, height: int, seed: int) -> Image.Image:
    """A smooth random color photo."""
    small = np.random.default_rng(seed).integers(0, 255, size=(6, 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)


def trained_engine(image: Image.Image):
    """qground-nano, or a tiny model overfit to ``image`` with a 'noise' box (top-left quarter)."""
    import torch

    from qground.builder import build_from_registry
    from qground.checkpoint import CheckpointError
    from qground.inference import GROUNDING_QUESTION, QGroundEngine
    from qground.processor import QGroundProcessor
    from qground.prompts import Turn, grounding_answer
    from qground.service import load_engine
    from qground.tokenizer import seg_tokens

    try:
        return load_engine("qground-nano")
    except (CheckpointError, OSError) as err:
        print(f"qground-nano unavailable ({err}); overfitting qground-tiny to one photo instead", file=sys.stderr)
    torch.manual_seed(0)
    model, tokenizer = build_from_registry("qground-tiny")
    processor = QGroundProcessor(tokenizer, model.config)
    mask = np.zeros((image.height, image.width), dtype=bool)
    mask[: image.height // 2, : image.width // 2] = True
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
    return QGroundEngine(model.eval(), processor, name="qground-tiny-overfit")


def floor_demo(engine, scratch: Path):
    """Gradio's own minimum for /ground: the same inputs and outputs, the same model call, nothing else."""
    import gradio as gr
    from PIL import ImageOps

    from qground.inference import GROUNDING_QUESTION, GenerationSettings
    from qground.visualize import color_map

    def ground(path: str, question: str, strictness: float):
        photo = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
        result = engine.ground(photo, question.strip() or GROUNDING_QUESTION, GenerationSettings(strictness=strictness))
        annotations = [(mask.astype(np.float32) * np.float32(0.5), name) for name, mask in result.masks.items()]
        rows = [
            [name, round(r.area_percent, 2), r.where, round(result.scores.get(name, 0.0), 3)]
            for name, r in result.regions.items()
        ]
        archive = None
        if result.masks:
            archive = Path(tempfile.mkdtemp(dir=scratch)) / "masks.zip"
            with zipfile.ZipFile(archive, "w") as zf:
                for name, mask in result.masks.items():
                    png = io.BytesIO()
                    Image.fromarray(mask.astype(np.uint8) * 255).save(png, format="PNG", compress_level=1)
                    zf.writestr(f"{name}.png", png.getvalue())
                zf.writestr("result.json", json.dumps({"answer": result.text, "rows": rows}))
        return (np.asarray(photo), annotations), result.text, rows, archive and str(archive)

    with gr.Blocks() as demo:
        photo = gr.Image(type="filepath", image_mode=None)
        question = gr.Textbox()
        strictness = gr.Slider(0.0, 8.0, engine.policy.default_strictness, step=0.5)
        button = gr.Button("/ground")
        outputs = [
            gr.AnnotatedImage(format="png", color_map=color_map()),
            gr.Textbox(),
            gr.Dataframe(headers=["Distortion", "Area %", "Where", "Score"]),
            gr.File(),
        ]
        button.click(ground, [photo, question, strictness], outputs, api_name="ground")
    return demo


@contextlib.contextmanager
def served(demo):
    """``demo`` launched on 127.0.0.1; yields its URL."""
    _, url, _ = demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    try:
        yield url
    finally:
        demo.close()


def labels(output) -> list[str]:
    """The annotation labels of a /ground answer (its first output)."""
    return sorted(a["label"] for a in (output[0] or {}).get("annotations", []))


def bench_ground(engine, sizes: list[tuple[int, int]], specs, folder: Path, rounds: int) -> None:
    from gradio_client import Client

    from qground.app import build_demo

    strictness = engine.policy.default_strictness
    photos = ", ".join(f"{s.name} ({s.family})" for s in specs)
    print(f"engine: {engine.name}, strictness {strictness:g}; photos: {photos}")
    with served(build_demo(engine)) as app_url, served(floor_demo(engine, folder)) as floor_url:
        app = Client(app_url, verbose=False, download_files=str(folder / "app-downloads"))
        floor = Client(floor_url, verbose=False, download_files=str(folder / "floor-downloads"))
        ratios = [
            bench_size(engine, app, floor, photo_files(folder / "photos", size, specs), strictness, rounds)
            for size in sizes
        ]
    print(
        f"worst ratio app/floor {max(ratios):.2f} (target <= {TARGET_RATIO:g}); medians of {rounds} interleaved rounds"
    )


def bench_size(engine, app, floor, files: list[Path], strictness: float, rounds: int) -> float:
    """Time /ground of the app and of the floor, and the bare engine, on ``files`` (one size); returns app / floor."""
    from gradio_client import handle_file

    from qground.inference import GenerationSettings

    settings = GenerationSettings(strictness=strictness)
    paths = [str(p) for p in files]
    with Image.open(paths[0]) as first:
        size = f"{first.width}×{first.height}"
    for path in paths:
        result = engine.ground(path, settings=settings)
        app_labels = labels(app.predict(handle_file(path), "", strictness, api_name="/ground"))
        floor_labels = labels(floor.predict(handle_file(path), "", strictness, api_name="/ground"))
        same = "the same" if app_labels == floor_labels == sorted(result.masks) else "DIFFERENT"
        print(
            f"engine answer {size} {Path(path).stem}: {result.text!r}, masks: {sorted(result.masks)} "
            f"({same} through the app and the floor)"
        )
    bare, ours, minimum = interleaved_medians(
        [
            lambda r: engine.ground(paths[r % len(paths)], settings=settings),
            lambda r: app.predict(handle_file(paths[r % len(paths)]), "", strictness, api_name="/ground"),
            lambda r: floor.predict(handle_file(paths[r % len(paths)]), "", strictness, api_name="/ground"),
        ],
        rounds,
    )
    print(
        f"/ground {size}: app {ours * 1000:.0f} ms, Gradio floor {minimum * 1000:.0f} ms, "
        f"bare engine.ground {bare * 1000:.0f} ms; app - floor = {(ours - minimum) * 1000:+.0f} ms, "
        f"floor - bare = {(minimum - bare) * 1000:+.0f} ms; ratio app/floor {ours / minimum:.2f} "
        f"(target <= {TARGET_RATIO:g})"
    )
    return ours / minimum


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

    rgb = np.asarray(smooth_photo(w, h, seed=2))
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


@contextlib.contextmanager
def gradio_temp_dir(folder: Path):
    """GRADIO_TEMP_DIR set to ``folder`` (Gradio's copies of uploads and outputs go there), restored afterwards."""
    before = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(folder)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = before


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.app_overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one 160×120 photo, a 400×300 overlay, medians of 2")
    quick = parser.parse_args(argv).quick
    bench_overlay(*((400, 300, 2) if quick else (4000, 3000, 5)))
    sizes, specs = ([(160, 120)], PHOTOS[1:2]) if quick else (list(FULL_SIZES), PHOTOS[:3])
    engine = trained_engine(distorted_photo(specs[0], sizes[0]))
    with tempfile.TemporaryDirectory(prefix="qground-overhead-") as tmp, gradio_temp_dir(Path(tmp) / "gradio"):
        bench_ground(engine, sizes, specs, Path(tmp), 2 if quick else 9)


if __name__ == "__main__":
    main()
