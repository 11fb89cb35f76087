"""Probe a pretrained vision tower through its distortion readout alone, before the stages are trained on it.

The tower and readout (``training.pretrain_vision``) read every image of a synthetic data folder; per class: IoU over
the whole set of the readout's coverage above ½ against the true coverage above ½, on the readout's sub-cell grid
(g·sub)² inside the image content, and the presence AUC of the whole-image logit (images with the class against
those without). ``--jpeg Q``: every image first goes through one JPEG save at quality Q (4:2:0), as ``python -m
qground eval --jpeg`` does. Prints one JSON object; the nano experiment records compare towers by its mean IoU.

``python -m training.probe_readout --model runs/nano/vision --data runs/val3 [--jpeg 90]``
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from qground.checkpoint import load_model
from qground.processor import QGroundProcessor
from qground.taxonomy import CLASS_NAMES
from training.pretrain_vision import build_tensors, pool_targets


def auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve of ``scores`` (N,) for the 0/1 ``labels`` (N,) (Mann–Whitney, ties counted half);
    None without both kinds of label."""
    pos, neg = scores[labels > 0.5], scores[labels <= 0.5]
    if not len(pos) or not len(neg):
        return None
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def probe(model, processor: QGroundProcessor, data_dir: Path, jpeg: int | None = None, batch: int = 16) -> dict:
    """``{"iou": {class: IoU}, "auc": {class: AUC or None}, "mean_iou", "mean_auc", "images"}`` for the frozen
    ``model.vision_tower`` and ``model.readout`` on ``data_dir`` (see the module docstring)."""
    if model.readout is None:
        raise ValueError("the probe needs a model with a distortion readout (config.readout)")
    readout, k = model.readout, len(CLASS_NAMES)
    x, masks, sizes, glob = build_tensors(processor, data_dir, jpeg)
    y, w = pool_targets(masks, sizes, processor.config.vision.patch_size, readout.sub)
    dense, whole = [], []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            d, h = readout.logits(model.vision_tower(x[i : i + batch]).last_hidden_state)
            dense.append(d)
            whole.append(h)
    predicted = readout.coverage(torch.cat(dense)) > 0.5  # (N, K, g·sub, g·sub)
    truth = readout.layout(y) > 0.5  # the targets, laid out as the coverage
    inside = F.interpolate(w[:, None], scale_factor=readout.sub, mode="nearest") > 0.5  # (N, 1, g·sub, g·sub)
    inter = (predicted & truth & inside).sum((0, 2, 3))
    union = ((predicted | truth) & inside).sum((0, 2, 3))
    presence = torch.cat(whole)[:, :k].numpy()
    ious = {name: round(float(inter[c] / union[c]), 3) if union[c] else None for c, name in enumerate(CLASS_NAMES)}
    aucs = {name: auc(presence[:, c], glob[:, c].numpy()) for c, name in enumerate(CLASS_NAMES)}
    aucs = {name: None if a is None else round(a, 3) for name, a in aucs.items()}
    known_iou = [v for v in ious.values() if v is not None]
    known_auc = [v for v in aucs.values() if v is not None]
    return {
        "iou": ious,
        "auc": aucs,
        "mean_iou": round(float(np.mean(known_iou)), 3) if known_iou else None,
        "mean_auc": round(float(np.mean(known_auc)), 3) if known_auc else None,
        "images": len(x),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.probe_readout", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="checkpoint folder with a vision tower and its readout")
    parser.add_argument("--data", required=True, type=Path, help="synthetic data folder (qground.json, images/, gt/)")
    parser.add_argument("--jpeg", type=int, default=None, help="one JPEG save at this quality (1–95) first")
    args = parser.parse_args(argv)
    if args.jpeg is not None and not 1 <= args.jpeg <= 95:
        parser.error(f"--jpeg must be 1–95, got {args.jpeg}")
    model, tokenizer = load_model(args.model, device="cpu", dtype=torch.float32)
    result = probe(model, QGroundProcessor(tokenizer, model.config), args.data, args.jpeg)
    print(json.dumps({"model": str(args.model), "data": str(args.data), "jpeg": args.jpeg, **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
