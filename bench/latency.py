"""End-to-end ``ground`` latency per image (model load excluded): image file → answer + masks at original size.

Runs the engine on the held-out synthetic images (or any folder of images) at the model's default detection strictness,
as the app and the command line do, and prints the median and p90 of the total time and its stages (preprocess incl.
native-resolution detail channels, generation, masks).

``--one-view`` (models with ``flip_average``): also times every image reading one view, interleaved with the default
(two views), and prints both medians and their ratio: what the mirrored second view costs, measured side by side.
``--no-refine`` (models with ``mask_refine_radius``): the same for masks only upsampled, not guided-filtered on the
photo. ``--capped-detail`` (models reading detail beyond 1280 px): the same with every detail channel read on the
photo shrunk to ``CAP`` px (what reading a large photo's noise and blur at its own resolution costs).

``--resize 4000x3000`` first scales each image to that size (a 12 MP phone photo: native-resolution detail channels and
full-size masks cost most there) and times the engine on the in-memory image.

``--quick`` times the first 2 held-out images, made afresh by ``training.data.synth`` in a temporary folder (seconds).

Run: ``python -m bench.latency [--model qground-nano] [--data runs/nano/data/eval/images] [--limit 50] [--resize WxH]
[--one-view] [--no-refine] [--capped-detail] [--quick]``
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from qground.inference import GenerationSettings
from qground.models import resolve_model
from qground.processor import QGroundProcessor
from qground.service import load_engine


def heldout_images(folder: Path, count: int) -> Path:
    """``folder`` with the first ``count`` images of the held-out synthetic split (seed 0) written into it."""
    from training.data import synth

    for index in range(count):
        Image.fromarray(synth.generate(index, "eval", 0).image).save(folder / f"eval_{index:06d}.png")
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=resolve_model(), help="[QGROUND_MODEL, else qground.models.DEFAULT_MODEL]")
    parser.add_argument("--data", type=Path, default=Path("runs/nano/data/eval/images"))
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--resize", help="WxH: time each image scaled to this size (e.g. 4000x3000)")
    parser.add_argument(
        "--one-view", action="store_true", help="also time each image reading one view (models with flip_average)"
    )
    parser.add_argument(
        "--no-refine",
        action="store_true",
        help="also time each image with masks only upsampled (models with mask_refine_radius)",
    )
    parser.add_argument(
        "--capped-detail",
        action="store_true",
        help=f"also time each image with every detail channel read at most at {CAP} px (models reading beyond it)",
    )
    parser.add_argument("--quick", action="store_true", help="2 held-out images made in a temporary folder")
    args = parser.parse_args(argv)
    if args.quick:
        with tempfile.TemporaryDirectory(prefix="qground-latency-") as tmp:
            args.data, args.limit = heldout_images(Path(tmp), 2), 2
            measure(args)
    else:
        measure(args)


CAP = 1280  # training.data.synth's MAX_SIDE: the largest training photos


def _reads_beyond(config, side: int) -> bool:
    """Whether a model with ``config`` reads some detail channel of a photo larger than ``side`` px above ``side``."""
    return config.detail_channels and (
        not config.detail_max_side or config.detail_max_side > side or config.noise_max_side > side
    )


def measure(args: argparse.Namespace) -> None:
    engine = load_engine(args.model)
    if args.one_view and not engine.policy.flip_average:
        raise SystemExit(f"--one-view: {args.model} reads one view already (flip_average is off)")
    if args.no_refine and not engine.policy.mask_refine_radius:
        raise SystemExit(f"--no-refine: {args.model} does not refine its masks (mask_refine_radius is 0)")
    if args.capped_detail and not _reads_beyond(engine.config, CAP):
        raise SystemExit(f"--capped-detail: {args.model} reads its detail channels at most at {CAP} px already")
    default, processor = engine.policy, engine.processor
    variants = {"one view": (default.replace(flip_average=False), processor)} if args.one_view else {}
    variants |= {"masks not refined": (default.replace(mask_refine_radius=0.0), processor)} if args.no_refine else {}
    if args.capped_detail:
        capped = dataclasses.replace(engine.config, detail_max_side=CAP, noise_max_side=0)
        capped_processor = QGroundProcessor(engine.tokenizer, capped, processor.style, processor.max_length)
        variants["detail capped"] = (default, capped_processor)
    files = sorted(args.data.glob("*.png"))[: args.limit]
    if not files:
        raise SystemExit(f"no images in {args.data}: run `python -m training.nano` first or pass --data")
    inputs: list = files
    if args.resize:
        width, height = (int(v) for v in args.resize.lower().split("x"))
        inputs = [Image.open(f).convert("RGB").resize((width, height), Image.Resampling.BICUBIC) for f in files]
    settings = GenerationSettings(strictness=engine.policy.default_strictness)
    engine.ground(inputs[0], settings=settings)  # warm-up
    totals, stages = [], {"preprocess": [], "generate": [], "masks": []}
    others: dict[str, list[float]] = {name: [] for name in variants}
    for f in inputs:
        t0 = time.perf_counter()
        result = engine.ground(f, settings=settings)
        totals.append(time.perf_counter() - t0)
        for k in stages:
            stages[k].append(result.timings[k])
        for name, (policy, variant_processor) in variants.items():
            engine.set_policy(policy)
            engine.processor = variant_processor
            t0 = time.perf_counter()
            engine.ground(f, settings=settings)
            others[name].append(time.perf_counter() - t0)
            engine.set_policy(default)
            engine.processor = processor
    size = f", scaled to {args.resize}" if args.resize else ""
    print(
        f"{args.model} on {len(files)} images from {args.data}{size}, strictness {settings.strictness:g} "
        f"(torch threads {torch.get_num_threads()})"
    )
    print(
        f"ground latency: median {statistics.median(totals) * 1000:.0f} ms, p90 "
        f"{np.percentile(totals, 90) * 1000:.0f} ms   (target: median <= 1000 ms)"
    )
    for k, v in stages.items():
        print(f"  {k:<11} median {statistics.median(v) * 1000:.0f} ms")
    for name, times in others.items():
        ratio = statistics.median(totals) / statistics.median(times)
        print(f"{name} (interleaved): median {statistics.median(times) * 1000:.0f} ms; default / {name} = {ratio:.2f}")


if __name__ == "__main__":
    main()
