"""Pretrain a small vision tower where no CLIP is available (qground-nano), then it is frozen like CLIP.

Objective: dense distortion recognition, read from the last hidden state by a ``DistortionReadout``
(``qground.modeling.readout``). For every patch it predicts the fraction of each of its ``sub × sub`` sub-cells
covered by each distortion class (soft BCE over the image content, padding ignored); at the CLS position a whole-image
summary per class: presence (BCE), the covered fraction of the content and severity × fraction (both squared error on
the sigmoid; severity 1–3 from the data's ``meta.json``, scaled to 1/3–1) — what "is there noise?" and "which image is
noisier?" ask. The tower thus learns the evidence φv and the pixel decoder read. A model with ``config.readout`` keeps
the trained readout (frozen, it feeds φv) and records how sure it is per class on the training images
(``config.readout_confidence``, which scales detection strictness); otherwise the readout is thrown away.

``python -m training.pretrain_vision --model runs/nano/init --data runs/nano/data/train --out runs/nano/vision``
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from qground.checkpoint import load_model, save_checkpoint
from qground.config import READOUT_SUB
from qground.imageio import load_image_after_jpeg
from qground.modeling import DistortionReadout
from qground.processor import QGroundProcessor
from qground.taxonomy import CLASS_NAMES
from training.data.dataset import load_mask
from training.data.readers import read_qground100k


def dense_targets(processor: QGroundProcessor, sample, meta, sub: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(C·sub², g, g) class-coverage targets and a (g, g) content weight for one grounding sample."""
    cfg = processor.config
    cell = cfg.vision.patch_size // sub
    size = cfg.image_size
    target = torch.zeros(len(CLASS_NAMES), size, size)
    for name, mask in zip(sample.mask_labels, sample.masks, strict=True):
        target[CLASS_NAMES.index(name)] = processor.preprocess_mask(load_mask(mask), meta)
    frac = F.avg_pool2d(target[None], cell)[0]  # (C, g·sub, g·sub)
    g = cfg.grid
    frac = frac.view(len(CLASS_NAMES), g, sub, g, sub).permute(0, 2, 4, 1, 3).reshape(-1, g, g)
    h, w = meta.resized_size
    valid = torch.zeros(size, size)
    valid[:h, :w] = 1
    return frac, F.avg_pool2d(valid[None], cfg.vision.patch_size)[0]


def global_targets(frac: torch.Tensor, weight: torch.Tensor, severity: dict[str, int]) -> torch.Tensor:
    """(3C,) whole-image targets from ``dense_targets``' outputs: presence, covered fraction, severity/3 × fraction."""
    n = len(CLASS_NAMES)
    area = (frac.view(n, -1, *weight.shape).mean(1) * weight).sum((1, 2)) / weight.sum()  # (C,)
    sev = torch.tensor([severity.get(name, 0) / 3 for name in CLASS_NAMES])
    return torch.cat([(area > 0).float(), area, sev * area])


def build_tensors(
    processor: QGroundProcessor,
    data_dir: Path,
    sub: int,
    jpeg: int | None = None,
):
    """Every training image preprocessed once: inputs (N, C, S, S), dense targets (N, K·sub², g, g), content weights
    (N, g, g) and whole-image targets (N, 3·classes). ``jpeg``: each image first goes through one JPEG save at that
    quality (4:2:0; ``training.probe_readout``)."""
    cfg = processor.config
    samples, report = read_qground100k(data_dir / "qground.json", data_dir, data_dir)
    meta_file = data_dir / "meta.json"
    severity = (
        {m["id"]: m["severity"] for m in json.loads(meta_file.read_text())["images"]} if meta_file.exists() else {}
    )
    c, size = cfg.vision.num_channels, cfg.image_size
    x = torch.empty(len(samples), c, size, size)  # filled in place: one copy of the largest tensor (0.7 MB an image)
    ys, ws, gs = [], [], []
    for i, s in enumerate(tqdm(samples, desc="preprocess", dynamic_ncols=True)):
        pixels, meta = processor.preprocess_image(load_image_after_jpeg(s.images[0], jpeg))
        y, w = dense_targets(processor, s, meta, sub)
        x[i] = pixels[:c]  # the tower's channels
        ys.append(y)
        ws.append(w)
        gs.append(global_targets(y, w, severity.get(s.id, {name: 2 for name in s.mask_labels})))
    return x, torch.stack(ys), torch.stack(ws), torch.stack(gs)


def pretrain(model, processor, data_dir: Path, epochs: int, batch: int, lr: float, seed: int = 0):
    """Train ``model.vision_tower`` (and ``model.readout``) in place; returns per-epoch mean losses."""
    torch.manual_seed(seed)
    n = len(CLASS_NAMES)
    tower = model.vision_tower
    readout = model.readout or DistortionReadout(model.config.vision.hidden_size, n, READOUT_SUB)
    x, y, w, glob = build_tensors(processor, data_dir, readout.sub)
    params = [*tower.parameters(), *readout.parameters()]
    for p in params:
        p.requires_grad = True
    steps = epochs * (-(-len(x) // batch))
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    tower.train()
    losses = []
    bar = tqdm(total=steps, desc="vision", dynamic_ncols=True)
    for _ in range(epochs):
        order = torch.randperm(len(x))
        total = 0.0
        for i in range(0, len(x), batch):
            idx = order[i : i + batch]
            logits, whole = readout.logits(tower(x[idx]).last_hidden_state)
            loss = (F.binary_cross_entropy_with_logits(logits, y[idx], reduction="none").mean(1) * w[idx]).sum()
            loss = loss / w[idx].sum()
            loss = loss + F.binary_cross_entropy_with_logits(whole[:, :n], glob[idx, :n])
            loss = loss + 4 * F.mse_loss(whole[:, n:].sigmoid(), glob[idx, n:])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
        losses.append(total / len(x))
    bar.close()
    tower.eval()
    readout.eval()
    for p in params:
        p.requires_grad = False
    if model.readout is not None:
        model.config = dataclasses.replace(model.config, readout_confidence=confidence(tower, readout, x, glob[:, :n]))
    return losses


def confidence(tower, readout: DistortionReadout, x: torch.Tensor, present: torch.Tensor) -> tuple[float, ...] | None:
    """Per class, the median whole-image presence logit over the images ``x`` that have it (``present`` (N, classes)
    0/1); None when a class has no such image or its median is not positive (``QGroundConfig.readout_confidence``)."""
    with torch.no_grad():
        logits = torch.cat([readout.logits(tower(x[i : i + 64]).last_hidden_state)[1] for i in range(0, len(x), 64)])
    medians = [logits[present[:, k] > 0.5, k].median() for k in range(present.shape[1]) if (present[:, k] > 0.5).any()]
    if len(medians) < present.shape[1] or min(medians) <= 0:
        return None
    return tuple(round(float(m), 3) for m in medians)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.pretrain_vision", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="checkpoint folder whose vision tower is trained")
    parser.add_argument("--data", required=True, type=Path, help="synthetic data folder (qground.json, images/, gt/)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args(argv)
    model, tokenizer = load_model(args.model, device="cpu", dtype=torch.float32)
    t0 = time.perf_counter()
    processor = QGroundProcessor(tokenizer, model.config)
    losses = pretrain(model, processor, args.data, args.epochs, args.batch, args.lr)
    save_checkpoint(model, tokenizer, args.out)
    print(f"vision pretraining: losses per epoch {np.round(losses, 4).tolist()} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
