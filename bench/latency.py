"""End-to-end ``ground`` latency per image (model load excluded): image file → answer + masks at original size.

Runs the engine on the held-out synthetic images (or any folder of images) and prints the median and p90 of the total
time and its stages (preprocess incl. native-resolution detail channels, generation, masks).

Run: ``python -m bench.latency [--model qground-nano] [--data runs/nano/data/eval/images] [--limit 50]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from qground.service import load_engine


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="qground-nano")
    parser.add_argument("--data", type=Path, default=Path("runs/nano/data/eval/images"))
    parser.add_argument("--limit", type=int, default=50)
    args = parser.parse_args(argv)
    engine = load_engine(args.model)
    files = sorted(args.data.glob("*.png"))[: args.limit]
    if not files:
        raise SystemExit(f"no images in {args.data}: run `python -m training.nano` first or pass --data")
    engine.ground(files[0])  # warm-up
    totals, stages = [], {"preprocess": [], "generate": [], "masks": []}
    for f in files:
        t0 = time.perf_counter()
        result = engine.ground(f)
        totals.append(time.perf_counter() - t0)
        for k in stages:
            stages[k].append(result.timings[k])
    print(f"{args.model} on {len(files)} images from {args.data} (torch threads {torch.get_num_threads()})")
    print(
        f"ground latency: median {statistics.median(totals) * 1000:.0f} ms, p90 "
        f"{np.percentile(totals, 90) * 1000:.0f} ms   (target: median <= 1000 ms)"
    )
    for k, v in stages.items():
        print(f"  {k:<11} median {statistics.median(v) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
