"""Choose a model's default detection strictness and mask blend on validation photos, which it was neither trained on
nor is evaluated on (``training.data.synth --split val``).

Grounds every validation image at each strictness of the grid (masks from the pixel decoder alone) and keeps the one
with the highest mIoU (the lower one on a tie); then, at that strictness, each readout mask weight of its grid
(``QGroundModel.blend_readout``) and keeps the best the same way. Prints the tables and writes both into the
checkpoint's ``qground_config.json`` (``default_strictness``, the value the app, the CLI and ``eval`` start from, and
``readout_mask_weight``); the sweeps are kept beside it in ``calibration.json``. The held-out evaluation photos play
no part in the choice.

``python -m training.calibrate --model runs/nano/stage3/final --data runs/nano/data/val [--grid 0,1,2,3,4,5,6]
[--weights 0,0.25,0.5,0.75,1]``
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from qground.config import QGroundConfig
from qground.evaluate import evaluate
from qground.inference import GenerationSettings, QGroundEngine
from qground.service import load_engine

DEFAULT_GRID = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0)
DEFAULT_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
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


def weight_sweep(
    engine: QGroundEngine, data: Path, weights: Sequence[float], strictness: float, limit: int | None = None
) -> dict[float, dict]:
    """Readout mask weight → grounding summary on ``data`` at ``strictness``; leaves the engine's model at the last
    weight."""
    out = {}
    for w in weights:
        engine.model.config = dataclasses.replace(engine.model.config, readout_mask_weight=w)
        out[w] = _summary(engine, data, strictness, limit, f"strictness {strictness:g}, mask weight {w:g}")
    return out


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
    parser.add_argument("--limit", type=int, help="at most N validation images")
    args = parser.parse_args(argv)
    config = QGroundConfig.load(args.model)
    if not config.readout:
        print(f"error: {args.model} has no distortion readout, so strictness does not apply", file=sys.stderr)
        return 2
    grid, weights = _floats(args.grid), _floats(args.weights)
    engine = load_engine(str(args.model))
    engine.model.config = dataclasses.replace(engine.model.config, readout_mask_weight=0.0)  # the decoder alone first
    summaries = sweep(engine, args.data, grid, args.limit)
    best = choose(summaries)
    blends = weight_sweep(engine, args.data, weights, best, args.limit)
    weight = choose(blends)
    dataclasses.replace(config, default_strictness=best, readout_mask_weight=weight).save(args.model)
    record = {
        "data": str(args.data),
        "criterion": "mIoU",
        "chosen": best,
        "sweep": {f"{s:g}": summaries[s] for s in grid},
        "readout_mask_weight": {"chosen": weight, "sweep": {f"{w:g}": blends[w] for w in weights}},
    }
    (args.model / CALIBRATION_NAME).write_text(json.dumps(record, indent=2) + "\n")
    print(f"default_strictness {best:g}, readout_mask_weight {weight:g} written to {args.model}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
