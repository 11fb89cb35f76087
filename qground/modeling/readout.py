"""The distortion readout: linear heads on the frozen vision tower's last hidden state (nano's φv input).

Trained with the tower (``training.pretrain_vision``) and frozen with it. Per patch it predicts the covered fraction of
each of ``sub × sub`` sub-cells for each distortion class; at the CLS position, per class: presence, the covered
fraction of the image content, and severity (1/3–1) × fraction. A projector fed these scores instead of the hidden
states sees distortion evidence only, not which photo it is looking at, so what the LLM learns from a few training
photos carries over to new ones.
"""

from __future__ import annotations

import torch
from torch import nn


class DistortionReadout(nn.Module):
    """``hidden`` ``(M, 1 + g², Dv)`` (CLS, then patches row-major) → scores in [0, 1].

    ``logits(hidden)`` is the training view: dense ``(M, classes·sub², g, g)``, where channel
    ``class·sub² + i·sub + j`` covers sub-cell row ``i``, column ``j`` of each patch; whole-image ``(M, 3·classes)``:
    presence per class, then fraction per class, then severity × fraction per class. ``forward`` returns their sigmoids
    as one ``(M, 1 + g², classes·sub²)`` map: row 0 holds the whole-image scores zero-padded to the width, rows 1… the
    patches' coverage. ``threshold`` (one logit, one per class ``(classes,)``, or one per image and class
    ``(M, classes)``; None: as trained) is the detection strictness: image m's every score of class k is set to 0
    unless its presence logit is ≥ ``threshold[m, k]``, so φv sees no evidence of a class the readout is not sure
    enough of.
    """

    def __init__(self, vision_dim: int, num_classes: int, sub: int) -> None:
        super().__init__()
        if num_classes * sub * sub < 3 * num_classes:
            raise ValueError(f"readout sub-cells per side must be ≥ 2 to hold the whole-image scores, got {sub}")
        self.num_classes = num_classes
        self.sub = sub
        self.dense = nn.Linear(vision_dim, num_classes * sub * sub)
        self.whole = nn.Linear(vision_dim, 3 * num_classes)

    @property
    def width(self) -> int:
        return self.dense.out_features

    def logits(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m, n, _ = hidden.shape
        g = int((n - 1) ** 0.5)
        if g * g != n - 1:
            raise ValueError(f"the readout expects CLS + a square patch map, got {n} positions")
        dense = self.dense(hidden[:, 1:]).transpose(1, 2).reshape(m, -1, g, g)
        return dense, self.whole(hidden[:, 0])

    def coverage(self, dense: torch.Tensor) -> torch.Tensor:
        """``dense`` logits ``(M, classes·sub², g, g)`` (``logits``) → ``(M, classes, g·sub, g·sub)``: each class's
        covered fraction of every sub-cell, row y / column x of the padded input frame at ``sub`` cells per patch side
        (as trained, no gate)."""
        return self.layout(dense.sigmoid())

    def layout(self, cells: torch.Tensor) -> torch.Tensor:
        """Per-sub-cell values in the dense heads' layout ``(M, classes·sub², g, g)`` (e.g. the pretraining's coverage
        targets) → ``(M, classes, g·sub, g·sub)`` in the padded input frame, as ``coverage`` lays out its own."""
        m, _, g, _ = cells.shape
        k, sub = self.num_classes, self.sub
        cells = cells.reshape(m, k, sub, sub, g, g)  # (M, K, i, j, patch row, patch column)
        return cells.permute(0, 1, 4, 2, 5, 3).reshape(m, k, g * sub, g * sub)

    def forward(self, hidden: torch.Tensor, threshold: float | torch.Tensor | None = None) -> torch.Tensor:
        return self.scores(*self.logits(hidden), threshold)

    def scores(
        self, dense: torch.Tensor, whole: torch.Tensor, threshold: float | torch.Tensor | None = None
    ) -> torch.Tensor:
        """``forward`` on precomputed ``logits``: callers that also need ``coverage`` or the whole-image scores run
        the heads once."""
        patches = dense.sigmoid().flatten(2).transpose(1, 2)  # (M, g², K·sub²)
        pad = patches.new_zeros(dense.shape[0], 1, self.width)
        pad[:, 0, : whole.shape[1]] = whole.sigmoid()
        if threshold is not None:
            k = self.num_classes
            gate = torch.as_tensor(threshold, dtype=whole.dtype, device=whole.device).expand(whole.shape[0], k)
            keep = (whole[:, :k] >= gate).to(patches.dtype)  # (M, K)
            pad = pad * nn.functional.pad(keep.repeat(1, 3), (0, self.width - 3 * k), value=1.0)[:, None]
            patches = patches * keep.repeat_interleave(self.sub * self.sub, dim=1)[:, None]
        return torch.cat([pad, patches], dim=1)
