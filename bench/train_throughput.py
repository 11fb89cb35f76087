"""Training-step throughput as model FLOPs utilization (MFU) on this machine.

Measures, in one run: (1) torch fp32 matmul GFLOP/s (2048² GEMMs) — the machine's practical peak; (2) the FLOPs of
one training step (forward + backward, counted by ``torch.utils.flop_counter``) and its median wall time for the tiny
model (and any other registry/config given) on a grounding batch. Prints samples/s and MFU = achieved / peak.

``--quick``: 512² GEMMs, batch 2, 2 timed steps (a few seconds).

Run: ``python -m bench.train_throughput [--model qground-tiny] [--batch 4] [--steps 10] [--quick]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from qground.checkpoint import load_model
from qground.inference import GROUNDING_QUESTION
from qground.processor import QGroundProcessor
from qground.prompts import Turn, grounding_answer
from qground.tokenizer import seg_tokens
from training.stages import set_trainable

KEYS = ("input_ids", "pixel_values", "attention_mask", "labels", "masks", "image_sizes")


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def grounding_batch(processor: QGroundProcessor, batch: int) -> dict:
    rng = np.random.default_rng(0)
    group = seg_tokens(processor.config).group_text()
    samples = []
    for i in range(batch):
        img = (rng.random((96, 128, 3)) * 255).astype(np.uint8)
        mask = np.zeros((96, 128), dtype=bool)
        mask[: 48 + i, :64] = True
        turn = Turn(GROUNDING_QUESTION, grounding_answer(["noise"], group))
        samples.append(processor([Image.fromarray(img)], [turn], masks=[mask]))
    return processor.collate(samples)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="qground-tiny")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="512² GEMMs, batch 2, 2 timed steps")
    args = parser.parse_args(argv)
    gemm = 2048
    if args.quick:
        gemm, args.batch, args.steps = 512, 2, 2
    peak = matmul_gflops(gemm)
    model, tokenizer = load_model(args.model, device="cpu", dtype=torch.float32)
    trainable = set_trainable(model, ["projector", "llm", "seg_head", "pixel_decoder"], model.config.lora)
    processor = QGroundProcessor(tokenizer, model.config)
    batch = {k: v for k, v in grounding_batch(processor, args.batch).items() if k in KEYS}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()

    def step() -> None:
        out = model(**batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()

    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    achieved = flops / med / 1e9
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"machine: fp32 matmul {peak:.1f} GFLOP/s ({gemm}², median), torch threads {torch.get_num_threads()}")
    print(
        f"{args.model}: {n_params:.1f} M params ({len(trainable)} trainable tensors), batch {args.batch}, "
        f"{batch['input_ids'].shape[1]} tokens/sample"
    )
    print(
        f"train step: {flops / 1e9:.2f} GFLOP, median {med * 1000:.0f} ms → {args.batch / med:.1f} samples/s, "
        f"{achieved:.1f} GFLOP/s"
    )
    print(f"MFU = {achieved / peak:.1%}")


if __name__ == "__main__":
    main()
