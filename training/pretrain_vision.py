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
from collections.abc import Sequence
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


def pixel_targets(processor: QGroundProcessor, sample, meta) -> torch.Tensor:
    """(C, S, S) bool: each class's mask of one grounding sample in the padded input frame (content at the top left)."""
    size = processor.config.image_size
    target = torch.zeros(len(CLASS_NAMES), size, size, dtype=torch.bool)
    for name, mask in zip(sample.mask_labels, sample.masks, strict=True):
        target[CLASS_NAMES.index(name)] = processor.preprocess_mask(load_mask(mask), meta) > 0.5
    return target


def pool_targets(masks: torch.Tensor, sizes: torch.Tensor, patch: int, sub: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``masks`` (N, C, S, S) (``pixel_targets``) and content ``sizes`` (N, 2) as (h, w) → dense coverage targets
    (N, C·sub², g, g) in the readout's layout (channel ``class·sub² + i·sub + j``: sub-cell row i, column j of every
    patch) and the (N, g, g) share of each patch that is image content."""
    n, c, size, _ = masks.shape
    g = size // patch
    frac = F.avg_pool2d(masks.float(), patch // sub)  # (N, C, g·sub, g·sub)
    frac = frac.view(n, c, g, sub, g, sub).permute(0, 1, 3, 5, 2, 4).reshape(n, -1, g, g)
    rows = torch.arange(size)
    valid = (rows[None, :, None] < sizes[:, 0, None, None]) & (rows[None, None, :] < sizes[:, 1, None, None])
    return frac, F.avg_pool2d(valid[:, None].float(), patch)[:, 0]


def batch_globals(frac: torch.Tensor, weight: torch.Tensor, severity: torch.Tensor) -> torch.Tensor:
    """Whole-image targets of a batch from ``pool_targets``' outputs (B, C·sub², g, g) and (B, g, g), ``severity``
    (B, C) the images' severity/3 per class → (B, 3C): presence, covered fraction, severity/3 × fraction."""
    n = len(CLASS_NAMES)
    b, _, g, _ = frac.shape
    area = (frac.view(b, n, -1, g, g).mean(2) * weight[:, None]).sum((2, 3)) / weight.sum((1, 2))[:, None]
    return torch.cat([(area > 0).float(), area, severity * area], dim=1)


def global_targets(frac: torch.Tensor, weight: torch.Tensor, severity: dict[str, int]) -> torch.Tensor:
    """(3C,) whole-image targets of one image from ``pool_targets``' outputs (C·sub², g, g) and (g, g): presence,
    covered fraction, severity/3 × fraction."""
    sev = torch.tensor([[severity.get(name, 0) / 3 for name in CLASS_NAMES]])
    return batch_globals(frac[None], weight[None], sev)[0]


def dihedral(t: torch.Tensor, h: int, w: int, k: int) -> torch.Tensor:
    """``t`` (..., S, S) whose content fills rows :h, columns :w → that content under symmetry ``k`` of the square
    (0–7; bit 0 mirrors left–right, bit 1 top–bottom, bit 2 transposes), again at the top left, zeros elsewhere.
    The detail channels (``qground.detail``) are invariant scalars of the local image (energies, coherence, the spread
    over four directions that map onto themselves), so transforming the channel maps equals computing them on the
    transformed photo."""
    content = t[..., :h, :w]
    if k & 1:
        content = content.flip(-1)
    if k & 2:
        content = content.flip(-2)
    if k & 4:
        content = content.transpose(-1, -2)
    out = torch.zeros_like(t)
    out[..., : content.shape[-2], : content.shape[-1]] = content
    return out


CROP_MIN = 0.6  # a crop keeps at least this share of the photo's height and of its width


def crop(t: torch.Tensor, top: int, left: int, h: int, w: int) -> torch.Tensor:
    """``t`` (..., S, S) → its window rows ``top:top+h``, columns ``left:left+w`` moved to the top left, zeros
    elsewhere: the photo cropped at its own scale, nothing resampled, so the detail channels stay what they would be
    computed on the crop (away from its border)."""
    out = torch.zeros_like(t)
    out[..., :h, :w] = t[..., top : top + h, left : left + w]
    return out


def _severities(data_dir: Path) -> dict[str, dict[str, int]]:
    """A synthetic data folder's severity per image id and class (its ``meta.json``; empty without one)."""
    meta_file = data_dir / "meta.json"
    return {m["id"]: m["severity"] for m in json.loads(meta_file.read_text())["images"]} if meta_file.exists() else {}


def build_tensors(
    processor: QGroundProcessor,
    data_dirs: str | Path | Sequence[str | Path],
    jpeg: int | None = None,
):
    """Every training image of one or more data folders (in order) preprocessed once: inputs (N, C, S, S), class masks
    (N, classes, S, S) bool, content sizes (N, 2) as (h, w), and whole-image targets (N, 3·classes). ``jpeg``: each
    image first goes through one JPEG save at that quality (4:2:0; ``training.probe_readout``)."""
    cfg = processor.config
    samples, severity = [], []  # severities per sample: image ids repeat across folders
    for data_dir in map(Path, [data_dirs] if isinstance(data_dirs, (str, Path)) else data_dirs):
        read, _ = read_qground100k(data_dir / "qground.json", data_dir, data_dir)
        known = _severities(data_dir)
        samples += read
        severity += [known.get(s.id, {name: 2 for name in s.mask_labels}) for s in read]
    c, size = cfg.vision.num_channels, cfg.image_size
    x = torch.empty(len(samples), c, size, size)  # filled in place: one copy of the largest tensor (0.7 MB an image)
    masks = torch.empty(len(samples), len(CLASS_NAMES), size, size, dtype=torch.bool)
    sizes = torch.empty(len(samples), 2, dtype=torch.long)
    gs = []
    for i, s in enumerate(tqdm(samples, desc="preprocess", dynamic_ncols=True)):
        pixels, meta = processor.preprocess_image(load_image_after_jpeg(s.images[0], jpeg))
        x[i] = pixels[:c]  # the tower's channels
        masks[i] = pixel_targets(processor, s, meta)
        sizes[i] = torch.tensor(meta.resized_size)
        y, w = pool_targets(masks[i : i + 1], sizes[i : i + 1], cfg.vision.patch_size, READOUT_SUB)
        gs.append(global_targets(y[0], w[0], severity[i]))
    return x, masks, sizes, torch.stack(gs)


def pretrain(
    model,
    processor,
    data_dirs: str | Path | Sequence[str | Path],
    epochs: int,
    batch: int,
    lr: float,
    symmetries: bool = False,
    seed: int = 0,
    crops: float = 0.0,
):
    """Train ``model.vision_tower`` (and ``model.readout``) in place; returns per-epoch mean losses. ``symmetries``:
    every time an image is drawn it is shown under one of the square's 8 symmetries at random (``dihedral``), so the
    tower sees each photo's textures and each distortion in 8 orientations instead of memorizing one. ``crops`` p
    (0–1): each drawn image is, with probability p, cropped at its own scale (``crop``) to a random window of 60–100 %
    of its height and of its width, its targets taken from the cropped masks, so a photo is never framed the same way
    twice."""
    if not 0.0 <= crops <= 1.0:  # also refuses NaN
        raise ValueError(f"crops is the share of drawn images cropped, between 0 and 1, got {crops}")
    torch.manual_seed(seed)
    n = len(CLASS_NAMES)
    tower = model.vision_tower
    readout = model.readout or DistortionReadout(model.config.vision.hidden_size, n, READOUT_SUB)
    x, masks, sizes, glob = build_tensors(processor, data_dirs)
    severity = torch.where(glob[:, n : 2 * n] > 0, glob[:, 2 * n :] / glob[:, n : 2 * n].clamp_min(1e-12), 0.0)
    patch = model.config.vision.patch_size
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
            xb, mb, sb = x[idx], masks[idx], sizes[idx]
            for j in torch.nonzero(torch.rand(len(idx)) < crops).flatten().tolist():
                rows, cols = sb[j].tolist()
                h, w = (max(1, round(side * float(torch.empty(1).uniform_(CROP_MIN, 1.0)))) for side in (rows, cols))
                top, left = (int(torch.randint(side - keep + 1, ())) for side, keep in ((rows, h), (cols, w)))
                xb[j], mb[j] = crop(xb[j], top, left, h, w), crop(mb[j], top, left, h, w)
                sb[j] = torch.tensor([h, w])
            if symmetries:
                for j, k in enumerate(torch.randint(8, (len(idx),)).tolist()):
                    rows, cols = sb[j].tolist()
                    xb[j], mb[j] = dihedral(xb[j], rows, cols, k), dihedral(mb[j], rows, cols, k)
                    if k & 4:
                        sb[j] = torch.tensor([cols, rows])
            y, w = pool_targets(mb, sb, patch, readout.sub)
            gb = batch_globals(y, w, severity[idx]) if crops else glob[idx]
            logits, whole = readout.logits(tower(xb).last_hidden_state)
            loss = (F.binary_cross_entropy_with_logits(logits, y, reduction="none").mean(1) * w).sum() / w.sum()
            loss = loss + F.binary_cross_entropy_with_logits(whole[:, :n], gb[:, :n])
            loss = loss + 4 * F.mse_loss(whole[:, n:].sigmoid(), gb[:, n:])
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
    parser.add_argument(
        "--data", required=True, type=Path, nargs="+", help="synthetic data folders (qground.json, images/, gt/)"
    )
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--symmetries", action="store_true", help="show each drawn image under one of the square's 8 symmetries"
    )
    parser.add_argument(
        "--crops", type=float, default=0.0, help="share of drawn images cropped at their own scale to 60–100 %% a side"
    )
    args = parser.parse_args(argv)
    model, tokenizer = load_model(args.model, device="cpu", dtype=torch.float32)
    t0 = time.perf_counter()
    processor = QGroundProcessor(tokenizer, model.config)
    losses = pretrain(model, processor, args.data, args.epochs, args.batch, args.lr, args.symmetries, crops=args.crops)
    save_checkpoint(model, tokenizer, args.out)
    print(f"vision pretraining: losses per epoch {np.round(losses, 4).tolist()} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
