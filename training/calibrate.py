"""Choose a model's default detection strictness and mask blend on validation photos, which it was neither trained on
nor is evaluated on (``training.data.synth --split val``).

Grounds every validation image at each strictness of the grid (masks from the pixel decoder alone) and keeps the one
with the highest mIoU (the lower one on a tie); then, at that strictness, each readout mask weight of its grid
(``QGroundModel.blend_readout``) and keeps the best the same way. For models with ``motion_signature`` the jitter gate
``jitter_min_motion_signature`` is not fitted to the validation photos but read off the training photos: the 75th
percentile of the motion-blur signature over their undistorted content (``motion_reference``), so a region is called
jitter only if it looks more motion-blurred than most clean content; validation mIoU with and without it is recorded.
Prints the tables and writes the choices into the checkpoint's ``qground_config.json`` (``default_strictness``, the
value the app, the CLI and ``eval`` start from, ``readout_mask_weight`` and ``jitter_min_motion_signature``); the
sweeps are kept beside it in ``calibration.json``. The held-out evaluation photos play no part in the choice.

``python -m training.calibrate --model runs/nano/stage3/final --data runs/nano/data/val [--train runs/nano/data/train]
[--grid 0,1,2,3,4,5,6] [--weights 0,0.25,0.5,0.75,1]``
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from qground.config import QGroundConfig
from qground.detail import motion_signature
from qground.evaluate import evaluate, load_gt
from qground.imageio import load_image
from qground.inference import GenerationSettings, QGroundEngine
from qground.service import load_engine

DEFAULT_GRID = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0)
DEFAULT_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
MOTION_QUANTILE, MOTION_CELL, MOTION_IMAGES = 0.75, 16, 600
CALIBRATION_NAME = "calibration.json"


def _summary(engine: QGroundEngine, data: Path, strictness: float, limit: int | None, label: str) -> dict:
    """The model's grounding summary on ``data`` (``GroundingMetrics.summary()``: mIoU, clean rate, …), printed."""
    report = evaluate(
        engine, data, ("ground",), limit, progress=False, settings=GenerationSettings(strictness=strictness)
    )
    summary = report["ground"]["methods"]["model"]
    cells = ", ".join(f"{k} {'–' if summary[k] is None else f'{summary[k]:.3f}'}" for k in ("mIoU", "clean_rate"))
    print(f"{label}: {cells}", flush=True)
    return summary


def sweep(engine: QGroundEngine, data: Path, grid: Sequence[float], limit: int | None = None) -> dict[float, dict]:
    """Strictness → grounding summary on ``data``, with the model's current mask weight."""
    return {s: _summary(engine, data, s, limit, f"strictness {s:g}") for s in grid}


def config_sweep(
    engine: QGroundEngine, data: Path, field: str, values: Sequence[float], strictness: float, limit: int | None = None
) -> dict[float, dict]:
    """Value of the config ``field`` → grounding summary on ``data`` at ``strictness``; leaves the engine's model at
    the last value."""
    out = {}
    for v in values:
        engine.model.config = dataclasses.replace(engine.model.config, **{field: v})
        out[v] = _summary(engine, data, strictness, limit, f"strictness {strictness:g}, {field} {v:g}")
    return out


def motion_reference(train: Path, limit: int = MOTION_IMAGES) -> float:
    """The ``MOTION_QUANTILE`` quantile of ``qground.detail.motion_signature`` (one value per ``MOTION_CELL``-px cell)
    over the undistorted content of the first ``limit`` images of a ``synth`` split: cells no ground-truth mask
    touches and whose window holds texture (signature > 0)."""
    values = []
    for path in sorted((train / "images").glob("*.png"))[:limit]:
        rgb = np.asarray(load_image(path))
        size = (max(1, rgb.shape[0] // MOTION_CELL), max(1, rgb.shape[1] // MOTION_CELL))
        signature = motion_signature(rgb, size).numpy()
        touched = np.zeros(size, bool)
        for mask in load_gt(train, path.stem, rgb.shape[:2]).values():
            touched |= (
                np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size[::-1], Image.Resampling.BOX)) > 0
            )
        values.append(signature[~touched & (signature > 0)])
    pooled = np.concatenate(values) if values else np.empty(0)
    if not pooled.size:
        raise ValueError(f"no undistorted textured content in {train}/images to read the motion-blur signature from")
    return round(float(np.quantile(pooled, MOTION_QUANTILE)), 2)


def choose(summaries: dict[float, dict]) -> float:
    """The key with the highest mIoU; the lowest such one on a tie (an undefined mIoU counts as 0)."""
    return min(summaries, key=lambda s: (-(summaries[s]["mIoU"] or 0.0), s))


def _floats(text: str) -> list[float]:
    return sorted({float(v) for v in text.split(",")})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.calibrate", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="checkpoint folder (its config is updated)")
    parser.add_argument("--data", type=Path, required=True, help="validation folder: images/, gt/ (synth --split val)")
    parser.add_argument("--grid", default=",".join(f"{s:g}" for s in DEFAULT_GRID), help="strictness values to try")
    parser.add_argument(
        "--weights", default=",".join(f"{w:g}" for w in DEFAULT_WEIGHTS), help="readout mask weights to try (0–1)"
    )
    parser.add_argument(
        "--train",
        type=Path,
        help="training folder (synth --split train): the jitter gate's reference, models with motion_signature",
    )
    parser.add_argument("--limit", type=int, help="at most N validation images")
    args = parser.parse_args(argv)
    config = QGroundConfig.load(args.model)
    if not config.readout:
        print(f"error: {args.model} has no distortion readout, so strictness does not apply", file=sys.stderr)
        return 2
    if config.motion_signature and args.train is None:
        print(
            f"error: {args.model} has a motion-blur signature; --train is needed for its jitter gate", file=sys.stderr
        )
        return 2
    grid, weights = _floats(args.grid), _floats(args.weights)
    engine = load_engine(str(args.model))
    # the decoder alone and no jitter gate first
    engine.model.config = dataclasses.replace(
        engine.model.config, readout_mask_weight=0.0, jitter_min_motion_signature=0.0
    )
    summaries = sweep(engine, args.data, grid, args.limit)
    best = choose(summaries)
    blends = config_sweep(engine, args.data, "readout_mask_weight", weights, best, args.limit)
    weight = choose(blends)
    engine.model.config = dataclasses.replace(engine.model.config, readout_mask_weight=weight)
    record = {
        "data": str(args.data),
        "criterion": "mIoU",
        "chosen": best,
        "sweep": {f"{s:g}": summaries[s] for s in grid},
        "readout_mask_weight": {"chosen": weight, "sweep": {f"{w:g}": blends[w] for w in weights}},
    }
    gate = 0.0
    if config.motion_signature and best:  # the gate acts at strictness > 0 only
        gate = motion_reference(args.train)
        gates = {0.0: blends[weight]}  # the weight sweep ran without the gate
        gates |= config_sweep(engine, args.data, "jitter_min_motion_signature", (gate,), best, args.limit)
        record["jitter_min_motion_signature"] = {
            "chosen": gate,
            "reference": {"train": str(args.train), "quantile": MOTION_QUANTILE, "images": MOTION_IMAGES},
            "sweep": {f"{m:g}": gates[m] for m in gates},
        }
    dataclasses.replace(
        config, default_strictness=best, readout_mask_weight=weight, jitter_min_motion_signature=gate
    ).save(args.model)
    (args.model / CALIBRATION_NAME).write_text(json.dumps(record, indent=2) + "\n")
    print(
        f"default_strictness {best:g}, readout_mask_weight {weight:g}, jitter_min_motion_signature {gate:g} "
        f"written to {args.model}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
