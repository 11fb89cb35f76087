"""Choose a model's default detection strictness and mask blend on validation photos, which it was neither trained on
nor is evaluated on (``training.data.synth --split val``).

Grounds every validation image at each strictness of the grid (masks from the pixel decoder alone) and keeps the one
with the best score (of those within noise of it, the cleaner one; then the lower one); then, at that strictness,
whether overexposure needs a clipped white pixel (``overexposure_needs_clipping``) and each readout mask weight of its
grid (``QGroundModel.blend_readout``), the same way. Then, with everything else chosen, whether each image is also
read mirrored (``flip_average``, test-time averaging of the presence logits, coverage and masks over both views);
last, the radius of the guided filter that lays each mask's edges onto the photo's own (``mask_refine_radius``,
qground.refine; 0 = off) from its grid.
Every choice maximizes validation mIoU less the clean rate's shortfall below 0.9 (``score``; of the values within
``NOISE`` (0.005) of the best, the one with the highest clean rate): the validation split holds photo sources and
distortion families that training never saw, so a setting is chosen for what generalizes. Region gates read off the
training photos (jitter needing a motion-blur signature, low light needing log contrast) and a jitter mask blend with
that signature were chosen here until no calibration kept any of them (v18, v19, v20); they were removed
(``docs/experiments/2026-12-07-unused-gates-removed.md``).
Decoding is held to the answer grammar, naming the classes the readout finds (``constrained_answers``,
``answers_follow_readout``).
Prints the tables and writes the choices, and the sweeps under ``calibration``, as the checkpoint's inference policy
(``inference_policy.json``, ``qground.policy``) — that file and nothing else. The held-out evaluation photos play no
part in the choice.

``python -m training.calibrate --model runs/nano/stage3/final --data runs/nano/data/val [--grid 0,1,2,3,4,5,6]
[--weights 0,0.25,0.5,0.75,1] [--radii 0,2,4,6,8]``
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from qground.checkpoint import load_model
from qground.config import QGroundConfig
from qground.evaluate import evaluate
from qground.inference import GenerationSettings, QGroundEngine
from qground.policy import InferencePolicy
from qground.processor import QGroundProcessor

DEFAULT_GRID = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0)
DEFAULT_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
DEFAULT_RADII = (0.0, 2.0, 4.0, 6.0, 8.0)


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


CLEAN_TARGET = 0.9  # share of clean validation photos that should get no mask
NOISE = 0.005  # validation score differences smaller than this are noise (about one image's IoU in 120)


def _clean(summary: dict) -> float:
    return 1.0 if summary.get("clean_rate") is None else summary["clean_rate"]


def score(summary: dict) -> float:
    """The criterion: validation mIoU, less the shortfall of the clean rate below ``CLEAN_TARGET`` (a false alarm on
    a clean photo costs as much as a missed distortion); undefined values count as 0 (mIoU) and 1 (clean rate)."""
    return (summary["mIoU"] or 0.0) - max(0.0, CLEAN_TARGET - _clean(summary))


def choose(summaries: dict) -> float:
    """Among the keys whose ``score`` is within ``NOISE`` of the best (a smaller difference is noise), the one
    with the highest clean rate (the criterion does not see it above ``CLEAN_TARGET``, a user sees every false alarm),
    then the highest score, then the lowest key."""
    best = max(score(v) for v in summaries.values())
    tied = [s for s in summaries if score(summaries[s]) > best - NOISE]
    return min(tied, key=lambda s: (-_clean(summaries[s]), -score(summaries[s]), s))


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
        """Adopt the value of ``sweeps`` (value → summary) that ``choose`` picks; record them."""
        chosen = choose(sweeps)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.calibrate", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="checkpoint folder (its inference policy is written)")
    parser.add_argument("--data", type=Path, required=True, help="validation folder: images/, gt/ (synth --split val)")
    parser.add_argument("--grid", default=",".join(f"{s:g}" for s in DEFAULT_GRID), help="strictness values to try")
    parser.add_argument(
        "--weights",
        default=",".join(f"{w:g}" for w in DEFAULT_WEIGHTS),
        help="the readout's mask weights to try (0–1)",
    )
    parser.add_argument(
        "--radii",
        default=",".join(f"{r:g}" for r in DEFAULT_RADII),
        help="mask refinement radii to try, in model-input pixels (0: off)",
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
    cal.keep("flip_average", cal.sweep("flip_average", (False, True)))
    cal.keep("mask_refine_radius", cal.sweep("mask_refine_radius", radii), {"eps": cal.policy.mask_refine_eps})
    cal.policy.replace(calibration=cal.record).save(args.model)
    fields = [k for k in cal.record if k not in ("data", "criterion")]
    print(", ".join(f"{k} {getattr(cal.policy, k)}" for k in fields) + f" written to {args.model}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
