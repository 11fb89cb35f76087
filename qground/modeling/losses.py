"""Mask losses of the seed (eq. 2): per-mask BCE and DICE, each averaged over masks."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sigmoid_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-pixel mean BCE of one mask. ``logits``, ``target``: same shape, target in {0, 1}."""
    return F.binary_cross_entropy_with_logits(logits, target, reduction="mean")


def dice_loss(logits: torch.Tensor, target: torch.Tensor, scale: float = 1000.0, eps: float = 1e-6) -> torch.Tensor:
    """DICE loss of one mask on sigmoid probabilities, with LISA/PixelLM's scaling."""
    prob = logits.sigmoid().flatten()
    target = target.flatten()
    inter = 2 * (prob / scale * target).sum()
    union = (prob / scale).sum() + (target / scale).sum()
    return 1 - (inter + eps) / (union + eps)
