"""Choose a model's default detection strictness and mask blend on validation photos, which it was neither trained on
nor is evaluated on (``training.data.synth --split val``).

Grounds every validation image at each strictness of the grid (masks from the pixel decoder alone) and keeps the one
with the highest mIoU (the lower one on a tie); then, at that strictness, each readout mask weight of its grid
(``QGroundModel.blend_readout``) and keeps the best the same way. For models with ``motion_signature`` the jitter gate
``jitter_min_motion_signature`` is not fitted to the validation photos but read off the training photos: the 75th
percentile of the motion-blur signature over their undistorted content (``motion_reference``), so a region is called
jitter only if it looks more motion-blurred than most clean content; validation mIoU with and without it is recorded.
For the same models, P(jitter | signature) is fitted on the training photos too (``motion_logistic``: jittered
against undistorted cells), and the weight of that posterior in jitter masks (``QGroundModel.blend_motion``) is chosen
on the validation photos from the mask-weight grid, the same way.
For models with ``low_light_contrast`` the low-light gate ``low_light_min_log_contrast`` is read off the training
photos as well: the 10th percentile of the log contrast of their low-light regions (``contrast_reference``), so a
region is called low light only if it is at least as steep in the log domain as 90 % of the training photos' low
light; validation mIoU with and without it is recorded (the validation photos hold almost no well-exposed shadow, the
false alarm it is for, so they show its cost, not its use).
Then, with everything else chosen, whether each image is also read mirrored (``flip_average``, test-time averaging of
the presence logits, coverage and masks over both views) is chosen on the validation photos the same way; last, the
radius of the guided filter that lays each mask's edges onto the photo's own (``mask_refine_radius``, qground.refine;
0 = off) from its grid.
Prints the tables and writes the choices into the checkpoint's ``qground_config.json`` (``default_strictness``, the
value the app, the CLI and ``eval`` start from, ``readout_mask_weight``, ``jitter_min_motion_signature``,
``jitter_signature_weight`` / ``_center`` / ``_scale``, ``low_light_min_log_contrast``, ``flip_average`` and
``mask_refine_radius``); the sweeps are kept beside it in ``calibration.json``. The held-out evaluation photos play
no part in the choice.

``python -m training.calibrate --model runs/nano/stage3/final --data runs/nano/data/val [--train runs/nano/data/train]
[--grid 0,1,2,3,4,5,6] [--weights 0,0.25,0.5,0.75,1] [--radii 0,2,4,6,8]``
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
from qground.detail import log_contrast, motion_signature, region_contrast
from qground.evaluate import evaluate, load_gt
from qground.imageio import load_image
from qground.inference import GenerationSettings, QGroundEngine
from qground.processor import ImageMeta, QGroundProcessor
from qground.service import load_engine

DEFAULT_GRID = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0)
DEFAULT_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
DEFAULT_RADII = (0.0, 2.0, 4.0, 6.0, 8.0)
MOTION_QUANTILE, MOTION_CELL, MOTION_IMAGES = 0.75, 16, 600
CONTRAST_QUANTILE = 0.1
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
        engine.reconfigure(**{field: v})
        out[v] = _summary(engine, data, strictness, limit, f"strictness {strictness:g}, {field} {v:g}")
    return out


def motion_evidence(train: Path, limit: int = MOTION_IMAGES) -> tuple[np.ndarray, np.ndarray]:
    """``qground.detail.motion_signature``, one value per ``MOTION_CELL``-px cell whose window holds texture
    (signature > 0), over the first ``limit`` images of a ``synth`` split → (undistorted: cells no ground-truth mask
    touches, jittered: cells wholly inside a jitter mask). ValueError without undistorted textured content."""
    clean, jittered = [], []
    for path in sorted((train / "images").glob("*.png"))[:limit]:
        rgb = np.asarray(load_image(path))
        size = (max(1, rgb.shape[0] // MOTION_CELL), max(1, rgb.shape[1] // MOTION_CELL))
        signature = motion_signature(rgb, size).numpy()
        cover = {  # fraction of each cell inside each mask
            name: np.asarray(Image.fromarray(mask.astype(np.float32)).resize(size[::-1], Image.Resampling.BOX))
            for name, mask in load_gt(train, path.stem, rgb.shape[:2]).items()
        }
        touched = np.zeros(size, bool)
        for fraction in cover.values():
            touched |= fraction > 0
        clean.append(signature[~touched & (signature > 0)])
        if "jitter" in cover:
            jittered.append(signature[(cover["jitter"] >= 0.99) & (signature > 0)])
    clean, jittered = (np.concatenate(v) if v else np.empty(0) for v in (clean, jittered))
    if not clean.size:
        raise ValueError(f"no undistorted textured content in {train}/images to read the motion-blur signature from")
    return clean, jittered


def motion_reference(clean: np.ndarray) -> float:
    """The jitter gate: the ``MOTION_QUANTILE`` quantile of undistorted content's signature (``motion_evidence``)."""
    return round(float(np.quantile(clean, MOTION_QUANTILE)), 2)


def motion_logistic(clean: np.ndarray, jittered: np.ndarray, steps: int = 50) -> tuple[float, float]:
    """P(jitter | signature s) = σ((s − center) / scale) fitted to the signatures of jittered against undistorted
    cells (``motion_evidence``), each class weighing half (Newton's method on the weighted log-likelihood) →
    (center, scale), rounded to 2 decimals. ValueError without jittered cells or when they do not score higher."""
    if not jittered.size or jittered.mean() <= clean.mean():
        raise ValueError("the jittered cells do not show a higher motion-blur signature than undistorted content")
    x = np.concatenate([clean, jittered]).astype(np.float64)
    y = np.r_[np.zeros(clean.size), np.ones(jittered.size)]
    weight = np.where(y > 0, 0.5 / jittered.size, 0.5 / clean.size)
    a = np.stack([x, np.ones_like(x)], axis=1)  # logit = a @ (slope, intercept)
    beta = np.zeros(2)
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(a @ beta)))
        gradient = a.T @ (weight * (y - p))
        hessian = (a * (weight * p * (1 - p))[:, None]).T @ a
        beta += np.linalg.solve(hessian, gradient)
    slope, intercept = beta
    if not np.isfinite(beta).all() or slope <= 0:
        raise ValueError(f"the logistic fit of the motion-blur signature did not converge (slope {slope:g})")
    return round(float(-intercept / slope), 2), round(float(1.0 / slope), 2)


def contrast_evidence(train: Path, config: QGroundConfig, limit: int = MOTION_IMAGES) -> np.ndarray:
    """For every low-light region among the first ``limit`` images of a ``synth`` split: its log contrast
    (``qground.detail.region_contrast`` of ``log_contrast`` on the model input's content grid, as the gate reads it)
    → (regions,). ValueError without low-light regions."""
    processor = QGroundProcessor(None, config)
    levels = []
    for path in sorted((train / "images").glob("*.png"))[:limit]:
        rgb = np.asarray(load_image(path))
        mask = load_gt(train, path.stem, rgb.shape[:2]).get("low light")
        if mask is None:
            continue
        meta = ImageMeta(original_size=rgb.shape[:2], resized_size=processor.content_size(rgb.shape[:2]))
        h, w = meta.resized_size
        region = processor.preprocess_mask(mask, meta)[:h, :w] > 0
        level = region_contrast(log_contrast(rgb, (h, w)), region)
        if level is not None:
            levels.append(level)
    if not levels:
        raise ValueError(f"no low-light regions in {train}/images to read the log contrast from")
    return np.asarray(levels)


def contrast_reference(regions: np.ndarray) -> float:
    """The low-light gate: the ``CONTRAST_QUANTILE`` quantile of low-light regions' log contrast
    (``contrast_evidence``)."""
    return round(float(np.quantile(regions, CONTRAST_QUANTILE)), 2)


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
        "--weights",
        default=",".join(f"{w:g}" for w in DEFAULT_WEIGHTS),
        help="mask weights to try (0–1): the readout's, then the motion-blur signature's in jitter masks",
    )
    parser.add_argument(
        "--radii",
        default=",".join(f"{r:g}" for r in DEFAULT_RADII),
        help="mask refinement radii to try, in model-input pixels (0: off)",
    )
    parser.add_argument(
        "--train",
        type=Path,
        help="training folder (synth --split train): the jitter gate and P(jitter | signature), models with "
        "motion_signature; the low-light gate, models with low_light_contrast",
    )
    parser.add_argument("--limit", type=int, help="at most N validation images")
    args = parser.parse_args(argv)
    config = QGroundConfig.load(args.model)
    if not config.readout:
        print(f"error: {args.model} has no distortion readout, so strictness does not apply", file=sys.stderr)
        return 2
    if (config.motion_signature or config.low_light_contrast) and args.train is None:
        print(
            f"error: {args.model} reads a motion-blur signature or log contrast; --train is needed for its gates",
            file=sys.stderr,
        )
        return 2
    grid, weights, radii = _floats(args.grid), _floats(args.weights), _floats(args.radii)
    engine = load_engine(str(args.model))
    # the decoder alone, no jitter gate, no signature in the jitter masks, one view and no refinement first
    engine.reconfigure(
        readout_mask_weight=0.0,
        jitter_min_motion_signature=0.0,
        jitter_signature_weight=0.0,
        low_light_min_log_contrast=0.0,
        flip_average=False,
        mask_refine_radius=0.0,
    )
    summaries = sweep(engine, args.data, grid, args.limit)
    best = choose(summaries)
    blends = config_sweep(engine, args.data, "readout_mask_weight", weights, best, args.limit)
    weight = choose(blends)
    engine.reconfigure(readout_mask_weight=weight)
    record = {
        "data": str(args.data),
        "criterion": "mIoU",
        "chosen": best,
        "sweep": {f"{s:g}": summaries[s] for s in grid},
        "readout_mask_weight": {"chosen": weight, "sweep": {f"{w:g}": blends[w] for w in weights}},
    }
    chosen = {"default_strictness": best, "readout_mask_weight": weight}
    if config.motion_signature:
        reference = {"train": str(args.train), "images": MOTION_IMAGES, "cell": MOTION_CELL}
        clean, jittered = motion_evidence(args.train)
        latest = blends[weight]  # the model as it stands: no gate, no signature in the masks
        gate = motion_reference(clean) if best else 0.0  # the gate acts at strictness > 0 only
        if gate:
            gates = {0.0: latest}
            gates |= config_sweep(engine, args.data, "jitter_min_motion_signature", (gate,), best, args.limit)
            latest = gates[gate]
            record["jitter_min_motion_signature"] = {
                "chosen": gate,
                "reference": reference | {"quantile": MOTION_QUANTILE},
                "sweep": {f"{m:g}": gates[m] for m in gates},
            }
        chosen["jitter_min_motion_signature"] = gate
        try:
            center, scale = motion_logistic(clean, jittered)
        except ValueError as err:  # e.g. a toy training split without jitter on textured content
            print(f"jitter_signature_weight stays 0: {err}", flush=True)
            record["jitter_signature_weight"] = {"chosen": 0.0, "reference": reference, "not fitted": str(err)}
            chosen["jitter_signature_weight"] = 0.0
        else:
            engine.reconfigure(jitter_signature_center=center, jitter_signature_scale=scale)
            motion = {0.0: latest} | config_sweep(
                engine, args.data, "jitter_signature_weight", [w for w in weights if w], best, args.limit
            )
            record["jitter_signature_weight"] = {
                "chosen": choose(motion),
                "center": center,
                "scale": scale,
                "reference": reference,
                "sweep": {f"{w:g}": motion[w] for w in motion},
            }
            chosen |= {
                "jitter_signature_weight": choose(motion),
                "jitter_signature_center": center,
                "jitter_signature_scale": scale,
            }
    if config.low_light_contrast:
        try:
            levels = contrast_evidence(args.train, config)
        except ValueError as err:  # e.g. a toy training split without low light
            print(f"low_light_min_log_contrast stays 0: {err}", flush=True)
            levels = np.empty(0)
        gate = contrast_reference(levels) if best and levels.size else 0.0  # the gate acts at strictness > 0 only
        if gate:
            engine.reconfigure(**chosen)
            gates = config_sweep(engine, args.data, "low_light_min_log_contrast", (0.0, gate), best, args.limit)
            record["low_light_min_log_contrast"] = {
                "chosen": gate,
                "reference": {
                    "train": str(args.train),
                    "images": MOTION_IMAGES,
                    "regions": len(levels),
                    "quantile": CONTRAST_QUANTILE,
                },
                "sweep": {f"{m:g}": gates[m] for m in gates},
            }
        chosen["low_light_min_log_contrast"] = gate
    views = {}
    for flip in (False, True):  # the model as chosen so far, then also reading each image mirrored
        engine.reconfigure(**chosen, flip_average=flip)
        views[flip] = _summary(engine, args.data, best, args.limit, f"strictness {best:g}, flip_average {flip}")
    chosen["flip_average"] = choose(views)
    record["flip_average"] = {"chosen": chosen["flip_average"], "sweep": {str(f).lower(): views[f] for f in views}}
    engine.reconfigure(**chosen)
    refined = {0.0: views[chosen["flip_average"]]}
    refined |= config_sweep(engine, args.data, "mask_refine_radius", [r for r in radii if r], best, args.limit)
    chosen["mask_refine_radius"] = choose(refined)
    record["mask_refine_radius"] = {
        "chosen": chosen["mask_refine_radius"],
        "eps": config.mask_refine_eps,
        "sweep": {f"{r:g}": refined[r] for r in refined},
    }
    dataclasses.replace(config, **chosen).save(args.model)
    (args.model / CALIBRATION_NAME).write_text(json.dumps(record, indent=2) + "\n")
    summary = ", ".join(f"{k} {v}" if isinstance(v, bool) else f"{k} {v:g}" for k, v in chosen.items())
    print(f"{summary} written to {args.model}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
