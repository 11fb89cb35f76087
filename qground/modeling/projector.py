"""φv: the multi-layer vision-to-language projector."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MultiLayerProjector(nn.Module):
    """Concatenated features of several vision layers → pooled image tokens in the LLM's embedding space.

    Input ``(M, 1 + grid², L·Dv)``: the CLS position, then the patch tokens row-major over the ``grid × grid`` patch
    map, the L layers concatenated channel-wise. The patches are average-pooled to ``(grid/pool)²`` tokens; with
    ``global_token`` the CLS position follows them as one more token. Each goes through Linear–GELU–Linear →
    ``(M, (grid/pool)² [+ 1], D)``. With ``ordinals`` > 0, ``ordinal`` holds a learned embedding per place of an image
    in its sample (first, second, …) that the model adds to all of that image's tokens. With ``slots``, a learned
    embedding per output token (its place in the pooled grid, or the whole-image token) is added to the output: inputs
    that carry no position of their own (the readout's scores) need it to say *where*. ``hidden_dim``: the width between
    the two linear layers (``out_dim`` when None). Pooling runs in float32 (PixelLM pools in float32 too).
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
        hidden_dim: int | None = None,
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
        hidden_dim = hidden_dim or out_dim
        self.linear_1 = nn.Linear(in_dim, hidden_dim)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(hidden_dim, out_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        m, n, c = features.shape
        if n != 1 + self.grid * self.grid:
            raise ValueError(f"φv expects CLS + {self.grid}×{self.grid} = {1 + self.grid**2} features, got {n}")
        x = features[:, 1:].transpose(1, 2).reshape(m, c, self.grid, self.grid)
        x = F.avg_pool2d(x.float(), self.pool).to(x.dtype).flatten(2).transpose(1, 2)
        if self.global_token:
            x = torch.cat([x, features[:, :1]], dim=1)
        out = self.linear_2(self.act(self.linear_1(x)))
        return out + self.slot if self.slot is not None else out
