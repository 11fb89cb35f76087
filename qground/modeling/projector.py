"""φv: the multi-layer vision-to-language projector."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def group_margins(evidence: torch.Tensor, per_sample: list[int]) -> torch.Tensor:
    """How each image's evidence compares with the other images of its sample.

    ``evidence`` (M, K): per image, K scores where higher means more of something (images of a sample consecutive, in
    order); ``per_sample``: images per sample, summing to M. Returns (M, 2K): for image i of a sample with n ≥ 2
    images, ``v_i − max_{j≠i} v_j`` (> 0 only for the image with the most) then ``min_{j≠i} v_j − v_i`` (> 0 only for
    the one with the least); zeros for a sample's only image.
    """
    if sum(per_sample) != evidence.shape[0]:
        raise ValueError(f"per_sample counts {sum(per_sample)} images but evidence holds {evidence.shape[0]}")
    out = []
    for group in evidence.split(per_sample):
        n = group.shape[0]
        if n < 2:
            out.append(group.new_zeros(n, 2 * group.shape[1]))
            continue
        others = group[None].expand(n, -1, -1)  # (n, n, K): row i holds every image; mask out image i itself
        self_mask = torch.eye(n, dtype=torch.bool, device=group.device)[..., None]
        most = others.masked_fill(self_mask, float("-inf")).amax(1)
        least = others.masked_fill(self_mask, float("inf")).amin(1)
        out.append(torch.cat([group - most, least - group], dim=1))
    return torch.cat(out)


class MultiLayerProjector(nn.Module):
    """Concatenated features of several vision layers → pooled image tokens in the LLM's embedding space.

    Input ``(M, 1 + grid², L·Dv)``: the CLS position, then the patch tokens row-major over the ``grid × grid`` patch
    map, the L layers concatenated channel-wise. The patches are average-pooled to ``(grid/pool)²`` tokens; with
    ``global_token`` the CLS position follows them as one more token. Each goes through Linear–GELU–Linear →
    ``(M, (grid/pool)² [+ 1], D)``. With ``ordinals`` > 0, ``ordinal`` holds a learned embedding per place of an image
    in its sample (first, second, …) that the model adds to all of that image's tokens. With ``slots``, a learned
    embedding per output token (its place in the pooled grid, or the whole-image token) is added to the output: inputs
    that carry no position of their own (the readout's scores) need it to say *where*. With ``margins`` = K > 0 (and
    ``ordinals``), ``compare`` (Linear–GELU–Linear) maps an image's ``group_margins`` (2K), placed in the block of its
    place (``ordinals`` × 2K, zeros elsewhere), to an embedding that the model adds to that image's whole-image token:
    "the second image has the most noise" then has its own direction, which survives averaging over the images.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        grid: int,
        pool: int,
        global_token: bool = False,
        ordinals: int = 0,
        slots: bool = False,
        margins: int = 0,
    ) -> None:
        super().__init__()
        self.grid = grid
        self.pool = pool
        self.global_token = global_token
        n_tokens = (grid // pool) ** 2 + global_token
        self.slot = nn.Parameter(torch.randn(n_tokens, out_dim) * 0.02) if slots else None
        self.ordinal = nn.Embedding(ordinals, out_dim) if ordinals else None
        if self.ordinal is not None:
            nn.init.normal_(self.ordinal.weight, std=0.02)
        if margins and not ordinals:
            raise ValueError("φv's group margins are embedded per image place: they need ordinals > 0")
        self.compare = (
            nn.Sequential(nn.Linear(2 * margins * ordinals, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))
            if margins
            else None
        )
        self.linear_1 = nn.Linear(in_dim, out_dim)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(out_dim, out_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        m, n, c = features.shape
        if n != 1 + self.grid * self.grid:
            raise ValueError(f"φv expects CLS + {self.grid}×{self.grid} = {1 + self.grid**2} features, got {n}")
        x = features[:, 1:].transpose(1, 2).reshape(m, c, self.grid, self.grid)
        x = F.avg_pool2d(x, self.pool).flatten(2).transpose(1, 2)
        if self.global_token:
            x = torch.cat([x, features[:, :1]], dim=1)
        out = self.linear_2(self.act(self.linear_1(x)))
        return out + self.slot if self.slot is not None else out
