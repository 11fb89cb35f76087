"""Choose a model's default detection strictness and mask blend on validation photos, which it was neither trained on
nor is evaluated on (``training.data.synth --split val``).

Grounds every validation image at each strictness of the grid (masks from the pixel decoder alone) and keeps the one
with the best score (of those within noise of it, the cleaner one; then the lower one); then, at that strictness, each
readout mask weight of its grid (``QGroundModel.blend_readout``) and keeps the best the same way. With a training split
(``--train``) the jitter gate ``jitter_min_motion_signature`` is not fitted to the validation photos but read off the
training photos: the 75th percentile of the motion-blur signature over their undistorted content (``motion_reference``),
so a region is called jitter only if it looks more motion-blurred than most clean content; validation mIoU with and
without it is recorded.
With it too, P(jitter | signature) is fitted on the training photos too (``motion_logistic``: jittered
against undistorted cells), and the weight of that posterior in jitter masks (``QGroundModel.blend_motion``) is chosen
on the validation photos from the mask-weight grid and kept, as a gate is, only when it raises the score by
``GATE_MIN_GAIN``: it costs the motion-blur signature map (about 0.3 s at 12 MP).
And the low-light gate ``low_light_min_log_contrast`` is read off the training
photos as well: the 10th percentile of the log contrast of their low-light regions (``contrast_reference``), so a
region is called low light only if it is at least as steep in the log domain as 90 % of the training photos' low
light; validation mIoU with and without it is recorded (the validation photos hold almost no well-exposed shadow, the
false alarm it is for, so they show its cost, not its use).
Then, with everything else chosen, whether each image is also read mirrored (``flip_average``, test-time averaging of
the presence logits, coverage and masks over both views) is chosen on the validation photos the same way; last, the
radius of the guided filter that lays each mask's edges onto the photo's own (``mask_refine_radius``, qground.refine;
0 = off) from its grid.
Whether overexposure needs a clipped white pixel (``overexposure_needs_clipping``) is chosen on validation right after
the strictness. Every choice maximizes validation mIoU less the clean rate's shortfall below 0.9 (``score``; of the
values within 0.005 of the best, the one with the highest clean rate), and a gate read off the training photos is
kept only when it raises that score by ``GATE_MIN_GAIN`` (0.005): the validation split holds photo sources and
distortion families that training never saw, so a gate survives only if it generalizes (and a smaller gain is noise).
Decoding is held to the answer grammar, naming the classes the readout finds (``constrained_answers``,
``answers_follow_readout``).
Prints the tables and writes the choices, and the sweeps under ``calibration``, as the checkpoint's inference policy
(``inference_policy.json``, ``qground.policy``) — that file and nothing else. The held-out evaluation photos play no
part in the choice.

``python -m training.calibrate --model runs/nano/stage3/final --data runs/nano/data/val [--train runs/nano/data/train]
[--grid 0,1,2,3,4,5,6] [--weights 0,0.25,0.5,0.75,1] [--radii 0,2,4,6,8]``
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from qground.checkpoint import load_model
from qground.config import QGroundConfig
from qground.detail import log_contrast, motion_signature, region_contrast
from qground.evaluate import evaluate, load_gt
from qground.imageio import load_image
from qground.inference import GenerationSettings, QGroundEngine
from qground.policy import InferencePolicy
from qground.processor import ImageMeta, QGroundProcessor

DEFAULT_GRID = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0)
DEFAULT_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
DEFAULT_RADII = (0.0, 2.0, 4.0, 6.0, 8.0)
MOTION_QUANTILE, MOTION_CELL, MOTION_IMAGES = 0.75, 16, 600
CONTRAST_QUANTILE = 0.1


def _summary(engine: QGroundEngine, data: Path, strictness: float, limit: int | None, label: str) -> dict:
    """The model's grounding summary on ``data`` (``GroundingMetrics.summary()``: mIoU, clean rate, …), printed."""
    settings = GenerationSettings(strictness=strictness)
    report = evaluate(engine, data, ("ground",), limit, progress=False, settings=settings, baseline=False)
    summary = report["ground"]["methods"]["model"]
    cells = ", ".join(f"{k} {'–' if summary[k] is None else f'{summary[k]:.3f}'}" for k in ("mIoU", "clean_rate"))
    print(f"{label}: {cells}", flush=True)
    return summary


def sweep(engine: QGroundEngine, data: Path, grid: Sequence[float], limit: int | None = None) -> dict[float, dict]:
    """Strictness → grounding summary on ``data``, with the model's current mask weight."""
    return {s: _summary(engine, data, s, limit, f"strictness {s:g}") for s in grid}


def policy_sweep(
    engine: QGroundEngine, data: Path, field: str, values: Sequence, strictness: float, limit: int | None = None
) -> dict:
    """Value of the policy ``field`` → grounding summary on ``data`` at ``strictness``, each on the engine's policy
    with that one value changed; the engine's policy is left as it was."""
    base, out = engine.policy, {}
    try:
        for v in values:
            engine.set_policy(base.replace(**{field: v}))
            out[v] = _summary(engine, data, strictness, limit, f"strictness {strictness:g}, {field} {v}")
    finally:
        engine.set_policy(base)
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


CLEAN_TARGET = 0.9  # share of clean validation photos that should get no mask
GATE_MIN_GAIN = 0.005  # validation score a gate must add to be kept (about one image's IoU in 120)
# Policy fields kept only when they beat "off" by GATE_MIN_GAIN (``choose_gate``): the gates read off the training
# photos, and the jitter posterior's blend, which costs the motion-blur signature map; every other field by ``choose``.
GATED_FIELDS = frozenset({"jitter_min_motion_signature", "low_light_min_log_contrast", "jitter_signature_weight"})


def _clean(summary: dict) -> float:
    return 1.0 if summary.get("clean_rate") is None else summary["clean_rate"]


def score(summary: dict) -> float:
    """The criterion: validation mIoU, less the shortfall of the clean rate below ``CLEAN_TARGET`` (a false alarm on
    a clean photo costs as much as a missed distortion); undefined values count as 0 (mIoU) and 1 (clean rate)."""
    return (summary["mIoU"] or 0.0) - max(0.0, CLEAN_TARGET - _clean(summary))


def choose(summaries: dict) -> float:
    """Among the keys whose ``score`` is within ``GATE_MIN_GAIN`` of the best (a smaller difference is noise), the one
    with the highest clean rate (the criterion does not see it above ``CLEAN_TARGET``, a user sees every false alarm),
    then the highest score, then the lowest key."""
    best = max(score(v) for v in summaries.values())
    tied = [s for s in summaries if score(summaries[s]) > best - GATE_MIN_GAIN]
    return min(tied, key=lambda s: (-_clean(summaries[s]), -score(summaries[s]), s))


def choose_gate(summaries: dict) -> float:
    """A gate's threshold (key) or 0 (off): the gate is kept only when it raises the ``score`` by ``GATE_MIN_GAIN``
    or more (a smaller gain on the validation images is noise, and a gate is one more moving part)."""
    best = choose(summaries)
    return best if best and score(summaries[best]) - score(summaries[0.0]) >= GATE_MIN_GAIN else 0.0


def _floats(text: str) -> list[float]:
    return sorted({float(v) for v in text.split(",")})


class Calibration:
    """The choices made so far: ``policy`` (the engine runs by it), ``record`` (sweeps, references) and ``latest``
    (the validation summary of the policy as it stands)."""

    def __init__(self, engine: QGroundEngine, data: Path, limit: int | None) -> None:
        self.engine, self.data, self.limit = engine, data, limit
        self.record: dict = {"data": str(data), "criterion": f"mIoU - max(0, {CLEAN_TARGET} - clean rate)"}
        self.latest: dict = {}

    @property
    def policy(self) -> InferencePolicy:
        return self.engine.policy

    def keep(self, field: str, sweeps: dict, extra: dict | None = None):
        """Adopt the value of ``sweeps`` (value → summary) that ``field``'s rule picks (``choose_gate`` for
        ``GATED_FIELDS``, else ``choose``); record them."""
        chosen = (choose_gate if field in GATED_FIELDS else choose)(sweeps)
        self.engine.set_policy(self.policy.replace(**{field: chosen}))
        self.latest = sweeps[chosen]
        key = (lambda v: str(v).lower()) if isinstance(chosen, bool) else (lambda v: f"{v:g}")
        self.record[field] = {"chosen": chosen, **(extra or {}), "sweep": {key(v): sweeps[v] for v in sweeps}}
        return chosen

    def sweep(self, field: str, values: Sequence) -> dict:
        """``policy_sweep`` at the chosen strictness; the current policy's summary stands for its own value."""
        current = {getattr(self.policy, field): self.latest} if self.latest else {}
        todo = [v for v in values if v not in current]
        strictness = self.policy.default_strictness
        return current | policy_sweep(self.engine, self.data, field, todo, strictness, self.limit)


def choose_strictness(cal: Calibration, grid: Sequence[float]) -> None:
    """The strictness with the best validation mIoU (masks from the pixel decoder alone)."""
    cal.keep("default_strictness", sweep(cal.engine, cal.data, grid, cal.limit))


def choose_jitter(cal: Calibration, train: Path, weights: Sequence[float]) -> None:
    """The jitter gate read off the training photos (at strictness > 0 only), then P(jitter | signature) fitted there
    and its weight in jitter masks chosen on validation, kept only for a real gain (``choose_gate``: the signature it
    needs costs time)."""
    reference = {"train": str(train), "images": MOTION_IMAGES, "cell": MOTION_CELL}
    clean, jittered = motion_evidence(train)
    gate = motion_reference(clean) if cal.policy.default_strictness else 0.0
    if gate:  # kept only if validation, on photo sources and distortion families never trained on, gains from it
        extra = {"reference": reference | {"quantile": MOTION_QUANTILE}}
        sweeps = cal.sweep("jitter_min_motion_signature", (0.0, gate))
        cal.keep("jitter_min_motion_signature", sweeps, extra)
    try:
        center, scale = motion_logistic(clean, jittered)
    except ValueError as err:  # e.g. a toy training split without jitter on textured content
        print(f"jitter_signature_weight stays 0: {err}", flush=True)
        cal.record["jitter_signature_weight"] = {"chosen": 0.0, "reference": reference, "not fitted": str(err)}
        return
    cal.engine.set_policy(cal.policy.replace(jitter_signature_center=center, jitter_signature_scale=scale))
    extra = {"center": center, "scale": scale, "reference": reference}
    cal.keep("jitter_signature_weight", cal.sweep("jitter_signature_weight", weights), extra)


def choose_low_light(cal: Calibration, train: Path) -> None:
    """The low-light gate read off the training photos' low-light regions (at strictness > 0 only); validation mIoU
    with and without it is recorded."""
    try:
        levels = contrast_evidence(train, cal.engine.config)
    except ValueError as err:  # e.g. a toy training split without low light
        print(f"low_light_min_log_contrast stays 0: {err}", flush=True)
        return
    gate = contrast_reference(levels) if cal.policy.default_strictness else 0.0
    if not gate:
        return
    reference = {"train": str(train), "images": MOTION_IMAGES, "regions": len(levels), "quantile": CONTRAST_QUANTILE}
    sweeps = cal.sweep("low_light_min_log_contrast", (0.0, gate))  # kept only if validation gains from it
    cal.keep("low_light_min_log_contrast", sweeps, {"reference": reference})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.calibrate", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="checkpoint folder (its inference policy is written)")
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
        help="training folder (synth --split train): the jitter gate, P(jitter | signature) and the low-light gate "
        "are read off it (without it they stay off)",
    )
    parser.add_argument("--limit", type=int, help="at most N validation images")
    args = parser.parse_args(argv)
    if not QGroundConfig.load(args.model).readout:
        print(f"error: {args.model} has no distortion readout, so strictness does not apply", file=sys.stderr)
        return 2
    grid, weights, radii = _floats(args.grid), _floats(args.weights), _floats(args.radii)
    model, tokenizer = load_model(args.model)
    images = len(list((args.data / "images").glob("*")))  # each read once, then from memory in every later sweep
    processor = QGroundProcessor(tokenizer, model.config, cache_images=2 * images)
    engine = QGroundEngine(model, processor, name=str(args.model))
    # decoding held to the answer grammar, answers naming what the readout finds; the decoder alone, one view
    engine.set_policy(InferencePolicy(constrained_answers=True, answers_follow_readout=True))
    cal = Calibration(engine, args.data, args.limit)
    choose_strictness(cal, grid)
    cal.keep("overexposure_needs_clipping", cal.sweep("overexposure_needs_clipping", (False, True)))
    cal.keep("readout_mask_weight", cal.sweep("readout_mask_weight", weights))
    if args.train is not None:
        choose_jitter(cal, args.train, weights)
        choose_low_light(cal, args.train)
    cal.keep("flip_average", cal.sweep("flip_average", (False, True)))
    cal.keep("mask_refine_radius", cal.sweep("mask_refine_radius", radii), {"eps": cal.policy.mask_refine_eps})
    cal.policy.replace(calibration=cal.record).save(args.model)
    fields = [k for k in cal.record if k not in ("data", "criterion")]
    print(", ".join(f"{k} {getattr(cal.policy, k)}" for k in fields) + f" written to {args.model}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
