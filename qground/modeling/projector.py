"""φv: the multi-layer vision-to-language projector."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MultiLayerProjector(nn.Module):
    """Concatenated patch features of several vision layers → pooled image tokens in the LLM's embedding space.

    Input ``(M, grid², L·Dv)`` (patch tokens without CLS, row-major over the ``grid × grid`` patch map, the L layers
    concatenated channel-wise) → ``(grid/pool)²`` average-pooled tokens → Linear–GELU–Linear → ``(M, (grid/pool)², D)``.
    """

    def __init__(self, in_dim: int, out_dim: int, grid: int, pool: int) -> None:
        super().__init__()
        self.grid = grid
        self.pool = pool
        self.linear_1 = nn.Linear(in_dim, out_dim)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(out_dim, out_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        m, n, c = features.shape
        if n != self.grid * self.grid:
            raise ValueError(f"φv expects {self.grid}×{self.grid} = {self.grid**2} patch features, got {n}")
        x = features.transpose(1, 2).reshape(m, c, self.grid, self.grid)
        x = F.avg_pool2d(x, self.pool).flatten(2).transpose(1, 2)
        return self.linear_2(self.act(self.linear_1(x)))
