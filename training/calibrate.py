"""Choose a model's default detection strictness on validation photos, which it was neither trained on nor is
evaluated on (``training.data.synth --split val``).

Grounds every validation image at each strictness of the grid, keeps the one with the highest mIoU (the lower one on a
tie), prints the table and writes it into the checkpoint's ``qground_config.json`` as ``default_strictness``, the value
the app, the CLI and ``eval`` start from; the sweep is kept beside it in ``calibration.json``. The held-out evaluation
photos play no part in the choice.

``python -m training.calibrate --model runs/nano/stage3/final --data runs/nano/data/val [--grid 0,1,2,3,4,5,6]``
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
CALIBRATION_NAME = "calibration.json"


def sweep(engine: QGroundEngine, data: Path, grid: Sequence[float], limit: int | None = None) -> dict[float, dict]:
    """Strictness → the model's grounding summary on ``data`` (``GroundingMetrics.summary()``: mIoU, clean rate, …)."""
    out = {}
    for s in grid:
        report = evaluate(engine, data, ("ground",), limit, progress=False, settings=GenerationSettings(strictness=s))
        out[s] = report["ground"]["methods"]["model"]
        cells = ", ".join(f"{k} {'–' if out[s][k] is None else f'{out[s][k]:.3f}'}" for k in ("mIoU", "clean_rate"))
        print(f"strictness {s:g}: {cells}", flush=True)
    return out


def choose(summaries: dict[float, dict]) -> float:
    """The strictness with the highest mIoU; the lowest such one on a tie (an undefined mIoU counts as 0)."""
    return min(summaries, key=lambda s: (-(summaries[s]["mIoU"] or 0.0), s))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.calibrate", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="checkpoint folder (its config is updated)")
    parser.add_argument("--data", type=Path, required=True, help="validation folder: images/, gt/ (synth --split val)")
    parser.add_argument("--grid", default=",".join(f"{s:g}" for s in DEFAULT_GRID), help="strictness values to try")
    parser.add_argument("--limit", type=int, help="at most N validation images")
    args = parser.parse_args(argv)
    grid = sorted({float(s) for s in args.grid.split(",")})
    config = QGroundConfig.load(args.model)
    if not config.readout:
        print(f"error: {args.model} has no distortion readout, so strictness does not apply", file=sys.stderr)
        return 2
    engine = load_engine(str(args.model))
    summaries = sweep(engine, args.data, grid, args.limit)
    best = choose(summaries)
    dataclasses.replace(config, default_strictness=best).save(args.model)
    sweep_table = {f"{s:g}": summaries[s] for s in grid}
    record = {"data": str(args.data), "criterion": "mIoU", "chosen": best, "sweep": sweep_table}
    (args.model / CALIBRATION_NAME).write_text(json.dumps(record, indent=2) + "\n")
    print(f"default_strictness {best:g} written to {args.model}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
